"""The oracle's arithmetic: losses with closed-form gradients and the optimizers' update equations.

Shared by the head (:mod:`equivtest.backends.numpy`) and whole networks
(:mod:`equivtest.backends.numpy.network`); the equations are in
:mod:`equivtest.backends.numpy`'s docstring.
"""

from __future__ import annotations

import numpy as np

from ...heads import SOFTMAX, hits, sigmoid
from ...plan import Optimizer


def focal_and_grad(head: str, z: np.ndarray, y: np.ndarray, gamma: float):
    """Per-sample focal loss -(1 - p_t)^gamma log p_t and its gradient w.r.t. the logits.

    With u the logit margin of the true class (p_t = sigmoid(u); u = +-z for the
    sigmoid head, z_y - z_other for the softmax head):
    dL/du = (1 - p_t)^gamma (gamma p_t log p_t - (1 - p_t)).
    """
    s = np.where(y == 1, 1.0, -1.0)
    u = s * z[:, 0] if head != SOFTMAX else (z[:, 1] - z[:, 0]) * s
    log_pt = -np.logaddexp(0, -u)
    pt = np.exp(log_pt)
    q = -np.expm1(log_pt)  # 1 - p_t, accurate near p_t = 1
    per = -(q ** gamma) * log_pt
    du = (q ** gamma) * (gamma * pt * log_pt - q)
    if head == SOFTMAX:  # u = s (z1 - z0)
        g = np.stack([-s * du, s * du], axis=1)
    else:
        g = (s * du)[:, None]
    return per, g


def weights_and_gamma(plan, head: str, y: np.ndarray) -> tuple[np.ndarray | None, float | None]:
    """The per-sample loss weights of rows labelled ``y`` (class weights, times the focal alpha factor) and
    the focal gamma (None for cross-entropy): what the head's and the network's loops both pass on."""
    w = plan.sample_weights(y)
    if plan.loss == "focal":  # the focal alpha factor is one more per-sample weight
        fa = plan.focal_weights(head, y)
        w = fa if w is None else w * fa
    return w, (plan.focal_gamma if plan.loss == "focal" else None)


def loss_and_grad(head: str, z: np.ndarray, y: np.ndarray, t: np.ndarray, w: np.ndarray | None,
                   grad: bool = True, gamma: float | None = None):
    """(mean loss, number correct, dL/dz) for logits ``z`` of one batch.

    ``t``: p(y=1) targets (label-smoothed), ``w``: per-sample weights or None;
    the loss is sum(w_i L_i) / B (Keras's sum_over_batch_size).  ``gamma``:
    focal loss instead of cross-entropy (``t`` is then the hard label).
    """
    B = z.shape[0]
    if gamma is not None:
        per, g = focal_and_grad(head, z, y, gamma)
        right = int(np.sum(hits(head, z, y)))
        if w is not None:
            per, g = per * w, g * w[:, None]
        return float(np.mean(per)), right, ((g / B).astype(z.dtype, copy=False) if grad else None)
    if head == SOFTMAX:
        # log-softmax without cancellation: log p_c = (z_c - zmax) - log1p(sum of the other e^(z - zmax))
        top = np.argmax(z, axis=1)
        e = np.exp(z - z[np.arange(B), top][:, None])
        e_rest = e.copy()
        e_rest[np.arange(B), top] = 0.0
        log_norm = np.log1p(e_rest.sum(axis=1))
        logp = (z - z[np.arange(B), top][:, None]) - log_norm[:, None]
        per = -(t * logp[:, 1] + (1 - t) * logp[:, 0])
        right = int(np.sum(hits(head, z, y)))
        g = np.exp(logp) if grad else None
        if grad:
            g[:, 0] -= 1 - t
            g[:, 1] -= t
    else:
        zz = z[:, 0]
        per = np.maximum(zz, 0) - t * zz + np.log1p(np.exp(-np.abs(zz)))  # stable BCE on logits
        right = int(np.sum(hits(head, z, y)))
        g = (sigmoid(zz) - t)[:, None] if grad else None
    if w is not None:
        per = per * w
        if grad:
            g = g * w[:, None]
    loss = float(np.mean(per))
    if not grad:
        return loss, right, None
    return loss, right, (g / B).astype(z.dtype, copy=False)


class OptimizerState:
    """In-place updates of a list of arrays, PyTorch's equations (module docstring)."""

    def __init__(self, spec: Optimizer, lr: float, params, epsilon_convention: str = "torch"):
        self.spec, self.lr, self.params = spec, lr, params
        self.epsilon_convention = epsilon_convention
        self.t = 0
        self.state = [np.zeros_like(p) for p in params]
        self.state2 = [np.zeros_like(p) for p in params]

    def step(self, grads):
        s, lr = self.spec, self.lr
        self.t += 1
        keras = self.epsilon_convention == "keras"
        for p, g, a, v in zip(self.params, grads, self.state, self.state2):
            g = g.astype(p.dtype, copy=False)
            if s.weight_decay and s.decay == "coupled":
                g = g + s.weight_decay * p  # L2: wd * w added to the gradient
            elif s.weight_decay:
                p -= (lr * s.weight_decay) * p  # decoupled, before the update (AdamW, Keras)
            if s.name == "sgd":
                if s.momentum:
                    a *= s.momentum
                    a += g
                    g = g + s.momentum * a if s.nesterov else a
                p -= lr * g
            elif s.name in ("adam", "adamw"):
                a *= s.beta_1
                a += (1 - s.beta_1) * g
                v *= s.beta_2
                v += (1 - s.beta_2) * g * g
                bc1, bc2 = 1 - s.beta_1 ** self.t, 1 - s.beta_2 ** self.t
                if keras:
                    p -= (lr * np.sqrt(bc2) / bc1) * a / (np.sqrt(v) + s.epsilon)
                else:
                    p -= lr * (a / bc1) / (np.sqrt(v / bc2) + s.epsilon)
            elif s.name == "rmsprop":
                v *= s.rho
                v += (1 - s.rho) * g * g
                p -= lr * g / (np.sqrt(v + s.epsilon) if keras else np.sqrt(v) + s.epsilon)
            elif s.name == "adagrad":
                if self.t == 1:
                    v += s.initial_accumulator
                v += g * g
                p -= lr * g / (np.sqrt(v + s.epsilon) if keras else np.sqrt(v) + s.epsilon)
            else:  # pragma: no cover - Optimizer validates names
                raise NotImplementedError(f"backend 'numpy' has no optimizer {s.name!r}")
