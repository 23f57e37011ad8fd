"""Small helpers shared by the tests (not fixtures: those live in the plugin)."""

from __future__ import annotations

from equivtest.heads import softmax_to_sigmoid


def seed_trio(backend, plan, dataset, device="cpu", factor=2.0, masks="plan"):
    """Softmax at lr, sigmoid from converted weights at factor*lr: the seed's pair."""
    w = plan.initial_weights("softmax", dataset.n_features)
    soft = backend.train("softmax", w, plan, dataset, device=device, masks=masks)
    sig = backend.train("sigmoid", softmax_to_sigmoid(w), plan.replace(lr=factor * plan.lr), dataset,
                        device=device, masks=masks)
    return w, soft, sig
