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

from ...heads import UNITS, Weights
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
    """A whole network: the backend's one loop (:meth:`equivtest.backends.torch.Backend.run`)."""
    return backend.run(net, head, body_init, head_init, plan, data, rates, device)
