"""Beyond two classes: K-way softmax vs the (K - 1)-logit reference-class parametrisation (NumPy).

The reference-class head fixes class 0's logit at 0 and learns V_k = W_k - W_0,
c_k = b_k - b_0 for k = 1..K-1: the same predictions with (K - 1)(d + 1)
parameters instead of K(d + 1), a saving of a factor K / (K - 1).

Why no learning-rate factor makes their SGD paths coincide for K > 2: with
G_k = (p_k - y_k) x, the full softmax's SGD step moves V_k = W_k - W_0 by
-eta (G_k - G_0), and since sum_k (p_k - y_k) = 0, -G_0 = sum_{j>=1} G_j, so
the move is -eta (G_k + sum_{j>=1} G_j), i.e. -eta (I + J) G in V-space (J all
ones).  The reference head's own step is -eta' G.  For K = 2, I + J = 2 (a
scalar): eta' = 2 eta.  For K > 2, I + J has eigenvalues K (along the ones
vector) and 1 (K - 2 times): no scalar eta' / eta equals it, so the paths part
from the first step whenever the gradients are not all aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KWay:
    """A K-way data set: X (N, D) float64, y (N,) in 0..K-1."""

    X: np.ndarray
    y: np.ndarray

    @property
    def K(self) -> int:
        return int(self.y.max()) + 1


def digits_kway(K: int) -> KWay:
    """scikit-learn's digits restricted to classes 0..K-1, pixels / 16."""
    from .sources import sklearn_set

    if not 2 <= K <= 10:
        raise ValueError(f"K must be in 2..10 for digits, got {K}")
    data, target = sklearn_set("digits")
    keep = target < K
    return KWay(data[keep] / 16.0, target[keep])


def n_params(K: int, d: int, reference: bool = False) -> int:
    """K(d + 1) for the full softmax, (K - 1)(d + 1) for the reference-class head."""
    return (K - 1 if reference else K) * (d + 1)


def to_reference(W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W (d, K), b (K,)) -> (V = W[:, 1:] - W[:, :1], c = b[1:] - b[0])."""
    return W[:, 1:] - W[:, :1], b[1:] - b[0]


def from_reference(V: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, c) -> the full head with W_0 = 0, b_0 = 0."""
    return np.concatenate([np.zeros((V.shape[0], 1)), V], axis=1), np.concatenate([[0.0], c])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict_full(W, b, X) -> np.ndarray:
    return _softmax(X @ W + b)


def predict_reference(V, c, X) -> np.ndarray:
    z = X @ V + c
    return _softmax(np.concatenate([np.zeros((len(X), 1)), z], axis=1))


def sgd_losses(data: KWay, W0: np.ndarray, b0: np.ndarray, lr: float, *, reference: bool, epochs: int = 2,
               batch_size: int = 32, seed: int = 0) -> np.ndarray:
    """Per-step mean cross-entropy of SGD on the full head (``reference=False``) or the reference head."""
    X, y = data.X, data.y
    n = len(y)
    if reference:
        W, b = to_reference(W0, b0)
    else:
        W, b = W0.copy(), b0.copy()
    from . import rand

    bg = rand.generator(seed, 0x4B)
    losses = []
    for _ in range(epochs):
        order = rand.permutation(bg, n)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            xb, yb = X[idx], y[idx]
            z = xb @ W + b
            if reference:
                z = np.concatenate([np.zeros((len(idx), 1)), z], axis=1)
            p = _softmax(z)
            losses.append(float(np.mean(-np.log(p[np.arange(len(idx)), yb]))))
            g = p.copy()
            g[np.arange(len(idx)), yb] -= 1
            g /= len(idx)
            if reference:
                g = g[:, 1:]
            W -= lr * (xb.T @ g)
            b -= lr * g.sum(axis=0)
    return np.asarray(losses)


def best_factor(data: KWay, lr: float = 0.05, **kw) -> tuple[float, float]:
    """(factor, gap): the reference head's lr factor that brings its path closest to the full head's.

    ``gap`` is the max |d step loss| at that factor, minimised over the factor by
    :func:`equivtest.rules.best_lr_factor` (a log-scale grid, then a golden-section search).
    """
    from . import rand
    from .rules import best_lr_factor

    d, K = data.X.shape[1], data.K
    W0 = rand.normal(rand.generator(1, K), (d, K)) * 0.1
    b0 = np.zeros(K)
    full = sgd_losses(data, W0, b0, lr, reference=False, **kw)
    factor, gap, _ = best_lr_factor(
        lambda f: float(np.max(np.abs(sgd_losses(data, W0, b0, f * lr, reference=True, **kw) - full))))
    return factor, gap
