"""Comparisons say which pair, where it split, by how much, and the tolerance."""

import numpy as np
import pytest

from equivtest.compare import (
    TOLERANCES,
    assert_allclose,
    assert_trajectories_close,
    assert_trajectories_differ,
    compare_series,
    tolerance,
)
from equivtest.heads import Weights
from equivtest.trajectory import Trajectory


def traj(loss, label):
    w = Weights(np.zeros((2, 1)), np.zeros(1))
    n = len(loss)
    return Trajectory(loss, [np.mean(loss)], [0.5], [0.3], [0.9], w,
                      {"backend": label, "head": "sigmoid", "dtype": "float32", "lr": 0.002, "steps": n})


def test_failure_names_pair_first_step_and_tolerance():
    a = traj([0.7, 0.6, 0.5, 0.4], "torch")
    b = traj([0.7, 0.6, 0.5003, 0.4001], "keras")
    with pytest.raises(AssertionError) as info:
        assert_trajectories_close(a, b)
    msg = str(info.value)
    assert "torch-sigmoid@0.002 vs keras-sigmoid@0.002" in msg
    assert "first at step 3" in msg  # the third step (index 2): steps count from 1, as Keras prints them
    assert "2 steps (50.0%)" in msg
    assert "atol=1e-05" in msg
    assert "max |diff| 0.0003" in msg


def test_close_runs_pass_and_controls_fail_when_too_close():
    a = traj([0.7, 0.6], "a")
    b = traj([0.7, 0.6 + 1e-7], "b")
    assert assert_trajectories_close(a, b).ok
    with pytest.raises(AssertionError, match="negative control failed"):
        assert_trajectories_differ(a, b)


def test_shapes_are_checked_before_values_and_nan_is_a_mismatch():
    with pytest.raises(AssertionError, match="shapes differ"):
        compare_series([1, 2], [1, 2, 3])
    c = compare_series([1.0, np.nan], [1.0, 1.0], atol=1)
    assert not c.ok and c.first == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tolerances_are_data(dtype):
    """The per-dtype table decides a comparison, and a per-check override replaces it."""
    atol = TOLERANCES[dtype]["atol"]
    assert compare_series([0.5], [0.5 + 0.5 * atol], **tolerance(dtype)).ok
    assert not compare_series([0.5], [0.5 + 2 * atol], **tolerance(dtype)).ok
    assert compare_series([0.5], [0.5 + 2 * atol], **tolerance(dtype, atol=4 * atol)).ok
    assert TOLERANCES["float64"]["atol"] < TOLERANCES["float32"]["atol"]
    with pytest.raises(AssertionError, match="mean"):
        assert_allclose([0.0, 1.0], [0.0, 1.1], atol=1e-3)


def test_divergence_names_the_step_and_the_parameters_that_differ_most():
    from equivtest.backends.numpy import Backend
    from equivtest.heads import softmax_to_sigmoid
    from equivtest.plan import Plan
    from equivtest.sources import surrogate

    data = surrogate(300, 6, seed=2)
    plan = Plan(epochs=1, batch_size=50, lr=0.1, dtype="float64")
    w = plan.initial_weights("softmax", 6)
    oracle = Backend()
    soft = oracle.train("softmax", w, plan, data, record_history=True)
    sig = oracle.train("sigmoid", softmax_to_sigmoid(w), plan, data, record_history=True)  # lr x 1: wrong
    assert soft.history.shape == (plan.steps_per_epoch(len(data.y_train)), 7)  # 240 rows / 50: 5 steps
    with pytest.raises(AssertionError) as info:
        assert_trajectories_close(soft, sig)
    msg = str(info.value)
    assert "split at step 2" in msg  # step 1 shares the initial weights, so its loss agrees
    assert "beta[" in msg
    from equivtest.compare import locate_divergence

    div = locate_divergence(soft, sig, atol=1e-10)
    diffs = [abs(a - b) for _, a, b in div.top]
    assert diffs == sorted(diffs, reverse=True) and diffs[0] > 0
    j = int(div.top[0][0][5:-1]) if div.top[0][0] != "c" else 6  # "beta[j]" or "c" (the last coordinate)
    gaps = np.abs(soft.history[1] - sig.history[1])
    assert diffs[0] == pytest.approx(gaps.max())
    assert j == int(np.argmax(gaps))  # the parameter named first is the one that differs most
