"""The PyTorch losses as a PyTorch user writes them, and the dtypes: shared by the head
(:mod:`equivtest.backends.torch`), whole networks (:mod:`equivtest.backends.torch.network`) and the
data-parallel ranks (:mod:`equivtest.parallel`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...heads import SOFTMAX
from ...plan import Plan

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def loss_fn(head: str, plan: Plan):
    """The batch loss as a PyTorch user writes it; per-sample weights give sum(w l) / B."""
    label_smoothing = plan.label_smoothing
    if plan.loss == "focal":
        return focal_fn(head, plan.focal_gamma, plan.focal_alpha)
    if head == SOFTMAX:
        def loss(z, y, w):
            if w is None:
                return F.cross_entropy(z, y, label_smoothing=label_smoothing)
            return (F.cross_entropy(z, y, label_smoothing=label_smoothing, reduction="none") * w).mean()
    else:
        def loss(z, t, w):  # t: already smoothed p(y=1) targets
            return F.binary_cross_entropy_with_logits(z[:, 0], t, weight=w)  # weight: w_i l_i, mean over B
    return loss


def focal_fn(head: str, gamma: float, alpha: float | None):
    """Focal losses written in torch: torchvision's ``sigmoid_focal_loss`` for the sigmoid head,
    Keras's categorical focal definition (alpha on every class) on log_softmax for the softmax head."""
    if head == SOFTMAX:
        def loss(z, y, w):
            logp_t = F.log_softmax(z, dim=1).gather(1, y[:, None])[:, 0]
            per = -((1 - logp_t.exp()) ** gamma) * logp_t
            if alpha is not None:
                per = alpha * per
            return (per if w is None else per * w).mean()
    else:
        def loss(z, t, w):  # torchvision.ops.sigmoid_focal_loss, reduction="mean"
            x = z[:, 0]
            p = torch.sigmoid(x)
            ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            p_t = p * t + (1 - p) * (1 - t)
            per = ce * ((1 - p_t) ** gamma)
            if alpha is not None:
                per = (alpha * t + (1 - alpha) * (1 - t)) * per
            return (per if w is None else per * w).mean()
    return loss
