"""Transfer rules beyond the seed, in every backend: where the equivalence holds, and where it breaks.

Each "holds" test has a "breaks" counterpart asserting the failure, so a
framework change that alters either is noticed.  The table in RULES.md names
these tests cell by cell.
"""

import numpy as np
import pytest

from equivtest.compare import TOLERANCES, assert_trajectories_close, assert_trajectories_differ
from equivtest.heads import sigmoid_to_softmax, softmax_to_sigmoid
from equivtest.plan import Optimizer
from equivtest.rules import sigmoid_plan

from .helpers import train_pair
from .tiers import FIRST

#: the fast tier runs this module on one backend in float32 (float64 cells check the same rules at another
#: precision: the slow tier); the slow tier on every selected one
pytestmark = pytest.mark.fast_cells(dict(backend=FIRST, dtype="float32"))

TOL = TOLERANCES["float32"]
DTYPES = pytest.mark.parametrize("dtype", ["float32", "float64"])


def _dtype(backend, plan, dtype):
    if dtype == "float64" and not backend.supports_float64:
        pytest.skip(f"backend '{backend.name}' does not support float64")
    return plan.replace(dtype=dtype)


@pytest.mark.parametrize("optimizer, lr", [("rmsprop", 1e-3), ("adagrad", 1e-2), ("adamw", 1e-3)])
@DTYPES
def test_adaptive_optimizers_lr_x2(backend, device, dataset, plan, optimizer, lr, dtype):
    plan = _dtype(backend, plan, dtype)
    p = plan.replace(optimizer=optimizer, lr=lr)
    assert_trajectories_close(*train_pair(backend, p, dataset, device=device), **TOLERANCES[p.dtype])


@pytest.mark.parametrize("optimizer, lr", [("rmsprop", 1e-3), ("adagrad", 1e-2), ("adamw", 1e-3)])
def test_adaptive_optimizers_break_at_the_same_lr(backend, device, dataset, plan, optimizer, lr):
    p = plan.replace(optimizer=optimizer, lr=lr)
    assert_trajectories_differ(*train_pair(backend, p, dataset, device=device, sig_plan=sigmoid_plan(p, factor=1.0)), **TOL)


COUPLED = {
    "sgd+l2": (Optimizer("sgd", weight_decay=0.05), 1e-2),
    "momentum+l2": (Optimizer("sgd", momentum=0.9, weight_decay=0.05), 1e-2),
}
DECOUPLED = {
    "adamw": (Optimizer("adamw", weight_decay=0.5, decay="decoupled"), 1e-3),  # lr x wd per step: 5e-4
    "sgd+wd": (Optimizer("sgd", weight_decay=0.05, decay="decoupled"), 1e-2),
}


@pytest.mark.parametrize("case", list(COUPLED) + list(DECOUPLED))
@DTYPES
def test_weight_decay_lr_x2_decay_half(backend, device, dataset, plan, case, dtype):
    plan = _dtype(backend, plan, dtype)
    opt, lr = {**COUPLED, **DECOUPLED}[case]
    p = plan.replace(optimizer=opt, lr=lr)
    assert_trajectories_close(*train_pair(backend, p, dataset, device=device), **TOLERANCES[p.dtype])


@pytest.mark.parametrize("case", list(COUPLED) + list(DECOUPLED))
def test_weight_decay_breaks_without_halving(backend, device, dataset, plan, case):
    opt, lr = {**COUPLED, **DECOUPLED}[case]
    p = plan.replace(optimizer=opt, lr=lr)
    wrong = p.replace(lr=2 * lr)  # lr x 2 but the same decay: decays beta twice as fast
    assert_trajectories_differ(*train_pair(backend, p, dataset, device=device, sig_plan=wrong), **TOL)


@DTYPES
def test_adam_coupled_l2_holds_from_a_zero_null_space_component(backend, device, dataset, plan, dtype):
    plan = _dtype(backend, plan, dtype)
    p = plan.replace(optimizer=Optimizer("adam", weight_decay=0.05), lr=1e-3)
    w = sigmoid_to_softmax(softmax_to_sigmoid(p.initial_weights("softmax", dataset.n_features)), "symmetric")
    np.testing.assert_array_equal(w.kernel[:, 0] + w.kernel[:, 1], 0)
    assert_trajectories_close(*train_pair(backend, p, dataset, device=device, softmax_init=w), **TOLERANCES[p.dtype])


def test_adam_coupled_l2_breaks_from_a_glorot_init(backend, device, dataset, plan):
    """w0 + w1 != 0: the L2 terms make g0 != -g1, and Adam normalises them apart."""
    p = plan.replace(optimizer=Optimizer("adam", weight_decay=0.05), lr=1e-3)
    assert_trajectories_differ(*train_pair(backend, p, dataset, device=device), **TOL)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
@DTYPES
def test_label_smoothing_same_epsilon(backend, device, dataset, plan, smoothing, dtype):
    plan = _dtype(backend, plan, dtype)
    p = plan.replace(label_smoothing=smoothing)
    assert_trajectories_close(*train_pair(backend, p, dataset, device=device), **TOLERANCES[p.dtype])


def test_label_smoothing_breaks_with_another_epsilon(backend, device, dataset, plan):
    p = plan.replace(label_smoothing=0.2)
    wrong = sigmoid_plan(p).replace(label_smoothing=0.1)  # "e / K" mistaken for the sigmoid's e
    assert_trajectories_differ(*train_pair(backend, p, dataset, device=device, sig_plan=wrong), **TOL)


@DTYPES
def test_class_weights_same_weights(backend, device, dataset, plan, dtype):
    plan = _dtype(backend, plan, dtype)
    p = plan.replace(class_weight=(1.0, 3.0))
    soft, sig = train_pair(backend, p, dataset, device=device)
    assert_trajectories_close(soft, sig, **TOLERANCES[p.dtype])
    unweighted = backend.train("softmax", p.initial_weights("softmax", dataset.n_features),
                               p.replace(class_weight=None), dataset, device=device)
    assert_trajectories_differ(soft, unweighted, **TOL)  # the weights were applied


def test_class_weights_break_when_swapped(backend, device, dataset, plan):
    p = plan.replace(class_weight=(1.0, 3.0))
    assert_trajectories_differ(*train_pair(backend, p, dataset, device=device, sig_plan=sigmoid_plan(p).replace(
        class_weight=(3.0, 1.0))), **TOL)


@pytest.mark.needs_backends("torch")
def test_torch_class_weight_arguments_normalise_differently():
    """PyTorch's natural class-weight arguments break the equivalence.

    ``F.cross_entropy(weight=w)`` is a weighted *mean*, sum(w l) / sum(w), while
    ``F.binary_cross_entropy_with_logits(weight=w[y])`` is sum(w l) / B.  Their
    ratio, B / sum(w_y), changes from batch to batch, so no learning-rate factor
    can make the paths coincide.  (equivtest's torch backend uses sum(w l) / B for
    both heads, Keras's definition.)
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    cw = torch.tensor([1.0, 3.0])
    ratios = []
    for _ in range(3):
        z = torch.randn(64, 2, generator=g)
        y = torch.randint(0, 2, (64,), generator=g)
        soft = F.cross_entropy(z, y, weight=cw)
        sig = F.binary_cross_entropy_with_logits(z[:, 1] - z[:, 0], y.float(), weight=cw[y])
        ratios.append(float(sig / soft))
        assert ratios[-1] == pytest.approx(float(cw[y].sum()) / 64, rel=1e-5)
    assert max(ratios) - min(ratios) > 1e-3, "the ratio must vary between batches"
