"""The NumPy reference backend: closed-form gradients, float64 by default; the oracle.

Losses, for logits z of one batch of size B (mean over the batch):

- softmax: ``L = mean(lse(z) - z_y)`` with ``lse`` the stable log-sum-exp;
  ``dL/dz = (softmax(z) - onehot(y)) / B``.
- sigmoid: ``L = mean(softplus(z) - y z)`` (= binary cross-entropy on logits);
  ``dL/dz = (sigmoid(z) - y) / B``.

Optimizers follow PyTorch's update equations (Keras's are the same maps written
differently, except Adam's epsilon, which Keras adds before bias correction):

- SGD: ``w -= lr g``; momentum ``buf = mu buf + g``; plain ``w -= lr buf``;
  Nesterov ``w -= lr (g + mu buf)``.
- Adam: ``m, v`` moving averages; ``w -= lr m_hat / (sqrt(v_hat) + eps)``
  (``epsilon_convention="torch"``) or, as Keras writes it,
  ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)`` (``"keras"``).
  AdamW: the same after ``w -= lr wd w``.
- RMSprop: ``v = rho v + (1 - rho) g^2``; ``w -= lr g / (sqrt(v) + eps)``
  (torch) or ``lr g / sqrt(v + eps)`` (Keras).
- Adagrad: ``acc = acc0 + sum g^2``; ``w -= lr g / (sqrt(acc) + eps)`` (torch) or
  ``lr g / sqrt(acc + eps)`` (Keras).
- Weight decay: coupled adds ``wd w`` to the gradient; decoupled does
  ``w -= lr wd w`` before the update.

The frameworks differ only by where epsilon enters; :func:`reference_for`
picks the convention a framework backend uses, so cross-framework checks
compare like with like.
"""

from __future__ import annotations

import numpy as np

from ..heads import SOFTMAX, UNITS, Weights, check_head, hits, sigmoid, sigmoid_coordinates
from ..heads import predict_proba as _predict_proba
from ..plan import Optimizer, Plan
from ..trajectory import Trajectory
from ._base import BaseBackend, all_finite, batch_sizes, check_finite, epoch_logs


class Backend(BaseBackend):
    name = "numpy"
    framework = "numpy"

    def __init__(self, epsilon_convention: str = "torch"):
        if epsilon_convention not in ("torch", "keras"):
            raise ValueError(f"epsilon_convention must be 'torch' or 'keras', got {epsilon_convention!r}")
        self._epsilon_convention = epsilon_convention

    @property
    def epsilon_convention(self) -> str:
        """The oracle follows either framework's convention, chosen per instance (``reference_for``)."""
        return self._epsilon_convention

    def version(self) -> str:
        return np.__version__

    def count_params(self, head: str, d: int) -> int:
        """The elements of the arrays this backend trains (as :meth:`train` allocates them)."""
        k = UNITS[check_head(head)]
        return sum(p.size for p in _parameters(Weights(np.zeros((d, k)), np.zeros(k)), np.float64))

    def predict_proba(self, weights: Weights, X, *, device="cpu", dtype="float32"):
        self.resolve_device(device)
        return _predict_proba(weights.astype(dtype), np.asarray(X, dtype=dtype))

    def count_network_params(self, network, head: str) -> int:
        """The elements of the arrays the oracle trains for ``network`` with ``head``."""
        from ..plan import Plan

        k = UNITS[check_head(head)]
        body = sum(w.size + b.size for w, b in Plan().body_weights(network))
        return body + sum(p.size for p in _parameters(Weights(np.zeros((network.width, k)), np.zeros(k)), np.float64))

    def train_network(self, network, head, body_init, head_init, plan, data, *, rates, device="cpu"):
        from .numpy_network import train_network

        self.resolve_device(device)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # check_finite reports
            return train_network(self, network, head, body_init, head_init, plan, data, rates)

    def train(self, head, init, plan: Plan, data, *, device="cpu", masks="plan", callback=None,
              record_history=False) -> Trajectory:
        # overflow is caught by check_finite at the step it appears, not reported as a NumPy warning
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._train(head, init, plan, data, device, masks, callback, record_history)

    def _train(self, head, init, plan: Plan, data, device, masks, callback, record_history) -> Trajectory:
        self._check_train_args(head, init, plan, data, masks)
        device = self.resolve_device(device)
        dt = np.dtype(plan.dtype)
        X = data.features("train", plan.dtype)
        Xv = data.features("val", plan.dtype)
        y = data.y_train
        T, W = plan.targets(y), plan.sample_weights(y)  # smoothed targets, class weights
        if plan.loss == "focal":  # the focal alpha factor is one more per-sample weight
            fa = plan.focal_weights(head, y)
            W = fa if W is None else W * fa
        gamma = plan.focal_gamma if plan.loss == "focal" else None
        Tv = plan.targets(data.y_val)
        n, d = X.shape
        K, b = _parameters(init, dt)
        opt = _Optimizer(plan.optimizer, plan.lr, [K, b], self.epsilon_convention)
        scale = dt.type(plan.mask_scale)
        mask_plan = plan if masks == "plan" else plan.replace(mask_stream=plan.native_seed)
        bounds = plan.batch_bounds(n)
        sizes = batch_sizes(plan, n)
        buf = np.empty((plan.batch_size, d), dtype=dt)

        losses, correct = [], []
        val_loss, val_acc = [], []
        history = [] if record_history else None
        for epoch in range(plan.epochs):
            order = plan.batch_order(epoch, n)
            m = mask_plan.epoch_masks(epoch, n, d)
            for s, t in bounds:
                idx = order[s:t]
                xb = np.take(X, idx, axis=0, out=buf[: t - s])
                if m is not None:  # x * scale where kept, else 0 (in place, no temporaries)
                    xb *= scale
                    xb *= m[s:t]
                loss, n_right, gz = _loss_and_grad(head, xb @ K + b, y[idx], T[idx],
                                                   None if W is None else W[idx], gamma=gamma)
                if not np.isfinite(loss):
                    check_finite(self.name, head, [loss], len(losses))
                losses.append(loss)
                correct.append(n_right)
                opt.step([xb.T @ gz, gz.sum(axis=0)])
                if history is not None:
                    history.append(sigmoid_coordinates(K, b))
            check_finite(self.name, head, [], len(losses), all_finite(K, b))
            Wv = plan.focal_weights(head, data.y_val) if gamma is not None else None
            vl, vr, _ = _loss_and_grad(head, Xv @ K + b, data.y_val, Tv, Wv, grad=False, gamma=gamma)
            val_loss.append(vl)
            val_acc.append(vr / len(data.y_val))
            if callback is not None:
                k = len(bounds)
                callback(epoch, epoch_logs(losses[-k:], correct[-k:], sizes[:k], vl, val_acc[-1]))
        return Trajectory.from_steps(
            losses, correct, sizes, len(bounds), val_loss, val_acc,
            Weights(K, b), self._meta(head, plan, data, device, masks),
            history=None if history is None else np.asarray(history),
        )


def _parameters(init: Weights, dtype) -> list[np.ndarray]:
    """The arrays the oracle trains: the kernel (d, k) and the bias (k,), copied from ``init``."""
    return [init.kernel.astype(dtype, copy=True), init.bias.astype(dtype, copy=True)]


def reference_for(backend) -> Backend:
    """The float64 oracle for ``backend``: a NumPy backend with its Adam epsilon convention."""
    return Backend(epsilon_convention=getattr(backend, "epsilon_convention", "torch"))


def _focal_and_grad(head: str, z: np.ndarray, y: np.ndarray, gamma: float):
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


def _loss_and_grad(head: str, z: np.ndarray, y: np.ndarray, t: np.ndarray, w: np.ndarray | None,
                   grad: bool = True, gamma: float | None = None):
    """(mean loss, number correct, dL/dz) for logits ``z`` of one batch.

    ``t``: p(y=1) targets (label-smoothed), ``w``: per-sample weights or None;
    the loss is sum(w_i L_i) / B (Keras's sum_over_batch_size).  ``gamma``:
    focal loss instead of cross-entropy (``t`` is then the hard label).
    """
    B = z.shape[0]
    if gamma is not None:
        per, g = _focal_and_grad(head, z, y, gamma)
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


class _Optimizer:
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
