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
  (``adam_epsilon="torch"``) or, as Keras writes it,
  ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)`` (``"keras"``).
  The two differ only by where epsilon enters; :func:`reference_for` picks the one
  a framework backend uses, so cross-framework checks compare like with like.
"""

from __future__ import annotations

import numpy as np

from ..heads import SOFTMAX, Weights, n_params
from ..heads import predict_proba as _predict_proba
from ..plan import Optimizer, Plan
from ..trajectory import Trajectory
from ._base import BaseBackend, batch_sizes, epoch_logs


class Backend(BaseBackend):
    name = "numpy"
    framework = "numpy"
    supports_float64 = True

    def __init__(self, adam_epsilon: str = "torch"):
        if adam_epsilon not in ("torch", "keras"):
            raise ValueError(f"adam_epsilon must be 'torch' or 'keras', got {adam_epsilon!r}")
        self.adam_epsilon = adam_epsilon

    def version(self) -> str:
        return np.__version__

    def count_params(self, head: str, d: int) -> int:
        return n_params(head, d)

    def predict_proba(self, weights: Weights, X, *, device="cpu", dtype="float32"):
        self.resolve_device(device)
        return _predict_proba(weights.astype(dtype), np.asarray(X, dtype=dtype))

    def train(self, head, init, plan: Plan, data, *, device="cpu", masks="plan", callback=None) -> Trajectory:
        self._check_train_args(head, init, plan, data, masks)
        device = self.resolve_device(device)
        dt = np.dtype(plan.dtype)
        X = data.features("train", plan.dtype)
        Xv = data.features("val", plan.dtype)
        y = data.y_train
        n, d = X.shape
        K = init.kernel.astype(dt, copy=True)
        b = init.bias.astype(dt, copy=True)
        opt = _Optimizer(plan.optimizer, plan.lr, [K, b], self.adam_epsilon)
        scale = dt.type(plan.mask_scale)
        mask_plan = plan if masks == "plan" else plan.replace(mask_stream=plan.mask_stream + 1_000_003)
        bounds = plan.batch_bounds(n)
        sizes = batch_sizes(plan, n)
        buf = np.empty((plan.batch_size, d), dtype=dt)

        losses, correct = [], []
        val_loss, val_acc = [], []
        for epoch in range(plan.epochs):
            order = plan.batch_order(epoch, n)
            m = mask_plan.epoch_masks(epoch, n, d)
            for s, t in bounds:
                idx = order[s:t]
                xb = np.take(X, idx, axis=0, out=buf[: t - s])
                if m is not None:  # x * scale where kept, else 0 (in place, no temporaries)
                    xb *= scale
                    xb *= m[s:t]
                loss, n_right, gz = _loss_and_grad(head, xb @ K + b, y[idx])
                losses.append(loss)
                correct.append(n_right)
                opt.step([xb.T @ gz, gz.sum(axis=0)])
            vl, vr, _ = _loss_and_grad(head, Xv @ K + b, data.y_val, grad=False)
            val_loss.append(vl)
            val_acc.append(vr / len(data.y_val))
            if callback is not None:
                k = len(bounds)
                callback(epoch, epoch_logs(losses[-k:], correct[-k:], sizes[:k], vl, val_acc[-1]))
        return Trajectory.from_steps(
            losses, correct, sizes, len(bounds), val_loss, val_acc,
            Weights(K, b), self._meta(head, plan, data, device, masks),
        )


def reference_for(backend) -> Backend:
    """The float64 oracle for ``backend``: a NumPy backend with its Adam epsilon convention."""
    return Backend(adam_epsilon=getattr(backend, "adam_epsilon", "torch"))


def _loss_and_grad(head: str, z: np.ndarray, y: np.ndarray, grad: bool = True):
    """(mean loss, number correct, dL/dz) for logits ``z`` of one batch."""
    B = z.shape[0]
    if head == SOFTMAX:
        zmax = z.max(axis=1, keepdims=True)
        lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
        rows = np.arange(B)
        loss = float(np.mean(lse - z[rows, y]))
        right = int(np.sum(np.argmax(z, axis=1) == y))
        if not grad:
            return loss, right, None
        g = np.exp(z - lse[:, None])
        g[rows, y] -= 1
        return loss, right, g / B
    zz = z[:, 0]
    loss = float(np.mean(np.logaddexp(0, zz) - y * zz))
    right = int(np.sum((zz > 0) == (y == 1)))
    if not grad:
        return loss, right, None
    from ..heads import sigmoid

    return loss, right, ((sigmoid(zz) - y) / B)[:, None].astype(z.dtype)


class _Optimizer:
    """In-place updates of a list of arrays, PyTorch's equations (module docstring)."""

    def __init__(self, spec: Optimizer, lr: float, params, adam_epsilon: str = "torch"):
        self.spec, self.lr, self.params = spec, lr, params
        self.adam_epsilon = adam_epsilon
        self.t = 0
        self.state = [np.zeros_like(p) for p in params]
        self.state2 = [np.zeros_like(p) for p in params]

    def step(self, grads):
        s, lr = self.spec, self.lr
        self.t += 1
        for p, g, a, v in zip(self.params, grads, self.state, self.state2):
            g = g.astype(p.dtype, copy=False)
            if s.name == "sgd":
                if s.momentum:
                    a *= s.momentum
                    a += g
                    g = g + s.momentum * a if s.nesterov else a
                p -= lr * g
            elif s.name == "adam":
                a *= s.beta_1
                a += (1 - s.beta_1) * g
                v *= s.beta_2
                v += (1 - s.beta_2) * g * g
                bc1, bc2 = 1 - s.beta_1 ** self.t, 1 - s.beta_2 ** self.t
                if self.adam_epsilon == "keras":
                    p -= (lr * np.sqrt(bc2) / bc1) * a / (np.sqrt(v) + s.epsilon)
                else:
                    p -= lr * (a / bc1) / (np.sqrt(v / bc2) + s.epsilon)
            else:  # pragma: no cover - Optimizer validates names
                raise NotImplementedError(f"backend 'numpy' has no optimizer {s.name!r}")
