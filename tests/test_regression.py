"""Regression baselines: a small fixed run per backend, stored in tests/test_regression/.

A framework upgrade that moves a trajectory fails here with the figures.  The
files are written by the code, on purpose: regenerate with
``pytest tests/test_regression.py --force-regen`` and commit the change.
"""

import numpy as np
import pytest

from equivtest.data import surrogate
from equivtest.plan import Plan

DATA = surrogate(400, 24, seed=9)
#: per-dtype tolerance of a baseline (float32 runs differ by BLAS and summation order)
BASELINE_TOL = {"float32": {"atol": 2e-6, "rtol": 0.0}, "float64": {"atol": 1e-12, "rtol": 0.0}}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_baseline(backend, device, head, dtype, request):
    if device != "cpu":
        pytest.skip("baselines are stored for the CPU; GPU runs are compared with the CPU in test_cross_device")
    if dtype == "float64" and not backend.supports_float64:
        pytest.skip(f"backend '{backend.name}' does not support float64")
    ndarrays_regression = request.getfixturevalue("ndarrays_regression")  # pytest-regressions (extra 'test')
    plan = Plan(epochs=2, batch_size=32, lr=0.05, optimizer="momentum", dtype=dtype)
    t = backend.train(head, plan.initial_weights(head, DATA.n_features), plan, DATA, device=device)
    data = {"step_loss": t.step_loss, "val_loss": t.val_loss, "val_accuracy": t.val_accuracy,
            "kernel": np.asarray(t.weights.kernel, dtype=np.float64)}
    ndarrays_regression.check(data, default_tolerance=BASELINE_TOL[dtype],
                              basename=f"baseline_{backend.name}_{head}_{dtype}")
