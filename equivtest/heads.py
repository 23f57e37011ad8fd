"""The two heads and the transfer rules between them (pure NumPy).

Canonical layout is Keras's: ``kernel`` (d, k), ``bias`` (k,), with k = 2 for the
softmax head (column 0 = class 0, column 1 = class 1) and k = 1 for the sigmoid
head.  Adapters convert at their own edge (:func:`to_torch_layout`).

Binary case, features x; softmax head (w0, b0), (w1, b1); sigmoid head (beta, c)::

    softmax  p(y=1|x) = e^{w1.x+b1} / (e^{w0.x+b0} + e^{w1.x+b1})
                      = 1 / (1 + e^{-((w1-w0).x + (b1-b0))})
                      = sigmoid(beta.x + c)   with beta = w1 - w0, c = b1 - b0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SOFTMAX = "softmax"
SIGMOID = "sigmoid"
HEADS = (SOFTMAX, SIGMOID)
UNITS = {SOFTMAX: 2, SIGMOID: 1}


@dataclass(frozen=True, eq=False)
class Weights:
    """A head's parameters in canonical layout: kernel (d, k), bias (k,)."""

    kernel: np.ndarray
    bias: np.ndarray

    def __post_init__(self):
        k = np.asarray(self.kernel)
        b = np.asarray(self.bias)
        if k.ndim != 2 or b.shape != (k.shape[1],) or k.shape[1] not in (1, 2):
            raise ValueError(
                f"weights must be kernel (d, 1|2) and bias (k,), got kernel {k.shape} and bias {b.shape}"
            )
        object.__setattr__(self, "kernel", k)
        object.__setattr__(self, "bias", b)

    @property
    def head(self) -> str:
        return SOFTMAX if self.kernel.shape[1] == 2 else SIGMOID

    @property
    def n_features(self) -> int:
        return int(self.kernel.shape[0])

    def astype(self, dtype) -> Weights:
        return Weights(self.kernel.astype(dtype), self.bias.astype(dtype))

    def copy(self) -> Weights:
        return Weights(self.kernel.copy(), self.bias.copy())

    def to_dict(self) -> dict:
        return {"kernel": self.kernel.tolist(), "bias": self.bias.tolist()}

    @classmethod
    def from_dict(cls, d: dict, dtype=np.float64) -> Weights:
        return cls(np.asarray(d["kernel"], dtype=dtype), np.asarray(d["bias"], dtype=dtype))


def check_head(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    return head


# ----------------------------------------------------------------------------- counts
def n_params(head: str, d: int) -> int:
    """Parameter count of a head on d features: softmax 2(d + 1), sigmoid d + 1."""
    return UNITS[check_head(head)] * (int(d) + 1)


# ----------------------------------------------------------------------------- init
def glorot_uniform(head: str, d: int, bg: np.random.BitGenerator, dtype=np.float32) -> Weights:
    """Keras's default Dense init: U(-l, l), l = sqrt(6 / (d + k)); bias 0.

    Drawn from ``bg``'s raw stream as ``(2u - 1) l`` (:func:`equivtest.rand.uniform`),
    so the weights have the same bits on every machine.
    """
    from . import rand

    k = UNITS[check_head(head)]
    limit = math.sqrt(6.0 / (d + k))
    kernel = ((rand.uniform(bg, (d, k)) * 2.0 - 1.0) * limit).astype(dtype)
    return Weights(kernel, np.zeros(k, dtype=dtype))


# ----------------------------------------------------------------------------- rules
def softmax_to_sigmoid(w: Weights) -> Weights:
    """beta = w1 - w0, c = b1 - b0: identical predictions (module docstring)."""
    if w.head != SOFTMAX:
        raise ValueError(f"softmax_to_sigmoid needs a softmax head (kernel (d, 2)), got {w.kernel.shape}")
    beta = w.kernel[:, 1] - w.kernel[:, 0]
    c = w.bias[1] - w.bias[0]
    return Weights(beta[:, None].copy(), np.asarray([c], dtype=w.bias.dtype))


def sigmoid_to_softmax(w: Weights, split: str = "zero") -> Weights:
    """One softmax head with the same predictions as sigmoid (beta, c).

    Only the difference w1 - w0 is determined; ``split`` picks the free part:
    ``"zero"``: w0 = 0, w1 = beta (b0 = 0, b1 = c);
    ``"symmetric"``: w0 = -beta/2, w1 = +beta/2 (the one with w0 + w1 = 0, the
    minimum-norm choice, and the one Adam with coupled L2 needs).
    """
    if w.head != SIGMOID:
        raise ValueError(f"sigmoid_to_softmax needs a sigmoid head (kernel (d, 1)), got {w.kernel.shape}")
    beta, c = w.kernel[:, 0], w.bias[0]
    if split == "zero":
        k = np.stack([np.zeros_like(beta), beta], axis=1)
        b = np.asarray([0, c], dtype=w.bias.dtype)
    elif split == "symmetric":
        half = beta / 2
        k = np.stack([-half, half], axis=1)
        b = np.asarray([-c / 2, c / 2], dtype=w.bias.dtype)
    else:
        raise ValueError(f"unknown split {split!r}; expected 'zero' or 'symmetric'")
    return Weights(k.astype(w.kernel.dtype), b)


def hits(head: str, z, y):
    """Which predictions are right: the argmax for a softmax head, logit > 0 (p > 0.5) for a sigmoid head.

    ``z`` are logits (B, k) and ``y`` labels (B,), as NumPy arrays or torch tensors
    alike (positional ``argmax`` and comparisons only).
    """
    return (z.argmax(1) == y) if head == SOFTMAX else ((z[:, 0] > 0) == (y == 1))


def sigmoid_coordinates(kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(beta, c) as one vector of d + 1: the sigmoid head's own, or w1 - w0, b1 - b0 for a softmax head.

    Leading axes are batch axes: kernels (..., d, k) and biases (..., k) give (..., d + 1),
    e.g. a run's per-step parameter history at once.
    """
    kernel, bias = np.asarray(kernel), np.asarray(bias)
    if kernel.shape[-1] == 2:
        return np.concatenate([kernel[..., 1] - kernel[..., 0], bias[..., 1:] - bias[..., :1]], axis=-1)
    return np.concatenate([kernel[..., 0], bias[..., :1]], axis=-1)


def to_torch_layout(w: Weights) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (kernel (d, k), bias (k,)) -> ``nn.Linear`` (weight (k, d), bias (k,))."""
    return np.ascontiguousarray(w.kernel.T), w.bias.copy()


def from_torch_layout(weight: np.ndarray, bias: np.ndarray) -> Weights:
    """``nn.Linear`` (weight (k, d), bias (k,)) -> canonical (kernel (d, k), bias (k,))."""
    weight = np.asarray(weight)
    return Weights(np.ascontiguousarray(weight.T), np.asarray(bias).copy())


def lr_factor() -> float:
    """The sigmoid head's learning rate is 2x the softmax head's.

    Derivation: for one example, dL/dw1 = (p - y) x and dL/dw0 = -(p - y) x, so an
    SGD step at rate eta moves beta = w1 - w0 by -eta (p - y) x - eta (p - y) x
    = -2 eta (p - y) x.  The sigmoid's own gradient is dL/dbeta = (p - y) x, so it
    follows the same path only at rate 2 eta.  Momentum and Nesterov are linear in
    the gradients, so the same holds; Adam, RMSprop and Adagrad update each
    coordinate from that coordinate's gradient history, and since g0 = -g1 the
    softmax's w0 moves exactly opposite to w1 while the sigmoid's gradient equals
    g1, so beta moves by twice w1's step: again a factor 2.
    """
    return 2.0


def weight_decay_factor() -> float:
    """The sigmoid head's weight decay (coupled L2 or decoupled) is 1/2 the softmax head's.

    Derivation (decoupled, rate eta, decay lambda): the softmax step shrinks w0 and w1
    by eta lambda each, so beta = w1 - w0 shrinks by eta lambda beta.  The sigmoid at
    rate 2 eta with decay lambda' shrinks beta by 2 eta lambda' beta, so
    lambda' = lambda / 2.  Coupled L2 ((lambda/2)||W||^2 added to the loss) adds
    lambda w_k to each gradient, the same shrink per step, so again lambda / 2.
    For Adam with coupled L2 the added term enters the per-coordinate normalisation,
    so the rule also needs g0 = -g1 at every step, i.e. w0 + w1 = 0 from the start
    (``sigmoid_to_softmax(..., split="symmetric")``).
    """
    return 0.5


def predict_proba(w: Weights, X: np.ndarray) -> np.ndarray:
    """p(y = 1 | x) for either head, computed stably in the weights' dtype."""
    z = X.astype(w.kernel.dtype, copy=False) @ w.kernel + w.bias
    if w.head == SOFTMAX:  # the softmax itself, not the identity under test
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e[:, 1] / e.sum(axis=1)
    return sigmoid(z[:, 0])


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out
