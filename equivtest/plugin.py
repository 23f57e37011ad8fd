"""The ``pytest11`` plugin: loaded into every pytest run on the machine, so it changes none.

What it adds to a run that is not equivtest's own suite:

- three options with unmistakable names, ``--equivtest-backend``,
  ``--equivtest-device`` and ``--equivtest-features`` (like pytest-benchmark's
  ``--benchmark-*``), each standing in for an ``EQUIVTEST_*`` variable;
- one fixture, ``equivtest_selection``: the session's backends, devices and
  features (``equivtest.session.Selection``), built on first use.

Nothing is parametrised, no header line is printed, no marker or skip is added,
and no framework is imported.  The suite's short options (``--backend``,
``--device``, ``--features``), its fixtures (``backend``, ``device``,
``dataset``, ``plan``, ``reference``) and its parametrisation live in
:mod:`equivtest.suite.plugin`, which loads only where the suite runs: with
``pytest --pyargs equivtest.suite`` (detected here, before the command line is
parsed), under a path inside the installed suite, from this repository's root
``conftest.py``, or when a project asks for it with ``-p equivtest.suite.plugin``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE_PLUGIN = "equivtest.suite.plugin"
#: where a run keeps its one session object (the Selection), as pytest-benchmark keeps its own
SELECTION_KEY = pytest.StashKey()
_SUITE_DIR = Path(__file__).resolve().parent / "suite"


def pytest_addoption(parser):
    group = parser.getgroup("equivtest", "softmax/sigmoid equivalence (equivtest)")
    group.addoption("--equivtest-backend", dest="equivtest_backend", default=None, metavar="NAMES",
                    help="equivtest's backends: numpy, torch, keras, keras-torch, keras-jax or all "
                         "(env EQUIVTEST_BACKEND; default: every installed one of numpy, torch, keras)")
    group.addoption("--equivtest-device", dest="equivtest_device", default=None, metavar="NAMES",
                    help="equivtest's devices: cpu, cuda[:N], mps, auto (env EQUIVTEST_DEVICE; default: cpu)")
    group.addoption("--equivtest-features", dest="equivtest_features", default=None, metavar="SOURCE",
                    help="equivtest's features: h5 path(s), synthetic[:NxD], breast-cancer, digits "
                         "(env EQUIVTEST_FEATURES; default: synthetic:2000x128)")


def runs_the_suite(args) -> bool:
    """True when the command line names equivtest's suite (``--pyargs equivtest.suite...`` or a path in it)."""
    args = [str(a) for a in args]
    pyargs = "--pyargs" in args
    for a in args:
        target = a.split("::", 1)[0]
        if pyargs and (target == "equivtest.suite" or target.startswith("equivtest.suite.")):
            return True
        if not target.startswith("-"):
            try:
                p = Path(target).resolve()
            except (OSError, ValueError):
                continue
            if p == _SUITE_DIR or _SUITE_DIR in p.parents:
                return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Load the suite's plugin (its short options) before the command line is parsed, if the suite runs."""
    if runs_the_suite(args):
        early_config.pluginmanager.import_plugin(SUITE_PLUGIN)


def selection(config):
    """The session's :class:`~equivtest.session.Selection`, made once per run and kept in ``config.stash``."""
    from .session import Selection

    sel = config.stash.get(SELECTION_KEY, None)
    if sel is None:
        sel = Selection.from_options(config.getoption("equivtest_backend"), config.getoption("equivtest_device"),
                                     config.getoption("equivtest_features"))
        config.stash[SELECTION_KEY] = sel
    return sel


@pytest.fixture(scope="session")
def equivtest_selection(request):
    """equivtest's backends, devices and features for this session (``equivtest.session.Selection``)."""
    from .errors import InputError

    try:
        return selection(request.config)
    except InputError as exc:
        raise pytest.UsageError(str(exc)) from None
