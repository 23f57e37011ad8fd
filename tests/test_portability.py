"""Generated inputs have the same bytes on every machine (see ``equivtest.rand``).

``tests/data/input_digests.json`` pins the SHA-256 of every input equivtest
generates (built-in features, splits, initial weights, batch orders, dropout
masks).  It was written by ``python -m equivtest.portability`` on purpose; a
change to the generators that moves a bit fails here.  Regenerate only when the
generated data are meant to change (and re-measure the README's figures):
``python -m equivtest.portability > tests/data/input_digests.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from equivtest.portability import SOURCES, input_digests

PINNED = json.loads((Path(__file__).parent / "data" / "input_digests.json").read_text())


def _dispatched_cpu_features() -> str:
    """The SIMD targets NumPy dispatches to on this CPU (disabling them forces its baseline kernels)."""
    try:
        from numpy._core import _multiarray_umath as m  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core import _multiarray_umath as m
    return " ".join(f for f in m.__cpu_dispatch__ if m.__cpu_features__.get(f))


#: other kernel sets and thread counts: (id, environment, extra arguments)
KERNEL_SETS = [
    ("openblas-prescott-1-thread", {"OPENBLAS_CORETYPE": "Prescott", "OPENBLAS_NUM_THREADS": "1",
                                    "OMP_NUM_THREADS": "1"}, []),
    ("openblas-sandybridge", {"OPENBLAS_CORETYPE": "Sandybridge"}, []),
    ("numpy-baseline-simd", {"NPY_DISABLE_CPU_FEATURES": _dispatched_cpu_features()}, []),
    ("frameworks-imported-aten-default", {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
                                          "TF_CPP_MIN_LOG_LEVEL": "3"}, ["--import-frameworks"]),
]


def _diff(got: dict, want: dict) -> str:
    bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return f"{len(bad)} of {len(want)} generated inputs differ: " + ", ".join(bad[:8])


#: the seed's full 25000 x 2048 features, whose generation takes seconds: the slow tier pins them, here and
#: under every kernel set below; the fast tier every other source
SEED_SIZE = "synthetic"
SMALL_SOURCES = tuple(s for s in SOURCES if s != SEED_SIZE)


@pytest.mark.fast_cells(dict(sources="small"))
@pytest.mark.parametrize("sources", ["small", "all"])
def test_generated_inputs_match_the_pinned_digests(sources):
    want = PINNED
    if sources == "small":  # every kind of input still, at every size but the seed's: 30 of the 33 digests
        want = {k: v for k, v in PINNED.items() if not k.startswith(f"{SEED_SIZE}/")}
        assert len(want) == len(PINNED) - 3
    got = input_digests(SMALL_SOURCES if sources == "small" else SOURCES)
    assert got == want, _diff(got, want)


@pytest.mark.slow  # subprocesses; the fast tier pins 30 of the 33 digests in-process (above)
@pytest.mark.parametrize("name, env, args", KERNEL_SETS, ids=[k[0] for k in KERNEL_SETS])
def test_generated_inputs_are_identical_under_other_kernel_sets(name, env, args):
    if name == "numpy-baseline-simd" and not env["NPY_DISABLE_CPU_FEATURES"]:
        pytest.skip("NumPy dispatches to no optional SIMD target on this CPU: nothing to disable")
    if args and not any(importlib.util.find_spec(f) for f in ("torch", "tensorflow")):
        pytest.skip("neither torch nor tensorflow is installed: pip install 'equivtest[all]'")
    res = subprocess.run([sys.executable, "-m", "equivtest.portability", *args], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert got == PINNED, f"under {env}: " + _diff(got, PINNED)


@pytest.mark.slow  # the digests again (5 s): the fast tier pins all but the seed-size ones above
def test_the_digest_command_has_help_and_writes_out_atomically(tmp_path, capsys):
    from equivtest.portability import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--out FILE" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "nodir" / "d.json")]) == 2
    assert "its folder does not exist" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text()) == PINNED
