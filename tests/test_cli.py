"""``equivtest`` in a subprocess: exit codes, files written, their contents, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from equivtest.report import REPORT_KEYS

SMALL = ["--features", "synthetic:600x32", "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--backend", "numpy"]


def equivtest(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "equivtest.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def _assert_usage_error(res, *needles):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = equivtest("run", *SMALL, "--out", str(out))
    return res, out


def test_run_passes_and_writes_every_file(small_run):
    res, out = small_run
    assert res.returncode == 0, res.stderr
    assert "all checks pass" in res.stdout
    assert "Epoch 2/2 - loss:" in res.stderr  # Keras-style lines
    for name in ("report.json", "report.md", "loss_curves.png", "val_loss_diff.png", "step_loss_gap.png"):
        assert (out / name).stat().st_size > 0, name


def test_report_json_has_the_documented_keys_and_figures(small_run):
    _, out = small_run
    rep = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(rep)
    assert rep["passed"] is True and rep["interrupted"] is False
    runs = rep["backends"]["numpy"]["runs"]
    assert set(runs) == {"softmax", "sigmoid_converted", "sigmoid_random"}
    assert len(runs["softmax"]["step_loss"]) == 2 * 8  # 480 train rows / 64 -> 8 steps
    assert rep["backends"]["numpy"]["params"] == {"softmax": 66, "sigmoid": 33}
    names = {c["name"] for c in rep["checks"]}
    assert {"conversion_max_abs_dp", "params_ratio", "trajectory_gap_step_loss", "random_init_gap_val_loss"} <= names
    for c in rep["checks"]:
        assert {"value", "tolerance", "op", "passed"} <= set(c)
    assert rep["environment"]["backends"]["numpy"]["version"] == np.__version__
    md = (out / "report.md").read_text()
    assert "| check | backend | value | op | tolerance | verdict |" in md


def test_pngs_are_real_images(small_run):
    import matplotlib.image as mpimg

    _, out = small_run
    for name in ("loss_curves.png", "val_loss_diff.png", "step_loss_gap.png"):
        img = mpimg.imread(out / name)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert img.std() > 0.02, f"{name} looks blank"


def test_json_flag_prints_only_the_report_on_stdout(tmp_path):
    res = equivtest("run", *SMALL, "--out", str(tmp_path), "--json", "--quiet", "--no-plots")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["passed"] is True
    assert "Epoch" not in res.stderr  # --quiet


def test_negative_control_lr_factor_1_fails_with_exit_1(tmp_path):
    res = equivtest("run", *SMALL, "--out", str(tmp_path), "--lr-factor", "1", "--quiet", "--no-plots")
    assert res.returncode == 1
    assert "FAIL" in res.stdout
    rep = json.loads((tmp_path / "report.json").read_text())
    failed = {c["name"] for c in rep["checks"] if not c["passed"]}
    assert "trajectory_gap_step_loss" in failed


def test_independent_masks_run(tmp_path):
    res = equivtest("run", *SMALL, "--out", str(tmp_path), "--masks", "independent", "--quiet", "--no-plots")
    assert res.returncode in (0, 1), res.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["masks"] == "independent"
    assert "converted_gap_below_random_gap" in {c["name"] for c in rep["checks"]}


@pytest.mark.parametrize("args, needles", [
    (["--features", "missing.h5"], ["features file 'missing.h5': no such file"]),
    (["--backend", "jax"], ["unknown backend 'jax'; valid names: numpy, torch, keras"]),
    (["--epochs", "-3"], ["--epochs", "positive integer"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--lr", "nan"], ["--lr"]),
    (["--optimizer", "lbfgs"], ["--optimizer"]),
    (["--device", "tpu"], ["unknown device 'tpu'"]),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, needles):
    _assert_usage_error(equivtest("run", "--out", str(tmp_path), *args), *needles)


def test_wrong_schema_exit_2(tmp_path):
    import h5py

    bad = tmp_path / "gap_wrong.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("features", data=np.zeros((4, 2)))
    _assert_usage_error(equivtest("run", "--features", str(bad), "--out", str(tmp_path)),
                        f"features file '{bad}'", "dataset 'train' is missing (found: 'features')")


def test_unwritable_out_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _assert_usage_error(equivtest("run", *SMALL, "--out", str(blocker / "sub")), "--out", "cannot write there")


def test_write_features_then_run_on_them_then_compare(tmp_path):
    h5 = tmp_path / "gap_small.h5"
    res = equivtest("write-features", str(h5), "--features", "synthetic:500x16")
    assert res.returncode == 0, res.stderr
    args = ["--features", str(h5), "--epochs", "2", "--backend", "numpy", "--lr", "0.05", "--quiet", "--no-plots"]
    assert equivtest("run", *args, "--out", str(tmp_path / "a")).returncode == 0
    assert equivtest("run", *args, "--out", str(tmp_path / "b")).returncode == 0
    assert equivtest("run", *args, "--seed", "3", "--out", str(tmp_path / "c")).returncode == 0
    same = equivtest("compare", str(tmp_path / "a/report.json"), str(tmp_path / "b/report.json"))
    assert same.returncode == 0 and "within tolerance" in same.stdout
    diff = equivtest("compare", str(tmp_path / "a/report.json"), str(tmp_path / "c/report.json"))
    assert diff.returncode == 1 and "FAIL" in diff.stdout and "first at step" in diff.stdout
    _assert_usage_error(equivtest("compare", str(tmp_path / "a/report.json"), str(tmp_path / "nope.json")),
                        "no such file")
    _assert_usage_error(equivtest("write-features", str(h5)), "already exists")


def test_ctrl_c_exits_130_after_writing_what_finished(tmp_path):
    args = ["run", "--features", "synthetic:4000x256", "--epochs", "5", "--batch-size", "8", "--lr", "0.01",
            "--backend", "numpy", "--out", str(tmp_path), "--no-plots"]
    proc = subprocess.Popen([sys.executable, "-m", "equivtest.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stderr.readline()  # the first epoch has finished
    assert "Epoch 1/5" in line, line
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["interrupted"] is True and rep["passed"] is False
    assert "Traceback" not in err


def test_bad_input_is_one_line_even_when_a_backend_is_missing(tmp_path):
    """A missing framework must not add lines before the error (seen on a GPU runner without TensorFlow)."""
    code = (
        "import importlib.util as u, sys; real = u.find_spec\n"
        "u.find_spec = lambda n, *a, **k: None if n == 'keras' else real(n, *a, **k)\n"
        "from equivtest.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    res = subprocess.run([sys.executable, "-c", code, "run", "--features", "missing.h5", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    _assert_usage_error(res, "no such file")
