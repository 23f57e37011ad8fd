"""``equivtest`` in a subprocess: exit codes, files written, their contents, bad input."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from equivtest.report import REPORT_KEYS

SMALL = ["--features", "synthetic:600x32", "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--backend", "numpy"]


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "equivtest.cli", *map(str, args)]


def equivtest_process(*args, timeout=120, **kw):
    """The command in its own process: for what only a process shows (signals, exit, start-up output)."""
    return subprocess.run(_command(*args), capture_output=True, text=True, timeout=timeout, **kw)


def equivtest(*args):
    """``equivtest.cli.main`` in this process, its exit code and output captured: for tests of what the command
    prints, writes and returns (a subprocess would cost a Python start-up a call and show nothing more)."""
    import contextlib
    import io

    from equivtest.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _assert_usage_error(res, *needles):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0]


#: the ``equivtest run`` subprocess ``small_run`` reads, once started: (the process, its folder)
_SMALL_RUN = pytest.StashKey[tuple]()


def _start_small_run(config) -> tuple:
    """The one full run in a process of its own: its report in ``report/`` and its output in two files (a pipe
    nobody reads until the fixture runs could fill up and stall it), in a folder removed when the session ends."""
    root = Path(tempfile.mkdtemp(prefix="equivtest-small-run-"))
    with open(root / "stdout", "w") as out, open(root / "stderr", "w") as err:
        proc = subprocess.Popen(_command("run", *SMALL, "--out", root / "report"), stdout=out, stderr=err)
    config.stash[_SMALL_RUN] = (proc, root)

    def reap():
        if proc.poll() is None:  # the session stopped before small_run read it
            proc.kill()
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)

    config.add_cleanup(reap)
    return proc, root


def start_early(session, items) -> None:
    """Called by the root conftest when collection ends: start the run ``small_run`` reads if a selected test
    uses it, so its 2 s on a core pass beside the tests before this module's instead of in front of them.  Not
    in a pytest-xdist worker: each collects every test, and the one that runs them starts the run when asked."""
    if not hasattr(session.config, "workerinput") and any("small_run" in item.fixturenames for item in items):
        _start_small_run(session.config)


@pytest.fixture(scope="module")
def small_run(request):
    proc, root = request.config.stash.get(_SMALL_RUN, None) or _start_small_run(request.config)
    proc.wait(timeout=120)
    out, err = ((root / name).read_text() for name in ("stdout", "stderr"))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), root / "report"


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
    assert {"conversion_max_abs_dp", "params_ratio", "trajectory_gap_step_loss", "random_init_gap_step_loss"} <= names
    for c in rep["checks"]:
        assert {"value", "tolerance", "op", "passed"} <= set(c)
    assert rep["environment"]["backends"]["numpy"]["version"] == np.__version__
    assert rep["environment"]["cpu"] and rep["environment"]["cores"] == os.cpu_count()  # the machine, by name
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
    """The seed's setting: the converted sigmoid stays closer than the random-init one, but not exactly on."""
    res = equivtest("run", *SMALL, "--out", str(tmp_path), "--masks", "independent", "--quiet", "--no-plots")
    assert res.returncode == 0, res.stderr  # measured: val_loss gap 0.0022 vs 0.0335 to the random init
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["masks"] == "independent"
    check = {c["name"]: c for c in rep["checks"]}["converted_gap_below_random_gap"]
    assert check["passed"] and 0 < check["value"] < check["tolerance"]
    assert "trajectory_gap_step_loss" not in {c["name"] for c in rep["checks"]}  # not claimed without shared masks


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


@pytest.mark.slow
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


INTERRUPT_RUN = ["run", "--features", "synthetic:600x32", "--epochs", "3", "--batch-size", "64", "--lr", "0.05",
                 "--backend", "numpy", "--quiet"]


@pytest.mark.fast_cells(dict(point="epoch:4"))  # one interrupt point in the fast tier, every one in the slow
@pytest.mark.parametrize("point, finished", [
    ("start", None),   # before any framework loads: nothing finished, no report
    ("epoch:2", 0),    # during training (after the first run's 2nd epoch): no run finished yet
    ("epoch:4", 1),    # during the second run: the first is reported
    ("plot", 3),       # between two plots: every run reported, the first plot kept
    ("write", 3),      # while report.json is written: it is finished first, complete
])
def test_sigint_at_a_determined_point_exits_130_with_what_finished(tmp_path, point, finished):
    """SIGINT is raised by the command itself at the named point (EQUIVTEST_INTERRUPT_AT): no timing race."""
    res = equivtest_process(*INTERRUPT_RUN, "--out", str(tmp_path), env={**os.environ, "EQUIVTEST_INTERRUPT_AT": point})
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("equivtest: interrupted"), res.stderr
    report = tmp_path / "report.json"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".tmp.png")]
    assert leftovers == []  # atomic writes leave no temporary file behind
    if finished is None:
        assert not report.exists()
        return
    rep = json.loads(report.read_text())  # complete JSON, never half
    assert rep["interrupted"] is True and rep["passed"] is False
    assert sum(len(b["runs"]) for b in rep["backends"].values()) == finished
    assert f"holds the {finished} run(s) that finished" in lines[0]
    if point == "plot":
        assert (tmp_path / "loss_curves.png").stat().st_size > 0
        assert not (tmp_path / "step_loss_gap.png").exists()


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    from equivtest import atomic

    target = tmp_path / "report.json"
    target.write_text('{"old": true}')
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise KeyboardInterrupt  # interrupted half-way
    assert target.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    atomic.write_text(target, '{"new": true}')
    assert json.loads(target.read_text()) == {"new": True}


def test_too_few_rows_of_a_class_is_one_line_naming_counts_and_minimum(tmp_path):
    import h5py

    bad = tmp_path / "tiny.h5"
    with h5py.File(bad, "w") as f:
        f["train"] = np.ones((3, 4), np.float32)
        f["label"] = np.array([0, 1, 1])
    _assert_usage_error(equivtest("run", "--features", str(bad), "--out", str(tmp_path / "o")),
                        f"features file '{bad}'", "class 0 has 1 row(s)", "1 / 2", "at least 2 rows of each class")


def test_overflowing_features_stop_each_run_at_the_step_with_a_reason(tmp_path):
    import h5py

    from equivtest.sources import load_features

    ds = load_features("synthetic:600x32")
    big = tmp_path / "big.h5"
    with h5py.File(big, "w") as f:
        f["train"] = ds.X.astype(np.float64) * 1e30
        f["label"] = ds.y
    res = equivtest("run", "--features", str(big), "--epochs", "2", "--backend", "numpy", "--quiet", "--no-plots",
                    "--out", str(tmp_path / "o"))
    assert res.returncode == 1, res.stderr
    assert res.stderr == ""  # no NumPy RuntimeWarning, no traceback
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    stopped = [c for c in rep["checks"] if c["name"] == "non_finite"]
    assert len(stopped) == 3 and not any(c["passed"] for c in stopped)
    first = stopped[0]["detail"]
    # step 1 is finite (the initial weights are small); its update overflows, so step 2 is the first non-finite one
    # (steps count from 1 in every message, as Keras's progress counts epochs)
    assert first.startswith("non-finite loss at step 2 (numpy, softmax)"), first
    assert "largest magnitude is 2.16e+30" in first and "learning rate is 0.001" in first
    assert "non-finite loss at step 2 (numpy, softmax)" in res.stdout


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


@pytest.mark.slow
def test_run_a_cnn_on_digit_images_under_the_per_layer_rule(tmp_path):
    res = equivtest("run", "--body", "cnn", "--features", "digits", "--epochs", "1", "--backend", "numpy",
                    "--quiet", "--no-plots", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["network"] == {"body": "cnn", "lr_rule": "per-layer"}
    assert rep["features"]["shape"] == [1797, 8, 8, 1]
    checks = {c["name"]: c for c in rep["checks"]}
    assert checks["params_difference"]["value"] == 17 and checks["params_difference"]["passed"]
    assert checks["trajectory_gap_step_loss"]["value"] <= 1e-5
    assert "per-layer rule" in res.stdout


def test_run_global_rule_fails_once_the_body_trains(tmp_path):
    res = equivtest("run", "--body", "mlp", "--features", "synthetic:600x16", "--epochs", "1", "--lr", "0.05",
                    "--lr-rule", "global", "--backend", "numpy", "--quiet", "--no-plots", "--out", str(tmp_path))
    assert res.returncode == 1, res.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    failed = {c["name"] for c in rep["checks"] if not c["passed"]}
    assert failed == {"trajectory_gap_step_loss", "trajectory_gap_val_loss"}


def test_a_cnn_on_feature_vectors_is_a_usage_error(tmp_path):
    _assert_usage_error(equivtest("run", "--body", "cnn", "--features", "synthetic:100x8", "--out", str(tmp_path)),
                        "--body cnn with features 'synthetic:100x8'", "needs images")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch: pip install 'equivtest[torch]'")
def test_run_data_parallel_over_two_processes(tmp_path):
    res = equivtest_process("run", "--backend", "torch", "--data-parallel", "2", "--features", "synthetic:600x16",
                    "--epochs", "1", "--lr", "0.05", "--quiet", "--no-plots", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["data_parallel"] == 2 and rep["backends"]["torch"]["runs"]["softmax"]["meta"]["world_size"] == 2
    assert "data-parallel over 2 workers" in res.stdout


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("torch", "tensorflow")),
                    reason="needs torch and tensorflow: pip install 'equivtest[torch,tensorflow]'")
def test_run_data_parallel_networks_with_ddp_and_mirrored_strategy(tmp_path):
    """A whole network (mlp) on 2 workers in torch (DDP) and keras (MirroredStrategy): every check passes."""
    res = equivtest_process("run", "--backend", "torch,keras", "--data-parallel", "2", "--body", "mlp", "--features",
                    "synthetic:600x16", "--epochs", "1", "--lr", "0.05", "--quiet", "--no-plots", "--out",
                    str(tmp_path), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["data_parallel"] == 2 and rep["network"]["body"] == "mlp"
    engines = {b: r["runs"]["softmax"]["meta"]["engine"] for b, r in rep["backends"].items()}
    assert engines == {"torch": "DistributedDataParallel (gloo)", "keras": "tf.distribute.MirroredStrategy"}
    assert all(c["passed"] for c in rep["checks"])


def test_data_parallel_without_an_engine_is_a_usage_error(tmp_path):
    _assert_usage_error(equivtest("run", "--backend", "numpy", "--data-parallel", "2", "--out", str(tmp_path)),
                        "backend 'numpy' has no data-parallel training", "torch, keras, keras-jax")


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("keras", "tensorflow", "jax")),
                    reason="needs keras, tensorflow and jax: pip install 'equivtest[tensorflow,keras-jax]'")
def test_data_parallel_batches_an_engine_cannot_split_are_a_usage_error(tmp_path):
    """Checked before anything trains (the frameworks are not even imported): one line, exit 2."""
    _assert_usage_error(equivtest("run", "--backend", "keras", "--data-parallel", "3", "--out", str(tmp_path)),
                        "backend 'keras' (tf.distribute.MirroredStrategy) needs the first batch to divide by the 3 "
                        "workers: a batch of 128 does not")
    # 480 training rows in batches of 128: the last, 96, does not split over 5 devices (and 128 neither)
    _assert_usage_error(equivtest("run", "--backend", "keras-jax", "--data-parallel", "5", "--features",
                                  "synthetic:600x16", "--out", str(tmp_path)),
                        "backend 'keras-jax' (keras.distribution.DataParallel) needs every batch")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_get_the_mode_a_plain_open_gives(tmp_path, umask, mode):
    """mkstemp's temporary file is 0600; the renamed report must follow the user's umask as open() would."""
    from equivtest import atomic

    old = os.umask(umask)
    try:
        atomic.write_text(tmp_path / "report.json", "{}")
        with atomic.atomic_path(tmp_path / "plot.png") as tmp:
            tmp.write_bytes(b"png")
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    for name in ("report.json", "plot.png", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_write_features_refuses_a_missing_folder_and_an_existing_file_naming_the_flag(tmp_path):
    _assert_usage_error(equivtest("write-features", str(tmp_path / "nodir" / "x.h5")),
                        f"features file '{tmp_path / 'nodir' / 'x.h5'}'", "does not exist")
    assert not (tmp_path / "nodir").exists()
    h5 = tmp_path / "x.h5"
    assert equivtest("write-features", str(h5), "--features", "synthetic:100x4").returncode == 0
    assert h5.stat().st_mode & 0o777 == 0o666 & ~_umask()
    _assert_usage_error(equivtest("write-features", str(h5)), "already exists", "--overwrite")
    assert equivtest("write-features", str(h5), "--features", "synthetic:100x4", "--overwrite").returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]  # no temporary file left


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def report_pair(tmp_path_factory):
    """One small report, and a copy to edit."""
    out = tmp_path_factory.mktemp("cmp")
    assert equivtest("run", *SMALL, "--out", str(out / "a"), "--quiet", "--no-plots").returncode == 0
    return json.loads((out / "a" / "report.json").read_text())


def _write(tmp_path, name, rep):
    p = tmp_path / name
    p.write_text(json.dumps(rep))
    return str(p)


def test_compare_lists_what_one_report_lacks_and_exits_1(tmp_path, report_pair):
    a = _write(tmp_path, "a.json", report_pair)
    assert equivtest("compare", a, a).returncode == 0
    b = json.loads(json.dumps(report_pair))
    del b["backends"]["numpy"]["runs"]["sigmoid_random"]
    del b["backends"]["numpy"]["runs"]["softmax"]["val_accuracy"]
    res = equivtest("compare", a, _write(tmp_path, "b.json", b))
    assert res.returncode == 1, res.stdout
    assert "MISSING numpy sigmoid_random only in A" in res.stdout
    assert "MISSING numpy softmax val_accuracy only in A" in res.stdout
    assert "2 series, runs or backends in one report only" in res.stdout
    c = json.loads(json.dumps(report_pair))
    c["backends"]["torch"] = c["backends"]["numpy"]  # a backend in B only
    res = equivtest("compare", a, _write(tmp_path, "c.json", c))
    assert res.returncode == 1 and "MISSING backend torch only in B" in res.stdout


def test_compare_refuses_different_setups_in_one_line_unless_allowed(tmp_path, report_pair):
    a = _write(tmp_path, "a.json", report_pair)
    b = json.loads(json.dumps(report_pair))
    b["features"]["source"] = "digits"
    b["lr"]["factor"] = 1.0
    b["plan"]["seed"] = 7
    res = equivtest("compare", a, _write(tmp_path, "b.json", b))
    _assert_usage_error(res, "different set-ups", "features 'synthetic:600x32' vs 'digits'", "lr factor 2.0 vs 1.0",
                        "--allow-different-setup")
    assert res.stdout == ""  # refused before any row
    res = equivtest("compare", a, _write(tmp_path, "b.json", b), "--allow-different-setup")
    assert res.returncode == 0 and "set-ups differ" in res.stdout and "plan differs: seed 20180520 vs 7" in res.stdout


def test_compare_with_no_run_in_common_is_exit_2_before_any_row(tmp_path, report_pair):
    b = json.loads(json.dumps(report_pair))
    b["backends"] = {"torch": b["backends"]["numpy"]}
    res = equivtest("compare", _write(tmp_path, "a.json", report_pair), _write(tmp_path, "b.json", b))
    _assert_usage_error(res, "share no run to compare")
    assert "FAIL" not in res.stdout


def test_help_lists_exit_codes_and_documents_every_argument():
    import contextlib
    import io

    from equivtest.cli import build_parser

    for argv in ([], ["run"], ["compare"], ["write-features"]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        text = buf.getvalue()
        if argv != ["write-features"]:
            assert "exit codes:" in text and "130" in text, argv
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, sp in subs.choices.items():
        for action in sp._actions:
            assert action.help, f"{name}: {action.dest} has no help text"



def test_the_split_step_is_one_number_in_report_md_report_json_and_the_data(tmp_path):
    """--lr-factor 1: the first step past tolerance, counted from 1, is the same in report.json (divergence.step,
    what step_loss_gap.png marks), in report.md and in the step losses themselves."""

    res = equivtest("run", *SMALL, "--out", str(tmp_path), "--lr-factor", "1", "--quiet", "--no-plots")
    assert res.returncode == 1
    rep = json.loads((tmp_path / "report.json").read_text())
    check = next(c for c in rep["checks"] if c["name"] == "trajectory_gap_step_loss" and not c["passed"])
    step = check["divergence"]["step"]
    runs = rep["backends"]["numpy"]["runs"]
    gap = np.abs(np.array(runs["softmax"]["step_loss"]) - np.array(runs["sigmoid_converted"]["step_loss"]))
    assert step == int(np.argmax(gap > check["tolerance"])) + 1  # counted from 1
    md = (tmp_path / "report.md").read_text()
    assert f"split at step {step};" in md and f"split at step {step};" in check["detail"]
    assert f"split at step {step}" in res.stdout  # the terminal says why it failed


def test_an_input_error_leaves_out_untouched(tmp_path):
    out = tmp_path / "new" / "report"
    _assert_usage_error(equivtest("run", "--features", "missing.h5", "--out", str(out)), "no such file")
    assert not (tmp_path / "new").exists()


def test_no_file_from_an_earlier_run_survives_in_out(tmp_path, small_run):
    """A run with --no-plots after one with plots: the old PNGs go; an input error keeps the old report whole."""

    shutil.copytree(small_run[1], tmp_path, dirs_exist_ok=True)  # what a run with plots left (the same command)
    assert (tmp_path / "loss_curves.png").exists()
    (tmp_path / "mine.txt").write_text("the user's own file")
    _assert_usage_error(equivtest("run", "--features", "missing.h5", "--out", str(tmp_path)), "no such file")
    assert (tmp_path / "loss_curves.png").exists()  # refused before anything: nothing touched
    assert equivtest("run", *SMALL, "--out", str(tmp_path), "--quiet", "--no-plots").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "report.json", "report.md"]


def test_the_report_title_gives_image_shapes_whole_and_names_the_per_layer_rule(tmp_path):
    from equivtest.report import _rule_title

    res = equivtest("run", "--body", "cnn", "--features", "digits", "--epochs", "1", "--backend", "numpy",
                    "--quiet", "--no-plots", "--out", str(tmp_path))
    assert res.returncode in (0, 1), res.stderr
    md = (tmp_path / "report.md").read_text()
    assert "(1797 x 8 x 8 x 1;" in md  # the JSON's shape, not "1797 x 8"

    class Net:
        body, lr_rule, lr_factor = "cnn", "per-layer", 2.0

    assert "the head at 2 x lr, the body at 1 x lr" in _rule_title(Net())


def test_progress_is_a_live_display_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from equivtest.cli import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    logs = {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.4, "val_accuracy": 0.9}
    tty = Terminal()
    p = Progress(tty, quiet=False)
    with p.stage("loading the features"):
        pass
    p.training(2)
    p.run("numpy", "softmax")
    p.epoch("numpy", "softmax", 0, logs, 2)
    p.close()
    assert p._live is None and "Epoch 1/2 - loss: 0.5000" in tty.getvalue()
    plain = io.StringIO()
    p = Progress(plain, quiet=False)
    with p.stage("loading the features"):
        pass
    p.training(2)
    p.epoch("numpy", "softmax", 0, logs, 2)
    p.close()
    assert plain.getvalue() == (f"{'numpy':>6} {'softmax':<17} Epoch 1/2 - loss: 0.5000 - acc: 0.8000 - "
                                "val_loss: 0.4000 - val_acc: 0.9000  [1/2]\n")  # nothing else: no stage lines
