"""Whole networks without a framework: bodies, their canonical layouts, and the per-layer rule.

A network is a body h = f(x; theta) followed by the head (Dense(2, softmax) or
Dense(1, sigmoid)) on h.  Bodies:

- ``none``: h = x (the seed's case: the head on pooled features);
- ``mlp``: Dense(h1), ReLU, Dropout, Dense(h2), ReLU, on feature vectors;
- ``cnn``: Conv 3x3 (c1), ReLU, Conv 3x3 (c2), ReLU, global average pooling,
  Dropout, on images (N, H, W, C) ("valid" convolutions, stride 1).

Canonical layout is Keras's: a Dense kernel (in, out), a Conv2D kernel
(kh, kw, in, out), images NHWC; an adapter converts at its own edge.

**The per-layer rule.**  With the body shared by both heads, the softmax head's
gradient with respect to h is (p - y) w1 - (p - y) w0 = (p - y) beta, exactly
the sigmoid head's.  So the body receives the same gradient from either head:
it keeps the softmax's learning rate (and weight decay), while the head runs at
twice it (and half the decay), per parameter group, for SGD, momentum,
Nesterov, Adam, RMSprop and Adagrad.  The seed's global x2 moves the body twice
as fast, and breaks the equivalence as soon as the body trains; with a frozen
body (or no body) it is the seed's case and holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .heads import lr_factor, weight_decay_factor

BODIES = ("none", "mlp", "cnn")
LR_RULES = ("per-layer", "global")


@dataclass(frozen=True)
class Layer:
    """One trainable body layer: ``kind`` "dense" (kernel (in, out)) or "conv" (kernel (3, 3, in, out))."""

    kind: str
    kernel_shape: tuple[int, ...]

    @property
    def units(self) -> int:
        return self.kernel_shape[-1]

    @property
    def fans(self) -> tuple[int, int]:
        """Glorot's (fan_in, fan_out), as Keras counts them (a conv's receptive field included)."""
        field = math.prod(self.kernel_shape[:-2])
        return field * self.kernel_shape[-2], field * self.kernel_shape[-1]


@dataclass(frozen=True)
class Network:
    """A body on inputs of ``input_shape`` ((d,) for vectors, (H, W, C) for images)."""

    body: str
    input_shape: tuple[int, ...]
    widths: tuple[int, int] = (32, 16)

    def __post_init__(self):
        if self.body not in BODIES:
            raise InputError(f"unknown body {self.body!r}; expected one of {', '.join(BODIES)}")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if self.body == "cnn":
            if len(self.input_shape) != 3:
                raise InputError(f"body 'cnn' needs images (N, H, W, C), got inputs of shape {self.input_shape}")
            h, w, _ = self.input_shape
            if min(h, w) < 5:
                raise InputError(f"body 'cnn' needs images of at least 5 x 5 (two 3 x 3 convolutions), got {h} x {w}")
        elif len(self.input_shape) != 1:
            raise InputError(f"body {self.body!r} needs feature vectors (N, D), got inputs of shape {self.input_shape}")

    @property
    def layers(self) -> list[Layer]:
        a, b = self.widths
        if self.body == "mlp":
            return [Layer("dense", (self.input_shape[0], a)), Layer("dense", (a, b))]
        if self.body == "cnn":
            return [Layer("conv", (3, 3, self.input_shape[2], a)), Layer("conv", (3, 3, a, b))]
        return []

    @property
    def width(self) -> int:
        """How many features reach the head."""
        return self.input_shape[0] if self.body == "none" else self.widths[1]

    @property
    def dropout_widths(self) -> list[int]:
        """Units of each Dropout layer, in order (the plan draws one mask stream for each)."""
        if self.body == "mlp":
            return [self.widths[0]]
        return [self.width]  # none: before the head (the seed's); cnn: after pooling

    def n_body_params(self) -> int:
        return sum(math.prod(layer.kernel_shape) + layer.units for layer in self.layers)


@dataclass(frozen=True)
class GroupRates:
    """Learning rate and weight decay per parameter group: the body's and the head's."""

    body_lr: float
    head_lr: float
    body_decay: float = 0.0
    head_decay: float = 0.0


def head_alone(plan, d: int) -> tuple[Network, GroupRates]:
    """The seed's head as a network: body ``none`` on ``d`` features, at the plan's rate and decay (how
    every backend trains a head: the network with body ``none``)."""
    rates = GroupRates(body_lr=0.0, head_lr=plan.lr, head_decay=plan.optimizer.weight_decay)
    return Network("none", (int(d),)), rates


def group_rates(lr: float, decay: float, head: str, rule: str = "per-layer") -> GroupRates:
    """The rates a network trains at.  The softmax network: lr and decay everywhere.  The sigmoid
    network with converted head: body x1, head x ``lr_factor()`` (decay x ``weight_decay_factor()``)
    under ``per-layer``; everything scaled under ``global`` (the seed's rule, wrong once the body trains)."""
    if rule not in LR_RULES:
        raise InputError(f"unknown learning-rate rule {rule!r}; expected one of {', '.join(LR_RULES)}")
    if head == "softmax":
        return GroupRates(lr, lr, decay, decay)
    f, g = lr_factor(), weight_decay_factor()
    if rule == "per-layer":
        return GroupRates(lr, f * lr, decay, g * decay)
    return GroupRates(f * lr, f * lr, g * decay, g * decay)


def glorot_uniform(layer: Layer, bg: np.random.BitGenerator) -> tuple[np.ndarray, np.ndarray]:
    """Keras's default init for a Dense or Conv2D layer, from the raw stream: (kernel, zero bias), float64."""
    from . import rand

    fan_in, fan_out = layer.fans
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    kernel = (rand.uniform(bg, layer.kernel_shape) * 2.0 - 1.0) * limit
    return kernel, np.zeros(layer.units)
