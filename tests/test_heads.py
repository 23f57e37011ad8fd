"""Heads and transfer rules in pure NumPy: conversion, layouts, counts, factors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from equivtest import heads
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
    """Negative control: beta = w0 - w1 must fail the same check."""
    rng = np.random.default_rng(0)
    w = heads.Weights(rng.normal(size=(16, 2)), rng.normal(size=2))
    X = rng.normal(size=(50, 16))
    wrong = heads.Weights(w.kernel[:, [0]] - w.kernel[:, [1]], w.bias[[0]] - w.bias[[1]])
    with pytest.raises(AssertionError, match="p\\(y=1\\)"):
        assert_allclose(heads.predict_proba(wrong, X), heads.predict_proba(w, X), name="p(y=1)", atol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 64, 2048])
def test_parameter_counts_halve(d):
    assert heads.n_params("softmax", d) == 2 * (d + 1)
    assert heads.n_params("sigmoid", d) == d + 1
    assert heads.n_params("softmax", d) / heads.n_params("sigmoid", d) == 2


def test_factors_and_their_derivations_are_documented():
    assert heads.lr_factor() == 2.0
    assert heads.weight_decay_factor() == 0.5
    assert "2 eta" in heads.lr_factor.__doc__
    assert "lambda / 2" in heads.weight_decay_factor.__doc__


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(ValueError, match="kernel"):
        heads.Weights(np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="sigmoid head"):
        heads.sigmoid_to_softmax(heads.Weights(np.zeros((3, 2)), np.zeros(2)))
    with pytest.raises(ValueError, match="unknown head"):
        heads.n_params("tanh", 3)
    with pytest.raises(ValueError, match="split"):
        heads.sigmoid_to_softmax(heads.Weights(np.zeros((3, 1)), np.zeros(1)), split="half")
