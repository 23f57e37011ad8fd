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
    the plan's Glorot init.  A configuration the backend does not offer
    (``NotImplementedError``) is a skip naming it.
    """
    w = softmax_init if softmax_init is not None else plan.initial_weights("softmax", dataset.n_features)
    sp = sig_plan if sig_plan is not None else sigmoid_plan(plan, factor)
    try:
        soft = backend.train("softmax", w, plan, dataset, device=device, masks=masks)
        sig = backend.train("sigmoid", softmax_to_sigmoid(w), sp, dataset, device=device, masks=masks)
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    return soft, sig
