"""Every ``equivtest run`` the README shows learns (val_acc >= 0.9) and clears its controls by 10 x.

The commands are read from the README itself and run at a small size: numpy (torch for a data-parallel one),
CPU, and the built-in features at full width with fewer rows (``synthetic:4000x2048``; the surrogate's signal
lives in a few of its 2048 channels, so narrow surrogates are harder, not smaller).  A command that is a
negative control (it exits 1) must miss its tolerance by 10 x instead.
"""

import json
import shlex
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMANDS = sorted({line.split("#")[0].strip() for line in README.splitlines()
                   if line.strip().startswith("equivtest run")})
SMALL_FEATURES = "synthetic:4000x2048"
VAL_ACC = 0.9
MARGIN = 10.0


def _small(command: str) -> list[str]:
    args = shlex.split(command)[2:]
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--device", "--out", "--backend"):
            skip = True
            continue
        out.append(a)
    backend = "torch" if "--data-parallel" in out else "numpy"
    if "--features" not in out:
        out += ["--features", SMALL_FEATURES]
    return ["run", *out, "--backend", backend, "--quiet", "--no-plots"]


def test_the_readme_shows_commands_to_check():
    assert len(COMMANDS) >= 5, COMMANDS


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_learns_and_clears_its_controls(command, tmp_path):
    pytest.importorskip("torch") if "--data-parallel" in command else None
    from equivtest.cli import main

    code = main([*_small(command), "--out", str(tmp_path)])
    rep = json.loads((tmp_path / "report.json").read_text())
    for backend in rep["backends"].values():
        acc = backend["runs"]["softmax"]["val_accuracy"][-1]
        assert acc >= VAL_ACC, f"{command}: softmax val_acc {acc:.3f} < {VAL_ACC}"
    for c in rep["checks"]:
        if c["op"] == ">":  # a negative control: past its threshold by the margin
            assert c["value"] >= MARGIN * c["tolerance"], f"{command}: {c['name']} {c['value']:.3g}"
    failed = [c for c in rep["checks"] if not c["passed"]]
    if code == 1:  # the command is itself a negative control: what fails, fails by the margin
        assert failed and all(c["value"] >= MARGIN * c["tolerance"] for c in failed if c["op"] == "<="), failed
    else:
        assert code == 0 and not failed, failed
