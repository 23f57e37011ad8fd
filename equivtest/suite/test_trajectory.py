"""Softmax at lr vs sigmoid at 2 lr from converted weights, shared plan, in each backend."""

import pytest

from equivtest.compare import TOLERANCES, assert_trajectories_close, assert_trajectories_differ

from .helpers import train_pair
from .tiers import FIRST

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam"]


def _plan(plan, optimizer, dtype):
    return plan.replace(optimizer=optimizer, dtype=dtype, lr=1e-3 if optimizer == "adam" else plan.lr)


@pytest.mark.fast_cells(dict(backend=FIRST), dict(optimizer="sgd", dtype="float32"))  # every backend once
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_trajectory(backend, device, dataset, plan, optimizer, dtype):
    if dtype == "float64" and not backend.supports_float64:
        pytest.skip(f"backend '{backend.name}' does not support float64")
    p = _plan(plan, optimizer, dtype)
    soft, sig = train_pair(backend, p, dataset, device=device)
    cmp = assert_trajectories_close(soft, sig, **TOLERANCES[dtype])
    assert cmp.fields["step_loss"].n == p.epochs * p.steps_per_epoch(len(dataset.y_train))
    assert soft.epoch_loss[-1] < soft.step_loss[0]  # it trained


@pytest.mark.fast_cells(dict(backend=FIRST), dict(optimizer="sgd"))
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_negative_control_sigmoid_at_softmax_rate(backend, device, dataset, plan, optimizer):
    p = _plan(plan, optimizer, "float32")
    soft, sig = train_pair(backend, p, dataset, device=device, factor=1.0)
    assert_trajectories_differ(soft, sig, **TOLERANCES["float32"])


@pytest.mark.fast_cells(dict(backend=FIRST))
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_trajectory_is_deterministic(backend, device, dataset, plan, optimizer):
    """Same plan and seed: bit-identical, even after another run in between at another rate with other optimizer
    state (an adapter that caches models or optimizers, as the Keras ones do, must reset all of it)."""
    p = _plan(plan, optimizer, "float32")
    w = p.initial_weights("softmax", dataset.n_features)
    a = backend.train("softmax", w, p, dataset, device=device)
    other = p.replace(lr=3 * p.lr, optimizer="nesterov" if optimizer == "adam" else "adam")
    between = backend.train("softmax", w, other, dataset, device=device)
    b = backend.train("softmax", w, p, dataset, device=device)
    assert a.step_loss.tobytes() == b.step_loss.tobytes()
    assert a.weights.kernel.tobytes() == b.weights.kernel.tobytes() and a.weights.bias.tobytes() == b.weights.bias.tobytes()
    # the control: the run in between is another trajectory, so equality above is not vacuous
    assert between.step_loss.tobytes() != a.step_loss.tobytes()
