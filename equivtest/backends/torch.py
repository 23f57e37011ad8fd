"""The PyTorch backend: ``nn.Linear`` heads, ``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits``.

Devices ``cpu``, ``cuda[:N]``, ``mps`` where present; float32 and float64.  TF32
is off for CUDA matmuls unless :meth:`Backend.set_tf32` (or ``EQUIVTEST_TF32=1``)
turns it on.  The plan's masks enter as ``x * scale * mask`` before the Linear
layer; ``masks="native"`` uses ``nn.Dropout`` with a generator forked from
``plan.seed`` instead.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..heads import SOFTMAX, UNITS, Weights, from_torch_layout, to_torch_layout
from ..plan import Plan
from ..trajectory import Trajectory
from ._base import BaseBackend, batch_sizes, epoch_logs

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _to_sigmoid_coordinates(flat: np.ndarray, d: int) -> np.ndarray:
    """(steps, (d + 1) k) rows of [kernel (d, k); bias (k)] -> (steps, d + 1) of (beta, c)."""
    k = flat.shape[1] // (d + 1)
    w = flat.reshape(len(flat), d + 1, k)
    return w[:, :, 1] - w[:, :, 0] if k == 2 else w[:, :, 0]


def _correct_per_step(head: str, z, y, sizes) -> np.ndarray:
    """Correct predictions per step from an epoch's concatenated logits and labels in order."""
    hit = (z.argmax(dim=1) == y) if head == SOFTMAX else ((z[:, 0] > 0) == (y == 1))
    per_step = torch.split(hit, [int(s) for s in sizes])
    return torch.stack([h.sum() for h in per_step]).cpu().numpy()


class Backend(BaseBackend):
    name = "torch"
    framework = "torch"
    supports_float64 = True
    epsilon_convention = "torch"

    def __init__(self):
        self.set_tf32(os.environ.get("EQUIVTEST_TF32", "0").lower() in ("1", "true", "yes", "on"))

    def version(self) -> str:
        return torch.__version__

    def devices(self) -> list[str]:
        devs = ["cpu"]
        if torch.cuda.is_available():
            devs += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            devs.append("mps")
        return devs

    def set_tf32(self, on: bool) -> None:
        matmul = torch.backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = "tf32" if on else "ieee"
        else:  # torch < 2.9
            matmul.allow_tf32 = bool(on)
        torch.backends.cudnn.allow_tf32 = bool(on)
        self._tf32 = bool(on)

    def tf32(self) -> bool:
        return self._tf32

    # -- models -------------------------------------------------------------------
    def _linear(self, weights: Weights, device, dtype) -> nn.Linear:
        d, k = weights.kernel.shape
        layer = nn.Linear(d, k, device=device, dtype=dtype)
        w, b = to_torch_layout(weights)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float64)))
            layer.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float64)))
        return layer

    def count_params(self, head: str, d: int) -> int:
        layer = nn.Linear(int(d), UNITS[head], device="meta")
        return sum(p.numel() for p in layer.parameters())

    def predict_proba(self, weights: Weights, X, *, device="cpu", dtype="float32") -> np.ndarray:
        dev = torch.device(self.resolve_device(device))
        dt = _DTYPES[dtype]
        layer = self._linear(weights, dev, dt)
        with torch.no_grad():
            z = layer(torch.as_tensor(np.asarray(X), device=dev, dtype=dt))
            p = F.softmax(z, dim=1)[:, 1] if weights.head == SOFTMAX else torch.sigmoid(z[:, 0])
        return p.cpu().numpy()

    # -- training -----------------------------------------------------------------
    def _optimizer(self, plan: Plan, params):
        s = plan.optimizer
        wd = s.weight_decay
        if wd and s.decay == "decoupled" and s.name != "adamw":
            raise NotImplementedError(
                f"backend 'torch' has no decoupled weight decay for {s.name!r} (torch.optim offers it in AdamW only)"
            )
        if s.name == "sgd":
            return torch.optim.SGD(params, lr=plan.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=wd)
        if s.name == "adam":
            return torch.optim.Adam(params, lr=plan.lr, betas=(s.beta_1, s.beta_2), eps=s.epsilon, weight_decay=wd)
        if s.name == "adamw":
            return torch.optim.AdamW(params, lr=plan.lr, betas=(s.beta_1, s.beta_2), eps=s.epsilon, weight_decay=wd)
        if s.name == "rmsprop":
            return torch.optim.RMSprop(params, lr=plan.lr, alpha=s.rho, eps=s.epsilon, weight_decay=wd)
        if s.name == "adagrad":
            return torch.optim.Adagrad(params, lr=plan.lr, eps=s.epsilon, weight_decay=wd,
                                       initial_accumulator_value=s.initial_accumulator)
        raise NotImplementedError(f"backend 'torch' has no optimizer {s.name!r}")

    def train(self, head, init, plan: Plan, data, *, device="cpu", masks="plan", callback=None,
              record_history=False) -> Trajectory:
        self._check_train_args(head, init, plan, data, masks)
        device = self.resolve_device(device)
        dev = torch.device(device)
        dt = _DTYPES[plan.dtype]
        X = torch.as_tensor(data.X_train, device=dev).to(dt)
        y = torch.as_tensor(data.y_train, device=dev)
        n, d = X.shape
        # targets: class indices (+ label_smoothing=) for F.cross_entropy; smoothed floats for BCE
        yt = y if head == SOFTMAX else torch.as_tensor(plan.targets(data.y_train), device=dev).to(dt)
        sw = plan.sample_weights(data.y_train)  # class weights (focal alpha is inside the focal loss)
        sw = None if sw is None else torch.as_tensor(sw, device=dev).to(dt)
        loss_fn = _loss_fn(head, plan)
        layer = self._linear(init, dev, dt)
        opt = self._optimizer(plan, layer.parameters())
        bounds = plan.batch_bounds(n)
        scale = plan.mask_scale
        dropout = nn.Dropout(plan.dropout) if masks == "native" and plan.dropout > 0 else None
        sizes = batch_sizes(plan, n)
        Xv = torch.as_tensor(data.X_val, device=dev).to(dt)
        yv = torch.as_tensor(data.y_val, device=dev)
        yv_t = yv if head == SOFTMAX else torch.as_tensor(plan.targets(data.y_val), device=dev).to(dt)
        buf = torch.empty((plan.batch_size, d), device=dev, dtype=dt)  # one batch, reused every step
        step_losses, step_logits, val_loss, val_acc = [], [], [], []
        history = [] if record_history else None
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(plan.seed * 1_000_003 + plan.mask_stream)
            for epoch in range(plan.epochs):
                order = torch.as_tensor(plan.batch_order(epoch, n), device=dev)
                m = plan.epoch_masks(epoch, n, d) if masks == "plan" else None
                if m is not None:  # 0/1 bytes: multiplying by uint8 is cheaper than by bool
                    m = torch.as_tensor(m.view(np.uint8), device=dev)
                losses, logits = [], []
                for s, t in bounds:
                    idx = order[s:t]
                    xb = torch.index_select(X, 0, idx, out=buf[: t - s])
                    if m is not None:
                        xb.mul_(scale).mul_(m[s:t])  # x * scale where kept, else 0
                    elif dropout is not None:
                        xb = dropout(xb)
                    z = layer(xb)
                    loss = loss_fn(z, yt[idx], None if sw is None else sw[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(loss.detach())
                    logits.append(z.detach())
                    if history is not None:
                        history.append(torch.cat([layer.weight.detach().T, layer.bias.detach()[None]]).flatten()
                                       .clone())
                # accuracy from the epoch's logits at once (before each update, with dropout, as Keras counts)
                losses = torch.stack(losses)
                right = _correct_per_step(head, torch.cat(logits), y.index_select(0, order), sizes[: len(bounds)])
                step_losses.append(losses.cpu().numpy())
                step_logits.append(right)
                vl, va = self._evaluate(head, layer, loss_fn, Xv, yv, yv_t)
                val_loss.append(vl)
                val_acc.append(va)
                if callback is not None:
                    callback(epoch, epoch_logs(step_losses[-1], right, sizes[: len(bounds)], vl, va))
        weights = from_torch_layout(layer.weight.detach().cpu().numpy(), layer.bias.detach().cpu().numpy())
        return Trajectory.from_steps(
            np.concatenate(step_losses), np.concatenate(step_logits), sizes, len(bounds), val_loss, val_acc,
            weights, self._meta(head, plan, data, device, masks),
            history=None if history is None else _to_sigmoid_coordinates(torch.stack(history).cpu().numpy(), d),
        )

    def _evaluate(self, head, layer, loss_fn, Xv, yv, yv_t):
        with torch.no_grad():
            z = layer(Xv)
            loss = loss_fn(z, yv_t, None)
            right = (z.argmax(dim=1) == yv).sum() if head == SOFTMAX else ((z[:, 0] > 0) == (yv == 1)).sum()
        return float(loss), int(right) / len(yv)


def _loss_fn(head: str, plan: Plan):
    """The batch loss as a PyTorch user writes it; per-sample weights give sum(w l) / B."""
    label_smoothing = plan.label_smoothing
    if plan.loss == "focal":
        return _focal_fn(head, plan.focal_gamma, plan.focal_alpha)
    if head == SOFTMAX:
        def loss(z, y, w):
            if w is None:
                return F.cross_entropy(z, y, label_smoothing=label_smoothing)
            return (F.cross_entropy(z, y, label_smoothing=label_smoothing, reduction="none") * w).mean()
    else:
        def loss(z, t, w):  # t: already smoothed p(y=1) targets
            return F.binary_cross_entropy_with_logits(z[:, 0], t, weight=w)  # weight: w_i l_i, mean over B
    return loss


def _focal_fn(head: str, gamma: float, alpha: float | None):
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
