"""Repository-level pytest set-up.

The equivtest plugin itself loads through its ``pytest11`` entry point
(``pip install -e .``); this file only adds what the project's own tests use:
pytester, hypothesis profiles, the ``--bench`` switch for tests/benchmarks, and
a test module's ``start_early`` hook (work started when collection ends).
"""

import pytest
from hypothesis import HealthCheck, settings

# the suite's plugin (short options --backend/--device/--features, its fixtures) for this repository's runs
pytest_plugins = ["pytester", "equivtest.suite.plugin"]

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption("--bench", action="store_true", default=False,
                     help="run the benchmarks in tests/benchmarks (skipped otherwise)")


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: a benchmark at the seed's scale (run with --bench)")


def pytest_collection_finish(session):
    """A test module may start work its tests will wait for (a subprocess) as soon as collection ends, through
    a module-level ``start_early(session, items)`` given its selected items, so that work runs beside the tests
    before it (tests/test_cli.py's one ``equivtest run``)."""
    if session.config.option.collectonly:
        return
    by_module = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "start_early"):
            by_module.setdefault(module, []).append(item)
    for module, items in by_module.items():
        module.start_early(session, items)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bench"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with --bench (see README, Performance)")
    for item in items:
        if item.get_closest_marker("bench"):
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hook: its JSON names the machine and software in full
def pytest_benchmark_update_machine_info(config, machine_info):
    """Beside pytest-benchmark's own fields: the installed frameworks' versions, the CPU's model and cores,
    NumPy's BLAS, and the GPU when torch has one (docs/performance.md's tables are written from these files)."""
    import sys

    from equivtest.backends import REGISTRY
    from equivtest.machine import machine_info as ours

    machine_info["equivtest"] = info = ours(list(REGISTRY))
    torch = sys.modules.get("torch")  # loaded where a benchmark ran on it; never imported for this
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
