"""Heads and transfer rules in pure NumPy: conversion, layouts, counts, factors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from equivtest import heads, rand
from equivtest.compare import assert_allclose

finite = st.floats(-5, 5, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)


@st.composite
def softmax_case(draw):
    d = draw(st.integers(1, 40))
    n = draw(st.integers(1, 30))
    kernel = draw(arrays(np.float64, (d, 2), elements=finite))
    bias = draw(arrays(np.float64, (2,), elements=finite))
    X = draw(arrays(np.float64, (n, d), elements=st.floats(-3, 3, allow_subnormal=False, width=64)))
    return heads.Weights(kernel, bias), X


@given(softmax_case())
def test_softmax_and_converted_sigmoid_predict_the_same(case):
    w, X = case
    p_soft = heads.predict_proba(w, X)
    p_sig = heads.predict_proba(heads.softmax_to_sigmoid(w), X)
    assert_allclose(p_sig, p_soft, name="p(y=1)", atol=1e-12)


@given(softmax_case(), st.sampled_from(["zero", "symmetric"]))
def test_round_trip_softmax_sigmoid_softmax_keeps_predictions(case, split):
    w, X = case
    back = heads.sigmoid_to_softmax(heads.softmax_to_sigmoid(w), split=split)
    assert_allclose(heads.predict_proba(back, X), heads.predict_proba(w, X), name="p(y=1)", atol=1e-12)
    # the difference w1 - w0 is what survives, exactly
    np.testing.assert_array_equal(heads.softmax_to_sigmoid(back).kernel, heads.softmax_to_sigmoid(w).kernel)


@given(softmax_case())
def test_canonical_torch_layout_round_trip_is_exact(case):
    w, _ = case
    weight, bias = heads.to_torch_layout(w)
    assert weight.shape == (2, w.n_features)
    back = heads.from_torch_layout(weight, bias)
    np.testing.assert_array_equal(back.kernel, w.kernel)
    np.testing.assert_array_equal(back.bias, w.bias)


def test_conversion_formula_is_w1_minus_w0():
    w = heads.Weights(np.array([[1.0, 4.0], [2.0, -1.0]]), np.array([0.5, 2.0]))
    s = heads.softmax_to_sigmoid(w)
    np.testing.assert_array_equal(s.kernel[:, 0], [3.0, -3.0])
    np.testing.assert_array_equal(s.bias, [1.5])
    sym = heads.sigmoid_to_softmax(s, "symmetric")
    np.testing.assert_array_equal(sym.kernel, [[-1.5, 1.5], [1.5, -1.5]])
    zero = heads.sigmoid_to_softmax(s, "zero")
    np.testing.assert_array_equal(zero.kernel[:, 0], [0.0, 0.0])


def test_wrong_conversion_is_caught():
    """Negative control: beta = w0 - w1 predicts 1 - p, far past the float64 tolerance (CONTROL_MARGIN x)."""
    from equivtest.compare import CONTROL_MARGIN

    rng = np.random.default_rng(0)
    w = heads.Weights(rng.normal(size=(16, 2)), rng.normal(size=2))
    X = rng.normal(size=(50, 16))
    wrong = heads.Weights(w.kernel[:, [0]] - w.kernel[:, [1]], w.bias[[0]] - w.bias[[1]])
    p, q = heads.predict_proba(w, X), heads.predict_proba(wrong, X)
    np.testing.assert_allclose(q, 1 - p, atol=1e-12)  # what the slip does: the classes swap
    assert np.max(np.abs(q - p)) > CONTROL_MARGIN * 1e-12


@pytest.mark.parametrize("d, softmax, sigmoid", [(1, 4, 2), (2, 6, 3), (64, 130, 65), (2048, 4098, 2049)])
def test_parameter_counts_halve(d, softmax, sigmoid):
    """Counted by hand: a (d, 2) kernel and 2 biases against a (d, 1) kernel and 1 bias."""
    assert heads.n_params("softmax", d) == softmax
    assert heads.n_params("sigmoid", d) == sigmoid


def test_the_factors_reproduce_one_sgd_step_with_decay_exactly():
    """One SGD step with decoupled decay from the derivations: the softmax step, mapped to beta, is the
    sigmoid's step at lr x lr_factor() and decay x weight_decay_factor() (float64, to rounding)."""
    bg = rand.generator(7)
    X, y = rand.normal(bg, (40, 6)), (rand.uniform(bg, 40) < 0.5).astype(np.float64)
    W, b = rand.normal(bg, (6, 2)), rand.normal(bg, 2)
    lr, wd = 0.1, 0.3
    p = 1 / (1 + np.exp(-(X @ (W[:, 1] - W[:, 0]) + b[1] - b[0])))
    g = (p - y) / len(y)
    G = np.stack([-(X.T @ g), X.T @ g], axis=1)  # dL/dw0 = -(p - y) x, dL/dw1 = (p - y) x
    W1 = W * (1 - lr * wd) - lr * G
    beta = W[:, 1] - W[:, 0]
    lr_s, wd_s = lr * heads.lr_factor(), wd * heads.weight_decay_factor()
    beta1 = beta * (1 - lr_s * wd_s) - lr_s * (X.T @ g)
    assert_allclose(W1[:, 1] - W1[:, 0], beta1, name="beta after one step", atol=1e-14)
    wrong = beta * (1 - lr * wd) - lr * (X.T @ g)  # the sigmoid at the softmax's rate and decay
    assert np.max(np.abs(wrong - beta1)) > 1e-3


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(ValueError, match="kernel"):
        heads.Weights(np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="sigmoid head"):
        heads.sigmoid_to_softmax(heads.Weights(np.zeros((3, 2)), np.zeros(2)))
    with pytest.raises(ValueError, match="unknown head"):
        heads.n_params("tanh", 3)
    with pytest.raises(ValueError, match="split"):
        heads.sigmoid_to_softmax(heads.Weights(np.zeros((3, 1)), np.zeros(1)), split="half")
