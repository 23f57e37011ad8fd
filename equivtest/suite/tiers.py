"""The suite's two tiers: a fast default run and the slow, exhaustive one.

pytest's documented ``--runslow`` recipe, with one addition: a test can keep
*some* of its cells in the fast tier.  Two markers decide, and nothing else:

``@pytest.mark.slow``
    the whole test is in the slow tier;
``@pytest.mark.fast_cells(dict(backend=FIRST), dict(optimizer="sgd"), ...)``
    the fast tier keeps the cells whose parameters match any one of the
    dictionaries (every key equal, a tuple value meaning "one of"; a key the
    test does not have is ignored, so a module-wide marker leaves its
    framework-free tests alone);
    the rest of the matrix is slow.  ``FIRST`` stands for the first selected,
    installed backend in :data:`FAST_BACKENDS`' order, so each test
    still runs once whatever ``--backend`` names; likewise where the run
    chooses a parameter's value (``--data-parallel N`` chooses ``world_size``),
    a cell matches at the chosen value instead of its own (where the test has
    that value), so the fast tier keeps its data-parallel cells, at N.

In the fast tier (the default) the slow cells are deselected, and a summary
line says how many and how to run them.  ``--run-slow`` (or
``EQUIVTEST_FULL=1``) runs both tiers; every slow cell carries the ``slow``
marker, so ``--run-slow -m slow`` runs the slow tier alone (as ``.ci/run``
does after the fast one).
"""

from __future__ import annotations

import os

import pytest

ENV_FULL = "EQUIVTEST_FULL"
#: the backend a fast cell with ``backend=FIRST`` runs on: torch first (a real framework, float64, fast to
#: start), then the oracle, then Keras (TensorFlow's start-up and ``fit`` cost seconds a cell)
FAST_BACKENDS = ("torch", "numpy", "keras", "keras-torch", "keras-jax")
FIRST = "<first backend>"

_DESELECTED = pytest.StashKey[int]()


def register_markers(config) -> None:
    config.addinivalue_line("markers", "slow: in the slow tier (run with --run-slow or EQUIVTEST_FULL=1)")
    config.addinivalue_line("markers", "fast_cells(*params): the fast tier keeps the cells matching one of these "
                                       "parameter dicts (backend=FIRST: the first selected backend); the rest is slow")


def run_slow(config) -> bool:
    return bool(config.getoption("equivtest_run_slow", False)) or os.environ.get(ENV_FULL, "") not in ("", "0")


def first_backend(installed) -> str | None:
    return next((b for b in FAST_BACKENDS if b in installed), None)


def _matches(params: dict, cell: dict, first: str | None, chosen: dict | None = None) -> bool:
    for key, want in cell.items():
        if key not in params:
            continue  # a test without that parameter (a module-wide marker on a framework-free test)
        if chosen and key in chosen:
            want = chosen[key]  # the run's value, not the cell's
        want = first if want == FIRST else want
        options = want if isinstance(want, tuple) else (want,)
        if params[key] not in options:
            return False
    return True


def is_slow(item, first: str | None, chosen: dict | None = None) -> bool:
    if item.get_closest_marker("slow"):
        return True
    marker = item.get_closest_marker("fast_cells")
    if marker is None:
        return False
    params = getattr(getattr(item, "callspec", None), "params", {})
    return not any(_matches(params, cell, first, chosen) for cell in marker.args)


def select_tier(config, items, installed, chosen: dict | None = None) -> None:
    """Mark every slow cell ``slow``; in the fast tier deselect them (before ``-m`` is applied).  ``chosen``: the
    values the run chose for a parameter (``{"world_size": N}`` under ``--data-parallel N``)."""
    first, chosen = first_backend(installed), chosen or {}
    # a test whose own values do not include the run's (the composition test's world sizes are its own 2 and 3)
    # keeps its cells' values
    offers = {(getattr(i, "function", None), k) for i in items for k, v in chosen.items()
              if getattr(getattr(i, "callspec", None), "params", {}).get(k) == v}
    slow = []
    for item in items:
        fn = getattr(item, "function", None)
        if is_slow(item, first, {k: v for k, v in chosen.items() if (fn, k) in offers}):
            if not item.get_closest_marker("slow"):
                item.add_marker(pytest.mark.slow)
            slow.append(item)
    if run_slow(config) or not slow:
        config.stash[_DESELECTED] = 0
        return
    ids = {id(i) for i in slow}
    items[:] = [i for i in items if id(i) not in ids]
    config.hook.pytest_deselected(items=slow)
    config.stash[_DESELECTED] = len(slow)


def header_line(config) -> str:
    if run_slow(config):
        return "equivtest tier: fast and slow (--run-slow or EQUIVTEST_FULL=1)"
    return "equivtest tier: fast (the slow tier runs with --run-slow or EQUIVTEST_FULL=1)"


def summary_line(config) -> str | None:
    n = config.stash.get(_DESELECTED, 0)
    if not n:
        return None
    return f"equivtest: fast tier; {n} slow cells deselected (run them with --run-slow or EQUIVTEST_FULL=1)"
