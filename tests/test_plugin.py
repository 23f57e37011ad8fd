"""The plugin's options, usage errors, report header and parametrisation (in a subprocess)."""

import importlib.util

import pytest

from equivtest.errors import InputError
from equivtest.session import Selection

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


def test_ids_and_header_for_a_named_backend(pytester):
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_subprocess("--backend=numpy", "-v", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([
        "equivtest backends: numpy (numpy *; devices: cpu only)",
        "equivtest devices: cpu; dtypes float32, float64; TF32 off*",
        "equivtest features: synthetic:2000x128",
        "*test_probe?numpy-cpu? PASSED*",
    ])


def test_environment_variable_stands_in_for_the_flag(pytester, monkeypatch):
    monkeypatch.setenv("EQUIVTEST_BACKEND", "numpy")
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    res.stdout.fnmatch_lines(["*test_probe?numpy-cpu?"])
    res.stdout.no_fnmatch_line("*torch-cpu*")


def test_unknown_backend_is_a_usage_error_listing_valid_names(pytester):
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_subprocess("--backend=tensorflow2")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*unknown backend 'tensorflow2'; valid names: numpy, torch, keras*"])


def test_unknown_device_is_a_usage_error(pytester):
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_subprocess("--device=tpu")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*unknown device 'tpu'*"])


@pytest.mark.skipif(_cuda_present(), reason="a CUDA device is present here")
def test_absent_gpu_asked_for_is_a_usage_error_not_a_skip(pytester):
    pytester.makepyfile(PROBE)
    res = pytester.runpytest_subprocess("--device=cuda")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*device 'cuda'*"])


def test_bad_features_file_is_a_usage_error_with_the_one_line_message(pytester):
    pytester.makepyfile(PROBE)
    bad = pytester.path / "gap_bad.h5"
    bad.write_text("not hdf5")
    res = pytester.runpytest_subprocess(f"--features={bad}", "--backend=numpy")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*features file '{bad}': is not an HDF5 file*"])
    assert "Traceback" not in res.stderr.str()


def test_features_option_loads_a_named_source(pytester):
    pytester.makepyfile("""
def test_shape(dataset):
    assert dataset.shape == (569, 30)
""")
    res = pytester.runpytest_subprocess("--features=breast-cancer", "--backend=numpy")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["equivtest features: breast-cancer (569 x 30; 455 train / 114 val)"])


def test_named_missing_backend_is_a_usage_error_unnamed_is_a_skip(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install 'equivtest\[torch\]'"):
        Selection.from_options("torch", None, None)
    sel = Selection.from_options(None, None, None)
    assert "torch" in sel.missing and "equivtest[torch]" in sel.missing["torch"]
    assert "torch" not in sel.installed


def test_missing_backend_is_skipped_with_the_extra_named(pytester):
    # a plugin loaded with -p before equivtest's configure hides keras, as if not installed
    pytester.makepyfile(hide_keras="""
import importlib.util
_real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name == "keras" else _real(name, *a, **k)
""")
    pytester.makepyfile(test_probe=PROBE)
    res = pytester.runpytest_subprocess("-p", "hide_keras", "-rs", "-p", "no:cacheprovider", "test_probe.py",
                                        "-k", "keras")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*backend 'keras' needs *keras, which is not installed: pip install 'equivtest?tensorflow?'*"])
