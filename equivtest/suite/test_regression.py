"""Regression baselines: a small fixed run per backend, head and dtype, in equivtest/suite/test_regression/.

A framework upgrade that moves a trajectory fails here with the figures, the
framework versions and machine that wrote the baseline, and the current ones.
The files are written by the code, on purpose: regenerate with
``pytest equivtest/suite/test_regression.py --force-regen`` and commit the ``.npz`` files
with their ``.meta.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from equivtest.machine import machine_info
from equivtest.plan import Plan
from equivtest.sources import surrogate

from .tiers import FIRST

#: the fast tier runs this module on one backend; the slow tier on every selected one
pytestmark = pytest.mark.fast_cells(dict(backend=FIRST))

DATA = surrogate(400, 24, seed=9)
#: Per-dtype tolerance of a baseline, from the spread measured across kernel sets and thread counts
#: (``python tools/baseline_spread.py``: default, 1 thread, 16 threads, OpenBLAS Prescott and Sandybridge
#: kernels, ATen's default kernels with oneDNN off; 2-core Xeon with AVX-512, numpy 2.4.6, torch 2.13.0,
#: TensorFlow 2.21 / Keras 3.15.1).  What moves is summation order in BLAS and framework matmuls.
#: Largest |difference| from the default run over step losses, val losses and final kernels, any backend:
#: float32 1.19e-7 (torch and keras with ATen's default kernels / oneDNN off; numpy 6.0e-8 under OpenBLAS's
#: Prescott and Sandybridge kernels), float64 2.2e-16 (torch, ATen default; numpy 1.1e-16, OpenBLAS
#: Prescott / Sandybridge); 1 and 16 threads moved nothing.  keras-torch and keras-jax (float32 only; measured
#: later on the 2-core AMD EPYC with Keras 3.15.1, JAX 0.10.2): keras-torch 5.96e-8 (ATen's default kernels),
#: keras-jax 0 under every set (XLA's CPU kernels ignore these switches).  The inputs themselves are bit-identical
#: everywhere (tests/test_portability.py), so this is summation order alone.  The tolerance is 20 x the
#: largest spread, rounded up to a power of ten: room for CPUs and BLAS builds not measured here, while a
#: change of an optimizer's or a loss's definition (1e-4 and more in step loss) still fails.
BASELINE_TOL = {"float32": {"atol": 1e-5, "rtol": 0.0}, "float64": {"atol": 1e-14, "rtol": 0.0}}


def baseline_plan(dtype: str) -> Plan:
    """The baselines' run (also measured by ``tools/baseline_spread.py``)."""
    return Plan(epochs=2, batch_size=32, lr=0.05, optimizer="momentum", dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_baseline(backend, device, head, dtype, request, datadir, original_datadir):
    if device != "cpu":
        pytest.skip("baselines are stored for the CPU; GPU runs are compared with the CPU in test_cross_device")
    if dtype == "float64" and not backend.supports_float64:
        pytest.skip(f"backend '{backend.name}' does not support float64")
    ndarrays_regression = request.getfixturevalue("ndarrays_regression")  # pytest-regressions (extra 'test')
    plan = baseline_plan(dtype)
    t = backend.train(head, plan.initial_weights(head, DATA.n_features), plan, DATA, device=device)
    data = {"step_loss": t.step_loss, "val_loss": t.val_loss, "val_accuracy": t.val_accuracy,
            "kernel": np.asarray(t.weights.kernel, dtype=np.float64)}
    basename = f"baseline_{backend.name}_{head}_{dtype}"
    meta_path = original_datadir / f"{basename}.meta.json"
    npz_path = original_datadir / f"{basename}.npz"
    current = machine_info([backend.name])
    before = _digest(npz_path)
    try:
        try:
            ndarrays_regression.check(data, default_tolerance=BASELINE_TOL[dtype], basename=basename)
        finally:
            # the .meta.json names the machine that wrote the .npz: written when, and only when, pytest-regressions
            # wrote the .npz (missing, --regen-all, or --force-regen on a baseline that differed), never otherwise
            if _digest(npz_path) != before:
                meta_path.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    except AssertionError as exc:
        stored = json.loads(meta_path.read_text()) if meta_path.exists() else "no .meta.json stored"
        raise AssertionError(
            f"{exc}\n\nbaseline written by: {json.dumps(stored, sort_keys=True)}"
            f"\nthis run:            {json.dumps(current, sort_keys=True)}"
            f"\ntolerance {BASELINE_TOL[dtype]} (see BASELINE_TOL for the measured spread it covers)"
        ) from None


def _digest(path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.mark.fast_cells(dict(backend=FIRST, head="softmax"))
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_baseline_catches_a_rate_one_part_in_ten_thousand_off(backend, device, head, request):
    """The control: the stored float32 baselines fail a learning rate x 1.0001.  Measured, the arrays the baseline
    compares move by 5.2e-5 (softmax) and 4.5e-5 (sigmoid) at most (the final kernel moves most), 4.5 x the
    tolerance or more: the control asks for 2 x."""
    if device != "cpu":
        pytest.skip("baselines are stored for the CPU; GPU runs are compared with the CPU in test_cross_device")
    stored = np.load(Path(__file__).parent / "test_regression" / f"baseline_{backend.name}_{head}_float32.npz")
    plan = baseline_plan("float32")
    off = backend.train(head, plan.initial_weights(head, DATA.n_features), plan.replace(lr=plan.lr * 1.0001), DATA,
                        device=device)
    got = {"step_loss": off.step_loss, "val_loss": off.val_loss, "kernel": off.weights.kernel}
    gap = max(float(np.max(np.abs(np.asarray(v, np.float64) - stored[k]))) for k, v in got.items())
    assert gap > 2 * BASELINE_TOL["float32"]["atol"], f"lr x 1.0001 moved the baseline's arrays by only {gap:.3g}"
