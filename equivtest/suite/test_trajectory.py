"""Softmax at lr vs sigmoid at 2 lr from converted weights, shared plan, in each backend."""

import numpy as np
import pytest

from equivtest.compare import (
    CONTROL_MARGIN,
    TOLERANCES,
    assert_trajectories_close,
    assert_trajectories_differ,
)
from equivtest.heads import softmax_to_sigmoid

from .helpers import train_pair
from .tiers import FIRST

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam"]


def _plan(plan, optimizer, dtype):
    return plan.replace(optimizer=optimizer, dtype=dtype, lr=1e-3 if optimizer == "adam" else plan.lr)


#: each of RULES.md's rows once in the fast tier (momentum stands for momentum and Nesterov, one row)
ROWS = ("sgd", "momentum", "adam")


# each row once in float32, float64 once, every backend once
@pytest.mark.fast_cells(dict(backend=FIRST, optimizer=ROWS, dtype="float32"), dict(backend=FIRST, optimizer="sgd"),
                        dict(optimizer="sgd", dtype="float32"))
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


@pytest.mark.fast_cells(dict(backend=FIRST, optimizer=ROWS), dict(optimizer="sgd"))
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_negative_control_sigmoid_at_softmax_rate(backend, device, dataset, plan, optimizer):
    p = _plan(plan, optimizer, "float32")
    soft, sig = train_pair(backend, p, dataset, device=device, factor=1.0)
    assert_trajectories_differ(soft, sig, **TOLERANCES["float32"])


@pytest.mark.fast_cells(dict(backend=FIRST, optimizer="adagrad"))  # a reset to zero shows (below); others: slow
@pytest.mark.parametrize("optimizer", ["momentum", "adam", "adagrad"])  # adagrad: slots that do not start at 0
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


#: the head's parameters after each step (sigmoid coordinates), float32 against the float64 oracle: float32
#: rounding of every update (measured on synthetic:2000x128, 3 epochs: at most 1.8e-7 with SGD in every backend,
#: 9.5e-7 with Adam in the Keras ones; bound = measured x ~2.5)
HISTORY_ATOL = 2.5e-6


@pytest.mark.fast_cells(dict(backend=FIRST, optimizer="sgd"))
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_history_is_the_heads_parameters_after_every_step(backend, device, dataset, plan, reference, optimizer,
                                                          head):
    """``record_history`` keeps the head's parameters after every step, in sigmoid coordinates (w1 - w0 and
    b1 - b0 for softmax): its last row is the final weights, and its rows follow the oracle's to HISTORY_ATOL.
    The control: rows one step off (a row kept before the step's update) miss the oracle's by CONTROL_MARGIN x
    that (measured: at least 1.1e-3)."""
    p = _plan(plan, optimizer, "float32")
    w = p.initial_weights("softmax", dataset.n_features)
    if head == "sigmoid":
        w = softmax_to_sigmoid(w)
    got = backend.train(head, w, p, dataset, device=device, record_history=True)
    assert got.history.shape == (p.epochs * p.steps_per_epoch(len(dataset.y_train)), dataset.n_features + 1)
    k, b = got.weights.kernel, got.weights.bias
    final = np.concatenate([k[:, 1] - k[:, 0], b[1:] - b[:1]]) if head == "softmax" else np.concatenate([k[:, 0], b])
    np.testing.assert_array_equal(got.history[-1], final)  # the same subtraction in the same dtype
    ref = reference(backend).train(head, w, p.replace(dtype="float64"), dataset, record_history=True)
    assert np.max(np.abs(got.history - ref.history)) <= HISTORY_ATOL
    assert np.max(np.abs(got.history[1:] - ref.history[:-1])) > CONTROL_MARGIN * HISTORY_ATOL
