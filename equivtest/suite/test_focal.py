"""Focal losses as the frameworks ship them, and losses near saturation.

Binary focal (Keras ``BinaryFocalCrossentropy``, torchvision's ``sigmoid_focal_loss``)
balances classes with alpha for y = 1 and 1 - alpha for y = 0; categorical focal
(Keras ``CategoricalFocalCrossentropy``) multiplies every class by alpha.  Both
are -(1 - p_t)^gamma log p_t times that factor, a function of p(y | x), so the
rule lr x 2 holds for any gamma whenever the two factors agree per sample:
no alpha on either side, or alpha = 0.5 on both.  With alpha != 0.5 the factors
differ by class and no learning rate reconciles them.  With Keras's defaults
(categorical alpha 0.25, binary unbalanced) the softmax loss is 0.25 x the
sigmoid's: the paths coincide for SGD at sigmoid lr = 2 x 0.25 x lr, with
losses exactly 4x apart, and part at lr x 2.
"""

import functools

import numpy as np
import pytest

from equivtest.compare import (
    CONTROL_MARGIN,
    TOLERANCES,
    assert_allclose,
    assert_trajectories_close,
    assert_trajectories_differ,
)
from equivtest.heads import softmax_to_sigmoid
from equivtest.rules import best_lr_factor, sigmoid_plan

from .helpers import train_pair
from .tiers import FIRST

#: the fast tier runs this module on one backend; the slow tier on every selected one
pytestmark = pytest.mark.fast_cells(dict(backend=FIRST))

#: float32's machine epsilon, 2**-23: one ulp of 1.0, the rounding of a loss computed at that scale
FLOAT32_EPS = float(np.finfo(np.float32).eps)

TOL = TOLERANCES["float32"]


@pytest.mark.fast_cells(dict(backend=FIRST, gamma=2.0))  # RULES.md's two rows (no alpha; alpha 0.5) once
@pytest.mark.parametrize("gamma, alpha", [(0.0, None), (2.0, None), (5.0, None), (2.0, 0.5)])
def test_focal_holds_when_alpha_factors_agree(backend, device, dataset, plan, gamma, alpha):
    p = plan.replace(loss="focal", focal_gamma=gamma, focal_alpha=alpha, lr=3e-2)
    soft, sig = train_pair(backend, p, dataset, device=device)
    assert_trajectories_close(soft, sig, **TOL)
    # the control: the sigmoid at the softmax's rate (factor 1) parts by the margin
    _, slow = train_pair(backend, p, dataset, device=device, factor=1.0)
    assert_trajectories_differ(soft, slow, factor=CONTROL_MARGIN, **TOL)


@functools.cache
def _best_focal_factor(alpha: float, epsilon_convention: str, dataset):
    """The oracle's smallest softmax/sigmoid step-loss gap over every lr factor in 1/16..16 (float64)."""
    from equivtest.backends.numpy import Backend
    from equivtest.plan import Plan

    oracle = Backend(epsilon_convention=epsilon_convention)
    p = Plan(epochs=3, batch_size=64, lr=3e-2, optimizer="sgd", dropout=0.5, dtype="float64", loss="focal",
             focal_gamma=2.0, focal_alpha=alpha)
    w = p.initial_weights("softmax", dataset.n_features)
    soft = oracle.train("softmax", w, p, dataset)

    def gap(factor):
        sig = oracle.train("sigmoid", softmax_to_sigmoid(w), sigmoid_plan(p, factor), dataset)
        return float(np.max(np.abs(sig.step_loss - soft.step_loss)))

    factor, best, _ = best_lr_factor(gap, grid=13)
    return factor, best


@pytest.mark.fast_cells(dict(backend=FIRST, alpha=0.25))
@pytest.mark.parametrize("alpha", [0.25, 0.75])
def test_focal_breaks_with_class_balanced_alpha(backend, device, dataset, plan, alpha):
    """No learning-rate factor rescues it: the float64 oracle's minimum over the factor (a log grid over
    1/16..16, then a golden-section search) stays above CONTROL_MARGIN x the float32 tolerance, and the backend
    breaks at that best factor as well as at the rule's 2 and at 1."""
    factor, best = _best_focal_factor(alpha, backend.epsilon_convention, dataset)
    assert best > CONTROL_MARGIN * TOL["atol"], f"factor {factor:.4g} came within {best:.3g}"
    p = plan.replace(loss="focal", focal_gamma=2.0, focal_alpha=alpha, lr=3e-2)
    for f in (1.0, 2.0, factor):
        assert_trajectories_differ(*train_pair(backend, p, dataset, device=device, sig_plan=sigmoid_plan(p, f)), **TOL)


def test_focal_keras_defaults_scale_the_loss_by_alpha(backend, device, dataset, plan):
    """Categorical alpha 0.25 vs unbalanced binary: same path at sigmoid lr 2 x 0.25 x lr, losses 4x apart."""
    p = plan.replace(loss="focal", focal_gamma=2.0, focal_alpha=0.25, lr=3e-2)
    sig = sigmoid_plan(p, factor=2 * 0.25).replace(focal_alpha=None)
    soft, sg = train_pair(backend, p, dataset, device=device, sig_plan=sig)
    assert_allclose(4 * soft.step_loss, sg.step_loss, name="4 x softmax vs sigmoid step loss", atol=4 * TOL["atol"])
    np.testing.assert_array_equal(soft.val_accuracy, sg.val_accuracy)
    wrong = sigmoid_plan(p).replace(focal_alpha=None)  # the usual lr x 2
    soft, sg = train_pair(backend, p, dataset, device=device, sig_plan=wrong)
    assert not np.allclose(4 * soft.step_loss, sg.step_loss, atol=4 * TOL["atol"], rtol=0)


MARGINS = np.array([2, 8, 12, 14, 16, 17, 18, 20, 25, 30], dtype=np.float32)
EXACT = np.logaddexp(0, -MARGINS.astype(np.float64))  # -log p_t for logit margin m


def _torch_losses():
    import torch
    import torch.nn.functional as F

    m = torch.as_tensor(MARGINS)
    soft = F.cross_entropy(torch.stack([torch.zeros_like(m), m], 1), torch.ones(len(m), dtype=torch.long),
                           reduction="none").numpy()
    sig = F.binary_cross_entropy_with_logits(m, torch.ones_like(m), reduction="none").numpy()
    return soft, sig


def _keras_losses():
    from equivtest import backends

    backends.get("keras")  # Keras on TensorFlow, imported the project's way (before `import keras`)
    import keras
    zs = np.stack([np.zeros_like(MARGINS), MARGINS], 1)
    Y = np.stack([np.zeros_like(MARGINS), np.ones_like(MARGINS)], 1)
    y = np.ones((len(MARGINS), 1), np.float32)
    f = keras.ops.convert_to_numpy
    probs_soft = f(keras.activations.softmax(zs))
    probs_sig = f(keras.activations.sigmoid(MARGINS[:, None]))
    return {
        "prob_softmax": f(keras.losses.categorical_crossentropy(Y, probs_soft)),
        "prob_sigmoid": f(keras.losses.binary_crossentropy(y, probs_sig)),
        "logit_softmax": f(keras.losses.categorical_crossentropy(Y, zs, from_logits=True)),
        "logit_sigmoid": f(keras.losses.binary_crossentropy(y, MARGINS[:, None], from_logits=True)),
    }


def test_saturation_numpy_logit_forms_are_exact():
    from equivtest.backends.numpy.ops import loss_and_grad

    ones = np.ones(len(MARGINS), np.int64)
    z64 = MARGINS.astype(np.float64)
    soft = [loss_and_grad("softmax", np.array([[0.0, m]]), ones[:1], ones[:1].astype(float), None, grad=False)[0]
            for m in z64]
    sig = [loss_and_grad("sigmoid", np.array([[m]]), ones[:1], ones[:1].astype(float), None, grad=False)[0]
           for m in z64]
    # the oracle computes log p without cancellation for both heads: relatively exact at every margin
    assert_allclose(soft, EXACT, name="numpy softmax -log p", rtol=1e-12)
    assert_allclose(sig, EXACT, name="numpy sigmoid -log p", rtol=1e-12)


@pytest.mark.needs_backends("torch")
def test_saturation_torch_float32():
    """torch's logit forms: softplus stays exact; float32 log_softmax loses the tail past margin ~17."""
    soft, sig = _torch_losses()
    assert_allclose(sig, EXACT, name="torch BCE-with-logits", rtol=1e-5)
    # absolute: float32 log-softmax is z - logsumexp(z), both rounded at the scale of 1.0, so its error is at most
    # float32's machine epsilon 2**-23 = 1.19e-7 (far below the 1e-5 training tolerance)
    assert np.all(np.abs(soft - EXACT) <= FLOAT32_EPS)
    assert soft[MARGINS >= 18].max() == 0.0  # relative: the softmax head's loss underflows to 0 ...
    assert sig[MARGINS >= 18].min() > 0  # ... where the sigmoid head's does not


@pytest.mark.needs_backends("keras")
def test_saturation_keras_probability_forms_clip_logit_forms_do_not():
    """Keras (TensorFlow): losses on probabilities clip at epsilon = 1e-7, so both heads floor at
    -log(float32(1 - 1e-7)) = 1.19e-7 from margin ~16 on; from logits, the sigmoid's loss stays exact and
    the softmax's drops to 0 (float32 log-softmax).  Inside ``fit`` Keras on TensorFlow reads the
    logits behind a softmax/sigmoid output, so training sees the logit forms."""
    k = _keras_losses()
    floor = -np.log(np.float32(1 - 1e-7))  # 1 - 1e-7 rounds to 1 - 1.19e-7 in float32
    sat = MARGINS >= 16
    assert_allclose(k["prob_softmax"][sat], np.full(sat.sum(), floor), name="clipped softmax", rtol=1e-3)
    assert_allclose(k["prob_sigmoid"][sat], np.full(sat.sum(), floor), name="clipped sigmoid", rtol=1e-3)
    assert np.all(k["prob_softmax"][MARGINS >= 18] > 5 * EXACT[MARGINS >= 18])  # parted from the truth
    assert_allclose(k["logit_sigmoid"], EXACT, name="keras BCE from logits", rtol=1e-5)
    assert np.all(np.abs(k["logit_softmax"] - EXACT) <= FLOAT32_EPS)  # as for torch, z - logsumexp(z)
    # below saturation the loss on a probability is -log(p) with p rounded to float32 near 1 (an absolute error of
    # half an ulp of 1.0) and clipped at 1e-7: absolute error at most the machine epsilon as well
    assert np.all(np.abs(k["prob_softmax"][~sat] - EXACT[~sat]) <= FLOAT32_EPS)
