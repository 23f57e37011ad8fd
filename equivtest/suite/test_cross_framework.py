"""Each framework against the NumPy float64 oracle, and torch against keras."""

import pytest

from equivtest import backends
from equivtest.compare import TOLERANCES, assert_trajectories_close, assert_trajectories_differ
from equivtest.plan import Optimizer

from .tiers import FIRST

TOL = TOLERANCES["float32"]


@pytest.mark.fast_cells(dict(backend=FIRST), dict(optimizer="adam"))  # every backend's Adam once
@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_matches_float64_reference(backend, device, dataset, plan, reference, head, optimizer):
    p = plan.replace(optimizer=optimizer, lr=1e-3 if optimizer == "adam" else plan.lr)
    w = p.initial_weights(head, dataset.n_features)
    got = backend.train(head, w, p, dataset, device=device)
    ref = reference(backend).train(head, w, p.replace(dtype="float64"), dataset)
    assert_trajectories_close(got, ref, **TOL)


def test_negative_control_other_masks_split_from_reference(backend, device, dataset, plan, reference):
    w = plan.initial_weights("softmax", dataset.n_features)
    got = backend.train("softmax", w, plan.replace(mask_stream=1), dataset, device=device)
    ref = reference(backend).train("softmax", w, plan.replace(dtype="float64"), dataset)
    assert_trajectories_differ(got, ref, **TOL)


@pytest.mark.needs_backends("torch", "keras")
@pytest.mark.fast_cells(dict(optimizer="adam", head="softmax"))
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_torch_vs_keras(dataset, plan, head, optimizer):
    """Same head, plan and initial weights in both frameworks.

    PyTorch adds Adam's epsilon after bias correction and Keras before it (see
    ``equivtest.backends.numpy``); at epsilon 1e-7 that alone moves the loss by
    about 1e-5, so Adam is compared at epsilon 1e-10, where the two definitions
    coincide to float32 precision.  Each framework's own convention is checked
    against the oracle in ``test_matches_float64_reference``.
    """
    opt = Optimizer("adam", epsilon=1e-10) if optimizer == "adam" else optimizer
    p = plan.replace(optimizer=opt, lr=1e-3 if optimizer == "adam" else plan.lr)
    w = p.initial_weights(head, dataset.n_features)
    t = backends.get("torch").train(head, w, p, dataset)
    k = backends.get("keras").train(head, w, p, dataset)
    assert_trajectories_close(t, k, **TOL)
