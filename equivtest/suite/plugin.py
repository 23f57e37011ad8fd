"""The suite's plugin: short options, the report header, parametrisation and the suite's fixtures.

Loaded only where equivtest's suite runs (see :mod:`equivtest.plugin`, the
``pytest11`` plugin that detects it); a project that wants these fixtures in its
own tests asks for them with ``-p equivtest.suite.plugin``.  Loading it imports
no framework; fixtures import their machinery inside the function body.

Options (each with an environment variable that stands in for it):

- ``--backend NAMES`` (``EQUIVTEST_BACKEND``): comma list of numpy, torch, keras,
  keras-torch, keras-jax (the last two, Keras 3 on other frameworks in worker
  processes, run only when named or with ``all``).
- ``--device NAMES`` (``EQUIVTEST_DEVICE``): cpu, cuda[:N], mps, auto.
- ``--features SOURCE`` (``EQUIVTEST_FEATURES``): h5 path(s), synthetic[:NxD], breast-cancer, digits.
- ``--run-slow`` (``EQUIVTEST_FULL=1``): the slow tier too (see :mod:`equivtest.suite.tiers`).
"""

from __future__ import annotations

import os

import pytest

#: the batch the data-parallel tests split; every world size they take divides it (JAX shards every batch)
PARALLEL_BATCH = 120
ENV_DATA_PARALLEL = "EQUIVTEST_DATA_PARALLEL"


def pytest_addoption(parser):
    # the same destinations as the pytest11 plugin's --equivtest-* options: either spelling works
    group = parser.getgroup("equivtest", "softmax/sigmoid equivalence (equivtest)")
    group.addoption(
        "--backend", dest="equivtest_backend", default=None, metavar="NAMES",
        help="comma list of backends to test: numpy, torch, keras, keras-torch, keras-jax, or all "
             "(env EQUIVTEST_BACKEND; default: every installed one of numpy, torch, keras)",
    )
    group.addoption(
        "--device", dest="equivtest_device", default=None, metavar="NAMES",
        help="comma list of devices: cpu, cuda[:N], mps, auto; one asked for but absent is a usage error "
             "(env EQUIVTEST_DEVICE; default: cpu)",
    )
    group.addoption(
        "--features", dest="equivtest_features", default=None, metavar="SOURCE",
        help="features: an h5 file in the seed's schema, several joined with commas, synthetic[:NxD], "
             "breast-cancer or digits (env EQUIVTEST_FEATURES; default: synthetic:2000x128)",
    )
    _add_data_parallel(group)
    group.addoption("--run-slow", dest="equivtest_run_slow", action="store_true", default=False,
                    help="run the slow tier too: the exhaustive matrices (every backend x optimizer x dtype x "
                         "world size), every CLI subprocess and interrupt point; `-m slow` then runs it alone "
                         "(env EQUIVTEST_FULL=1; default: the fast tier only)")


def _add_data_parallel(group):
    group.addoption("--data-parallel", dest="equivtest_data_parallel", default=None, metavar="N",
                    help="world sizes of the data-parallel tests: N workers only, N dividing 120 "
                         "(env EQUIVTEST_DATA_PARALLEL; default: 2, 3 and 4)")


#: pytest's command-line entry points, which the ``pytest`` script and ``python -m pytest`` call, in the module
#: that defines ``pytest.main``: ``console_main`` (pytest 7 to 9.0), ``_console_main`` (9.1 on; ``console_main``
#: is deprecated there)
_ENTRY_POINTS = ("console_main", "_console_main")


def _ends_its_process(config) -> bool:
    """Whether this session's process ends with it: pytest was started from the command line (the outermost
    call into the module that defines ``pytest.main`` is one of its entry points) and this session's arguments
    are that command line's.  ``pytest.main`` in a program that goes on, or pytester inside another run, is
    not: its collector must keep collecting."""
    import sys

    frame, outermost = sys._getframe(), None
    while frame is not None:
        if frame.f_globals.get("__name__") == pytest.main.__module__:
            outermost = frame.f_code.co_name
        frame = frame.f_back
    from_the_command_line = outermost in _ENTRY_POINTS
    return from_the_command_line and tuple(config.invocation_params.args) == tuple(sys.argv[1:])


def _freeze_the_heap(config) -> None:
    """At the end of a session that ends its process, after one full collection (still under pytest's
    unraisable-exception hook, so the tests' garbage is collected and reported), move every object to the
    permanent generation: neither pytest's further collections nor the interpreter's shutdown then walks
    the frameworks' object graphs (seconds once TensorFlow and PyTorch are loaded; ``docs/performance.md``)."""
    import gc

    if _ends_its_process(config):
        gc.collect()
        gc.freeze()


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    # before every other plugin's pytest_unconfigure and the clean-up stack after them, where pytest collects:
    # in its clean-up stack (pytest 9.0 and 9.1) and in its unraisable-exception plugin's pytest_unconfigure (9.2)
    _freeze_the_heap(config)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a GPU named with --device (skipped otherwise)")
    config.addinivalue_line("markers", "needs_backends(*names): runs only when every named backend is selected")
    config.addinivalue_line("markers", "workers: trains on data-parallel worker processes; such tests run last, "
                                       "their workers started in the background when collection ends")
    from .tiers import register_markers

    register_markers(config)
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's group (inert without it)")
    from ..errors import InputError
    from ..plugin import selection

    try:
        world_sizes(config)
        sel = selection(config)
        if sel.explicit_features:
            sel.dataset()
        sel.check_devices()
    except InputError as exc:
        raise pytest.UsageError(str(exc)) from None


def _data_parallel_option(config) -> str | None:
    """``--data-parallel``'s value, else EQUIVTEST_DATA_PARALLEL's, else None."""
    return config.getoption("equivtest_data_parallel", None) or os.environ.get(ENV_DATA_PARALLEL) or None


def world_sizes(config) -> list[int]:
    """The data-parallel tests' world sizes: ``--data-parallel N`` (or EQUIVTEST_DATA_PARALLEL), else 2, 3, 4.

    Checked in ``pytest_configure``, so a bad value is a usage error in one line, not a collection error."""
    from ..errors import InputError

    raw = _data_parallel_option(config)
    if not raw:
        return [2, 3, 4]
    flag = "--data-parallel" if config.getoption("equivtest_data_parallel", None) else ENV_DATA_PARALLEL
    try:
        n = int(str(raw).strip())
    except ValueError:
        n = 0
    if n < 1 or PARALLEL_BATCH % n:
        divisors = ", ".join(str(k) for k in range(1, PARALLEL_BATCH + 1) if PARALLEL_BATCH % k == 0)
        raise InputError(f"{flag} {raw}: the data-parallel tests split batches of {PARALLEL_BATCH} rows, so N must "
                         f"be one of {divisors}")
    return [n]


def _selection(config):
    from ..plugin import selection

    return selection(config)


def pytest_report_header(config):
    from .tiers import header_line

    return [*_selection(config).header_lines(), header_line(config)]


#: the suite's own tests: those in the shipped suite's folder, or using its fixtures; skip accounting covers
#: these only, so a project that loads this plugin for its fixtures keeps its own skips as they are
SUITE_ITEMS = pytest.StashKey[set]()
SUITE_FIXTURES = frozenset({"backend", "device", "dataset", "plan", "reference", "dp_backend"})


def _uses_the_suite(item) -> bool:
    from pathlib import Path

    here = Path(__file__).resolve().parent
    path = Path(str(getattr(item, "path", getattr(item, "fspath", "")))).resolve()
    return here in path.parents or bool(SUITE_FIXTURES & set(getattr(item, "fixturenames", ())))


def _suite_skips(config, reporter) -> list:
    ours = config.stash.get(SUITE_ITEMS, set())
    return [r for r in reporter.stats.get("skipped", []) if r.nodeid in ours]


def pytest_terminal_summary(terminalreporter, config):
    from .skips import by_reason, undeclared
    from .tiers import summary_line

    line = summary_line(config)
    if line:
        terminalreporter.write_line(line)
    counts = by_reason(_suite_skips(config, terminalreporter))
    if counts:
        terminalreporter.write_line("equivtest skips by reason:")
        for reason, n in counts.most_common():
            terminalreporter.write_line(f"  {n:4d}  {reason}")
    bad = undeclared(counts)
    if bad:
        terminalreporter.write_line("equivtest: skips whose reason is not a declared capability, a missing extra, "
                                    "a missing device or --bench (a test that should have run):", red=True)
        for reason in bad:
            terminalreporter.write_line(f"  {reason}", red=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """A skip for a reason that is not declared fails the run (a dropped capability must not look green)."""
    import sys

    if "equivtest.parallel" in sys.modules:  # never import it (nor a framework) only to close nothing
        sys.modules["equivtest.parallel"].close_workers()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus not in (0,):
        return
    from .skips import by_reason, undeclared

    if undeclared(by_reason(_suite_skips(session.config, reporter))):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_generate_tests(metafunc):
    sel = _selection(metafunc.config)
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", sel.backends, indirect=True, scope="session")
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", sel.devices, indirect=True, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Markers become skips here, each naming the flag or extra responsible.

    Each backend's tests in one test module also form one ``xdist_group``, so
    ``pytest -n N --dist loadgroup`` keeps a framework's tests on as few workers
    as there are modules using it (never TensorFlow in a worker that runs no
    keras test), while the slow keras tests still spread over more than one.
    """
    sel = _selection(config)
    from ..devices import Device
    from .tiers import select_tier

    chosen = {"world_size": world_sizes(config)[0]} if _data_parallel_option(config) else None
    select_tier(config, items, sel.installed, chosen)
    # the tests on worker processes run last (a stable sort keeps each group's order), so the workers that
    # pytest_collection_finish starts load their framework while every other test runs in this process
    items.sort(key=lambda item: item.get_closest_marker("workers") is not None)
    config.stash[SUITE_ITEMS] = {i.nodeid for i in items if _uses_the_suite(i)}

    gpu_asked = any(Device.parse(d).is_accelerator for d in sel.devices) and sel.explicit_devices
    for item in items:
        if item.get_closest_marker("gpu") and not gpu_asked:
            item.add_marker(pytest.mark.skip(reason="needs a GPU: run with --device=cuda (or EQUIVTEST_DEVICE=cuda)"))
        m = item.get_closest_marker("needs_backends")
        callspec = getattr(item, "callspec", None)
        module = item.nodeid.split("::")[0]
        if callspec is not None and "backend" in callspec.params:
            item.add_marker(pytest.mark.xdist_group(f"{callspec.params['backend']}:{module}"))
        elif m:
            item.add_marker(pytest.mark.xdist_group(f"{'keras' if 'keras' in m.args else m.args[-1]}:{module}"))
        if m:
            absent = [n for n in m.args if n not in sel.backends]
            missing = [sel.missing[n] for n in m.args if n in sel.missing]
            if absent:
                item.add_marker(pytest.mark.skip(reason=f"needs backends {', '.join(absent)}: add them to --backend"))
            elif missing:
                item.add_marker(pytest.mark.skip(reason=missing[0]))


def pytest_collection_finish(session):
    """Start the data-parallel workers the selected tests will use (torch's fork server; one Keras worker per
    backend and world size, kept for the session), so their frameworks load while the other tests run here."""
    wanted = set()
    for item in session.items:
        if item.get_closest_marker("workers") is None or item.get_closest_marker("skip") is not None:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = params.get("backend") if "dp_backend" in getattr(item, "fixturenames", ()) else "torch"
        if backend == "torch" or (backend in ("keras", "keras-jax") and "world_size" in params):
            wanted.add((backend, params.get("world_size", 0)))
    if wanted and not session.config.option.collectonly:
        from ..parallel import prestart

        for backend, n in sorted(wanted):
            prestart(backend, n)


@pytest.fixture(scope="session")
def backend(request, equivtest_selection):
    """A backend instance; a backend that is not installed is skipped with the extra to install."""
    from .. import backends

    name = request.param
    if name in equivtest_selection.missing:
        pytest.skip(equivtest_selection.missing[name])
    return backends.get(name)


@pytest.fixture(scope="session")
def device(request, equivtest_selection, backend):
    """The device for ``backend`` (``cpu``, ``cuda:0``, ...); skipped where the backend cannot use it."""
    reason = equivtest_selection.device_skip_reason(backend.name, request.param)
    if reason:
        pytest.skip(reason)
    return backend.resolve_device(request.param)


@pytest.fixture(scope="session")
def dataset(equivtest_selection):
    """The features under test (``--features``), split 80/20."""
    return equivtest_selection.dataset()


@pytest.fixture
def plan():
    """A small, fast default plan for the suite: SGD, batch 64, 3 epochs, dropout 0.5, float32."""
    from ..plan import Plan

    return Plan(epochs=3, batch_size=64, lr=1e-2, optimizer="sgd", dropout=0.5, seed=20180520, dtype="float32")


@pytest.fixture(scope="session")
def reference():
    """A factory: the NumPy float64 oracle matching a backend's conventions."""
    from ..backends.numpy import reference_for

    return reference_for
