"""The one training helper of the suite (fixtures live in ``equivtest.suite.plugin``)."""

from __future__ import annotations

import pytest

from ..heads import softmax_to_sigmoid
from ..rules import sigmoid_plan


def train_pair(backend, plan, dataset, *, device="cpu", sig_plan=None, factor=None, softmax_init=None,
               masks="plan"):
    """The pair under a rule: (softmax at ``plan.lr``, sigmoid from the converted weights).

    The sigmoid runs under ``sig_plan``, by default :func:`~equivtest.rules.sigmoid_plan`
    (lr x ``factor``, 2 unless given; weight decay / 2).  ``softmax_init`` replaces
    the plan's Glorot init.  A configuration the registry declares the backend
    does not offer is a skip naming it (:func:`skip_if_declared_unsupported`);
    any other ``NotImplementedError`` fails the test.
    """
    w = softmax_init if softmax_init is not None else plan.initial_weights("softmax", dataset.n_features)
    sp = sig_plan if sig_plan is not None else sigmoid_plan(plan, factor)
    skip_if_declared_unsupported(backend.name, plan)
    skip_if_declared_unsupported(backend.name, sp)
    soft = backend.train("softmax", w, plan, dataset, device=device, masks=masks)
    sig = backend.train("sigmoid", softmax_to_sigmoid(w), sp, dataset, device=device, masks=masks)
    return soft, sig


def skip_if_declared_unsupported(name: str, plan, *, world_size: int = 1, network: bool = False) -> None:
    """Skip where (and only where) the registry declares that backend ``name`` does not offer an option of
    ``plan``: a skip then names the backend, the option and the reason."""
    from ..backends import refusal

    reason = refusal(name, plan, world_size=world_size, network=network)
    if reason:
        pytest.skip(reason)
