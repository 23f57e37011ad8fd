"""Whole networks in PyTorch, written as a PyTorch user writes them.

``nn.Sequential`` bodies of ``nn.Linear`` / ``nn.Conv2d`` (NCHW) and ``nn.ReLU``,
``nn.AdaptiveAvgPool2d``; the plan's dropout masks multiply the activations
where the network's Dropout layer sits; one optimizer with two parameter groups
(body, head), each with its own learning rate and weight decay.  Canonical
(Keras) layouts are converted here, at the edge: a Dense kernel (in, out) is a
``Linear`` weight (out, in); a Conv2D kernel (kh, kw, in, out) is a ``Conv2d``
weight (out, in, kh, kw); NHWC images are permuted to NCHW.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...heads import SOFTMAX, UNITS, Weights, from_torch_layout, hits
from ...networks import GroupRates, Network
from ...plan import Plan
from ...trajectory import Trajectory


def to_torch_kernel(kernel: np.ndarray) -> np.ndarray:
    """Canonical kernel -> torch weight: (in, out) -> (out, in); (kh, kw, in, out) -> (out, in, kh, kw)."""
    return np.ascontiguousarray(kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1))


def from_torch_kernel(weight: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_torch_kernel`."""
    return np.ascontiguousarray(weight.T if weight.ndim == 2 else weight.transpose(2, 3, 1, 0))


class TorchNetwork(nn.Module):
    """``pre`` (body up to its Dropout), the plan's mask, ``post`` (the rest of the body), the head."""

    def __init__(self, net: Network, body_init, head: str, device, dtype):
        super().__init__()
        a, b = net.widths
        if net.body == "mlp":
            self.pre = nn.Sequential(nn.Linear(net.input_shape[0], a), nn.ReLU())
            self.post = nn.Sequential(nn.Linear(a, b), nn.ReLU())
        elif net.body == "cnn":
            self.pre = nn.Sequential(nn.Conv2d(net.input_shape[2], a, 3), nn.ReLU(), nn.Conv2d(a, b, 3), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.post = nn.Identity()
        else:
            self.pre, self.post = nn.Identity(), nn.Identity()
        self.head = nn.Linear(net.width, UNITS[head])
        self.images = net.body == "cnn"
        self.to(device=device, dtype=dtype)
        with torch.no_grad():
            for layer, (k, bias) in zip(self.body_layers(), body_init):
                layer.weight.copy_(torch.from_numpy(to_torch_kernel(np.asarray(k, dtype=np.float64))))
                layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float64)))

    def body_layers(self) -> list[nn.Module]:
        return [m for part in (self.pre, self.post) for m in part.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]

    def forward(self, x, mask=None):
        if self.images:
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        h = self.pre(x)
        if mask is not None:
            h = h * mask
        return self.head(self.post(h))

    def set_head(self, weights: Weights) -> None:
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights.kernel.T, dtype=np.float64)))
            self.head.bias.copy_(torch.from_numpy(np.asarray(weights.bias, dtype=np.float64)))


def train_network(backend, net: Network, head: str, body_init, head_init: Weights, plan: Plan, data,
                  rates: GroupRates, device: str = "cpu") -> Trajectory:
    from .._base import all_finite, batch_sizes, check_finite
    from .ops import DTYPES, loss_fn

    dev, dt = torch.device(device), DTYPES[plan.dtype]
    model = TorchNetwork(net, body_init, head, dev, dt)
    model.set_head(head_init)
    body_params = [p for m in model.body_layers() for p in (m.weight, m.bias)]
    groups = ([{"params": body_params, "lr": rates.body_lr, "weight_decay": rates.body_decay}] if body_params else [])
    groups.append({"params": list(model.head.parameters()), "lr": rates.head_lr, "weight_decay": rates.head_decay})
    opt = backend.make_optimizer(plan, groups)
    batch_loss = loss_fn(head, plan)
    X = torch.as_tensor(data.X_train, device=dev).to(dt)
    y = torch.as_tensor(data.y_train, device=dev)
    yt = y if head == SOFTMAX else torch.as_tensor(plan.targets(data.y_train), device=dev).to(dt)
    Xv = torch.as_tensor(data.X_val, device=dev).to(dt)
    yv = torch.as_tensor(data.y_val, device=dev)
    yv_t = yv if head == SOFTMAX else torch.as_tensor(plan.targets(data.y_val), device=dev).to(dt)
    sw = plan.sample_weights(data.y_train)  # class weights, as the head's loop applies them
    sw = None if sw is None else torch.as_tensor(sw, device=dev).to(dt)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=plan.autocast == "bfloat16")
    n, width = len(data.y_train), net.dropout_widths[0]
    bounds, sizes = plan.batch_bounds(n), batch_sizes(plan, n)
    losses, correct, val_loss, val_acc = [], [], [], []
    for epoch in range(plan.epochs):
        order = torch.as_tensor(plan.batch_order(epoch, n), device=dev)
        drawn = plan.epoch_masks(epoch, n, width)
        scaled = None if drawn is None else torch.as_tensor(drawn, device=dev).to(dt) * plan.mask_scale
        step_losses, step_right = [], []
        for s, t in bounds:
            idx = order[s:t]
            with autocast:
                z = model(X.index_select(0, idx), None if scaled is None else scaled[s:t])
                loss = batch_loss(z, yt.index_select(0, idx), None if sw is None else sw.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_losses.append(loss.detach().to(dt))
            step_right.append(hits(head, z.detach(), y.index_select(0, idx)).sum())
        losses.append(torch.stack(step_losses).cpu().numpy())
        correct.append(torch.stack(step_right).cpu().numpy())
        check_finite(backend.name, head, losses[-1], epoch * len(bounds),
                     all_finite(*(p.detach().cpu().numpy() for p in model.parameters())))
        with torch.no_grad(), autocast:
            zv = model(Xv)
            val_loss.append(float(batch_loss(zv, yv_t, None)))
            val_acc.append(int(hits(head, zv, yv).sum()) / len(yv))
    head_w = from_torch_layout(model.head.weight.detach().cpu().numpy(), model.head.bias.detach().cpu().numpy())
    meta = {"backend": backend.name, "head": head, "body": net.body, "device": str(dev), "dtype": plan.dtype,
            "lr": plan.lr, "optimizer": plan.optimizer.label, "rates": rates.__dict__}
    traj = Trajectory.from_steps(np.concatenate(losses), np.concatenate(correct), sizes, len(bounds), val_loss,
                                 val_acc, head_w, meta)
    traj.body = [(from_torch_kernel(m.weight.detach().cpu().numpy()), m.bias.detach().cpu().numpy())
                 for m in model.body_layers()]
    return traj
