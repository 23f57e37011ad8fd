"""The plugins in a subprocess: the pytest11 plugin changes no other project's run; the suite's plugin
(``-p equivtest.suite.plugin``, or loaded by the suite itself) gives options, usage errors, the report
header and the parametrisation."""

import importlib.util

import pytest

from equivtest.errors import InputError
from equivtest.session import Selection

SUITE = ("-p", "equivtest.suite.plugin")  # what a project asks for to use the suite's fixtures and options
PROBE = """
def test_probe(backend, device):
    assert backend.name in ("numpy", "torch", "keras")
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """The inner pytest runs see only the options each test gives (tox sets EQUIVTEST_BACKEND)."""
    import os

    for k in [k for k in os.environ if k.startswith("EQUIVTEST_")]:
        monkeypatch.delenv(k)


def _cuda_present():
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow  # the header: test_the_suite_header_names_the_tier and the slow tier
def test_ids_and_header_for_a_named_backend(pytester):
    pytester.makepyfile(PROBE)
    # a fresh process: the header says what a backend that nothing has loaded yet can use
    res = pytester.runpytest_subprocess(*SUITE, "--backend=numpy", "-v", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([
        "equivtest backends: numpy (numpy *; devices: cpu only)",
        "equivtest devices: cpu; dtypes float32, float64; TF32 off*",
        "equivtest features: synthetic:2000x128",
        "*test_probe?numpy-cpu? PASSED*",
    ])


@pytest.mark.slow
def test_environment_variable_stands_in_for_the_flag(pytester, monkeypatch):
    monkeypatch.setenv("EQUIVTEST_BACKEND", "numpy")
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_inprocess(*SUITE, "--collect-only", "-q", "-p", "no:cacheprovider")
    res.stdout.fnmatch_lines(["*test_probe?numpy-cpu?"])
    res.stdout.no_fnmatch_line("*torch-cpu*")


def test_unknown_backend_is_a_usage_error_listing_valid_names(pytester):
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_inprocess(*SUITE, "--backend=tensorflow2")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*unknown backend 'tensorflow2'; valid names: numpy, torch, keras*"])


def test_unknown_device_is_a_usage_error(pytester):
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_inprocess(*SUITE, "--device=tpu")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*unknown device 'tpu'*"])


@pytest.mark.slow
@pytest.mark.skipif(_cuda_present(), reason="a CUDA device is present here")
def test_absent_gpu_asked_for_is_a_usage_error_not_a_skip(pytester):
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_inprocess(*SUITE, "--device=cuda")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*device 'cuda'*"])


def test_bad_features_file_is_a_usage_error_with_the_one_line_message(pytester):
    pytester.makepyfile(PROBE)
    bad = pytester.path / "gap_bad.h5"
    bad.write_text("not hdf5")
    res = pytester.runpytest_inprocess(*SUITE, f"--features={bad}", "--backend=numpy")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*features file '{bad}': is not an HDF5 file*"])
    assert "Traceback" not in res.stderr.str()


@pytest.mark.slow
def test_features_option_loads_a_named_source(pytester):
    pytester.makepyfile("""
def test_shape(dataset):
    assert dataset.shape == (569, 30)
""")
    res = pytester.runpytest_inprocess(*SUITE, "--features=breast-cancer", "--backend=numpy")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["equivtest features: breast-cancer (569 x 30; 456 train / 113 val)"])


def test_named_missing_backend_is_a_usage_error_unnamed_is_a_skip(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install 'equivtest\[torch\]'"):
        Selection.from_options("torch", None, None)
    sel = Selection.from_options(None, None, None)
    assert "torch" in sel.missing and "equivtest[torch]" in sel.missing["torch"]
    assert "torch" not in sel.installed


@pytest.mark.slow
def test_missing_backend_is_skipped_with_the_extra_named(pytester):
    # a plugin loaded with -p before equivtest's configure hides keras, as if not installed
    pytester.makepyfile(hide_keras="""
import importlib.util
_real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name == "keras" else _real(name, *a, **k)
""")
    pytester.makepyfile(test_probe=PROBE)
    res = pytester.runpytest_subprocess(*SUITE, "-p", "hide_keras", "-rs", "-p", "no:cacheprovider", "test_probe.py",
                                        "-k", "keras")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*backend 'keras' needs *keras, which is not installed: pip install 'equivtest?tensorflow?'*"])


NEIGHBOUR_CONFTEST = """
import pytest

def pytest_addoption(parser):
    parser.addoption("--backend", default="sqlite")
    parser.addoption("--features", default="none")

@pytest.fixture
def backend():
    return "sqlite"

@pytest.fixture
def device():
    return "printer"
"""
NEIGHBOUR_TEST = """
def test_mine(backend, device, request):
    assert backend == "sqlite" and device == "printer"
    assert request.config.getoption("--backend") == "postgres"
    assert request.config.getoption("--features") == "mine"
"""


def test_a_neighbouring_project_with_its_own_fixtures_and_options_runs_unchanged(pytester, monkeypatch):
    """Installed equivtest (its pytest11 plugin) adds no clashing option, parametrisation or header."""
    monkeypatch.setenv("EQUIVTEST_BACKEND", "numpy")  # not this project's business either
    pytester.makeconftest(NEIGHBOUR_CONFTEST)
    pytester.makepyfile(test_mine=NEIGHBOUR_TEST)
    res = pytester.runpytest_inprocess("--backend=postgres", "--features=mine", "-v", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)  # once, not once per equivtest backend
    res.stdout.fnmatch_lines(["*test_mine.py::test_mine PASSED*"])
    res.stdout.no_fnmatch_line("equivtest*")  # no header lines
    assert "equivtest" in res.stdout.str()  # ... though the plugin is loaded (listed under plugins:)


def test_the_pytest11_plugin_offers_only_prefixed_options_and_one_fixture(pytester):
    pytester.makepyfile("""
def test_sel(equivtest_selection):
    assert equivtest_selection.backends == ["numpy"]
""")
    res = pytester.runpytest_inprocess("--equivtest-backend=numpy", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    res = pytester.runpytest_inprocess("--backend=numpy", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR  # the short option exists only where the suite runs


def test_the_suite_is_detected_on_the_command_line():
    from pathlib import Path

    import equivtest.suite
    from equivtest.plugin import runs_the_suite

    suite = Path(equivtest.suite.__file__).parent
    assert runs_the_suite(["--pyargs", "equivtest.suite", "--backend=torch"])
    assert runs_the_suite(["--pyargs", "equivtest.suite.test_params::test_seed_counts"])
    assert runs_the_suite([str(suite / "test_params.py")])
    assert not runs_the_suite(["equivtest.suite"])  # a path that does not exist, without --pyargs
    assert not runs_the_suite(["--pyargs", "mypackage.tests", "tests/"])


@pytest.mark.fast_cells(dict(value="7"))
@pytest.mark.parametrize("value", ["7", "0", "two"])
def test_a_data_parallel_world_size_the_tests_cannot_split_is_a_usage_error_in_one_line(pytester, value):
    """Checked when pytest configures, not when the data-parallel module is collected (a traceback there)."""
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_inprocess(*SUITE, "--backend=numpy", f"--data-parallel={value}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in res.stderr.lines if line.strip()]
    assert errors == [f"ERROR: --data-parallel {value}: the data-parallel tests split batches of 120 rows, so N "
                      f"must be one of 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 24, 30, 40, 60, 120"], res.stderr.str()


WORLD_SIZES = """
import pytest
from equivtest.suite.plugin import world_sizes

def pytest_generate_tests(metafunc):  # as test_parallel.py: the run's world sizes
    if "world_size" in metafunc.fixturenames and "own" not in metafunc.function.__name__:
        metafunc.parametrize("world_size", world_sizes(metafunc.config))

@pytest.mark.fast_cells(dict(world_size=3))
def test_runs(world_size):
    pass

@pytest.mark.fast_cells(dict(world_size=3))
@pytest.mark.parametrize("world_size", [2, 3])
def test_own(world_size):
    pass
"""


@pytest.mark.parametrize("option, kept", [((), ["test_runs[3]", "test_own[3]"]),
                                          (("--data-parallel=4",), ["test_runs[4]", "test_own[3]"]),
                                          (("--data-parallel=2",), ["test_runs[2]", "test_own[2]"])])
def test_the_fast_tier_keeps_a_data_parallel_cell_at_the_world_size_the_run_names(pytester, option, kept):
    """A fast cell's world size gives way to the one ``--data-parallel N`` names, where the test has it (else its
    own stays): asking for N never leaves the fast tier without its data-parallel cells."""
    pytester.makepyfile(WORLD_SIZES)
    res = pytester.runpytest_inprocess(*SUITE, "-p", "no:randomly", "--collect-only", "-q", *option)
    assert [line.split("::")[-1] for line in res.outlines if "::" in line] == kept, res.stdout.str()


def test_a_skip_for_an_undeclared_reason_fails_the_suite_and_is_listed(pytester):
    """A dropped capability used to look green (NotImplementedError -> skip): now only declared reasons skip."""
    pytester.makepyfile("""
import pytest

def test_declared(backend):
    pytest.skip("backend 'torch' does not offer decoupled decay without AdamW: torch.optim offers it in AdamW only")

def test_missing_extra(backend):
    pytest.skip("backend 'keras' needs tensorflow, which is not installed: pip install 'equivtest[tensorflow]'")

def test_lost_optimizer(backend):
    pytest.skip("backend 'torch' has no optimizer 'adam'")

def test_the_projects_own(tmp_path):  # uses none of the suite's fixtures: its skip is the project's business
    pytest.skip("windows only")
""")
    res = pytester.runpytest_inprocess(*SUITE, "--backend=numpy", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines(["equivtest skips by reason:", "*1  backend 'torch' has no optimizer 'adam'",
                              "equivtest: skips whose reason is not a declared capability*",
                              "  backend 'torch' has no optimizer 'adam'"])
    listed = res.stdout.str().split("equivtest: skips whose reason is not a declared capability")[1]
    assert "does not offer" not in listed.split("short test summary")[0]  # the declared ones are not listed
    assert "windows only" not in res.stdout.str().split("short test summary")[0]  # nor another project's skip
    assert "pip install" not in listed.split("short test summary")[0]


# ------------------------------------------------------------------------------ the heap at the session's end
#: a conftest that records the frozen count at every full collection, and where the session's end begins: at
#: the first pytest_unconfigure hook (a conftest's tryfirst one runs before the plugins' tryfirst ones), before
#: pytest's own collections (in its unraisable-exception plugin's pytest_unconfigure from 9.2, in the clean-up
#: stack after the hooks before that)
GC_PROBE = """
import atexit, gc

import pytest

seen, cleanup = [], []
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2
                    and seen.append(gc.get_freeze_count()))


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    cleanup.append(len(seen))


atexit.register(lambda: print("frozen at each clean-up collection:", seen[cleanup[0]:], "at exit:",
                              gc.get_freeze_count()))
"""


def test_a_session_inside_a_program_that_goes_on_leaves_the_collector_alone(pytester):
    """The suite freezes the heap at a session's end only when the process ends with the session: ``pytest.main``
    (here pytester, in this process, with a framework fixture) returns to a program whose garbage must still be
    collected.  A freeze would add every object the inner session made (thousands); without one the count can
    only fall, as frozen objects of this process are freed."""
    import gc

    pytester.makepyfile(PROBE)
    before = gc.get_freeze_count()
    res = pytester.runpytest_inprocess(*SUITE, "--backend=numpy", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    assert gc.get_freeze_count() <= before


@pytest.mark.slow  # processes of their own; the fast tier checks the in-process side (above)
def test_a_session_that_ends_its_process_freezes_the_heap_before_the_clean_up(pytester):
    """``pytest`` on the command line freezes the heap once the tests are done and before pytest's clean-up, so
    pytest's own full collections (after the freeze's one) and the interpreter's shutdown skip the frameworks'
    objects.  A program that calls ``pytest.main()`` and goes on (the same command line) is left alone."""
    import ast
    import subprocess
    import sys

    pytester.makeconftest(GC_PROBE)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    res = pytester.runpytest_subprocess(*SUITE, "--backend=numpy", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    line = [x for x in res.outlines if x.startswith("frozen at each clean-up collection:")]
    assert len(line) == 1, res.outlines[-5:]
    counts, at_exit = line[0].split(":", 1)[1].split("at exit:")
    counts = ast.literal_eval(counts.strip())
    # the freeze's own collection first (nothing frozen yet), then pytest's: each sees the frozen heap
    assert len(counts) >= 2 and counts[0] == 0 and all(c > 10_000 for c in counts[1:]), counts
    assert int(at_exit) > 10_000
    script = pytester.path / "program.py"
    script.write_text("import gc, sys, pytest\n"
                      "sys.argv = ['program', '-p', 'equivtest.suite.plugin', '--backend=numpy', '-p', "
                      "'no:cacheprovider', '-q']\n"
                      "code = pytest.main()\nprint('pytest.main:', int(code), 'frozen after:', gc.get_freeze_count())\n")
    out = subprocess.run([sys.executable, str(script)], cwd=pytester.path, capture_output=True, text=True,
                         timeout=120)
    assert "pytest.main: 0 frozen after: 0" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
