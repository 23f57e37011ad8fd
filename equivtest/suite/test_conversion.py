"""Conversion inside each framework, and weights moved between frameworks."""

import numpy as np
import pytest

from equivtest import backends
from equivtest.compare import CONTROL_MARGIN, PROBA_TOLERANCES, assert_allclose
from equivtest.heads import Weights, sigmoid_to_softmax, softmax_to_sigmoid
from equivtest.plan import Plan

from .tiers import FIRST

#: the fast tier runs this module's rules on one backend (the predictions of the converted head itself on every
#: backend); the slow tier on every selected one
pytestmark = pytest.mark.fast_cells(dict(backend=FIRST))

ATOL = PROBA_TOLERANCES["float32"]["atol"]  # 1e-6


def spread_weights(d, seed=0):
    """Softmax weights whose predictions spread over (0, 1), unlike a fresh init's."""
    rng = np.random.default_rng(seed)
    return Weights(rng.normal(0, 2 / np.sqrt(d), (d, 2)), rng.normal(0, 0.5, 2))


@pytest.mark.fast_cells(dict())  # every backend in the fast tier too: the claim itself, once per framework
def test_converted_sigmoid_predicts_like_softmax(backend, device, dataset):
    w = spread_weights(dataset.n_features)
    X = dataset.X_val
    p_soft = backend.predict_proba(w, X, device=device)
    assert 0.05 < p_soft.mean() < 0.95 and p_soft.std() > 0.05  # a non-trivial check
    p_sig = backend.predict_proba(softmax_to_sigmoid(w), X, device=device)
    assert_allclose(p_sig, p_soft, name=f"{backend.name} p(y=1) softmax vs converted sigmoid", atol=ATOL)


@pytest.mark.parametrize("split", ["zero", "symmetric"])
def test_sigmoid_to_softmax_predicts_the_same(backend, device, dataset, split):
    s = softmax_to_sigmoid(spread_weights(dataset.n_features, seed=1))
    p_sig = backend.predict_proba(s, dataset.X_val, device=device)
    p_soft = backend.predict_proba(sigmoid_to_softmax(s, split), dataset.X_val, device=device)
    assert_allclose(p_soft, p_sig, name=f"{backend.name} p(y=1) sigmoid vs converted softmax", atol=ATOL)


def _gap(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_negative_control_wrong_conversion_fails(backend, device, dataset, dtype):
    """beta = w0 - w1 (the classes swapped) predicts 1 - p: it misses by CONTROL_MARGIN x the tolerance."""
    if dtype == "float64" and not backend.supports_float64:
        pytest.skip(f"backend '{backend.name}' does not support float64")
    w = spread_weights(dataset.n_features)
    wrong = Weights(w.kernel[:, [0]] - w.kernel[:, [1]], w.bias[[0]] - w.bias[[1]])  # beta = w0 - w1
    p_soft = backend.predict_proba(w, dataset.X_val, device=device, dtype=dtype)
    p_wrong = backend.predict_proba(wrong, dataset.X_val, device=device, dtype=dtype)
    tol = PROBA_TOLERANCES[dtype]["atol"]
    assert _gap(p_wrong, p_soft) > CONTROL_MARGIN * tol, f"wrong conversion only {_gap(p_wrong, p_soft):.3g} off"


@pytest.mark.parametrize("split", ["zero", "symmetric"])
def test_negative_control_sigmoid_to_softmax_with_the_bias_left_out_fails(backend, device, dataset, split):
    """The reverse conversion must carry c: a softmax built from beta alone misses by the margin."""
    s = softmax_to_sigmoid(spread_weights(dataset.n_features, seed=1))
    p_sig = backend.predict_proba(s, dataset.X_val, device=device)
    w = sigmoid_to_softmax(s, split)
    no_bias = Weights(w.kernel, np.zeros_like(w.bias))
    assert _gap(backend.predict_proba(no_bias, dataset.X_val, device=device), p_sig) > CONTROL_MARGIN * ATOL


def test_float64_conversion_is_exact_to_1e_12(backend, device, dataset):
    if not backend.supports_float64:
        pytest.skip(f"backend '{backend.name}' does not support float64")
    w = spread_weights(dataset.n_features)
    p_soft = backend.predict_proba(w, dataset.X_val, device=device, dtype="float64")
    p_sig = backend.predict_proba(softmax_to_sigmoid(w), dataset.X_val, device=device, dtype="float64")
    assert_allclose(p_sig, p_soft, name="p(y=1) float64", atol=PROBA_TOLERANCES["float64"]["atol"])


@pytest.mark.needs_backends("torch", "keras")
@pytest.mark.parametrize("source, target", [("keras", "torch"), ("torch", "keras")])
def test_trained_weights_move_between_framework_layouts(dataset, source, target):
    """Train in one framework, read its weights at its edge, predict in the other."""
    src, dst = backends.get(source), backends.get(target)
    plan = Plan(epochs=1, batch_size=64, lr=0.05)
    for head in ("softmax", "sigmoid"):
        trained = src.train(head, plan.initial_weights(head, dataset.n_features), plan, dataset).weights
        p_src = src.predict_proba(trained, dataset.X_val)
        p_dst = dst.predict_proba(trained, dataset.X_val)
        assert_allclose(p_dst, p_src, name=f"{head} p(y=1) {source} -> {target}", atol=ATOL)
        # negative control: a layout slip, torch's (out, in) weight read as Keras's (in, out) kernel by a
        # reshape instead of a transpose (same shape, other numbers), misses by the margin; a one-logit
        # head has the same bytes in both layouts, so only the softmax can slip
        if head == "softmax":
            slipped = Weights(np.ascontiguousarray(trained.kernel.T).reshape(trained.kernel.shape), trained.bias)
            gap = _gap(dst.predict_proba(slipped, dataset.X_val), p_src)
            assert gap > CONTROL_MARGIN * ATOL, f"a transposed layout only {gap:.3g} off"
