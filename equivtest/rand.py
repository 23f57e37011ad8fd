"""Random draws that have the same bytes on every machine.

Everything equivtest generates itself (the built-in features, the split, initial
weights, batch orders, dropout masks) is drawn here, from one primitive that
NumPy guarantees to keep stable across versions and platforms: a bit
generator's raw 64-bit stream (``PCG64`` / ``SFC64`` seeded by a
``SeedSequence``).  What is made from it uses only

* integer arithmetic (shifts, masks, sums of integers: exact),
* IEEE-754 ``+ - * /`` and ``sqrt`` elementwise, which are correctly rounded, so
  every SIMD level gives the same bits,
* stable sorts, whose result is unique whatever algorithm runs them,

and never a BLAS call, a reduction whose summation order may change
(``np.sum``, ``np.mean``: scalar sums go through :func:`math.fsum`), or a
vectorised transcendental function (``np.exp``, ``np.log``; NumPy's Gaussian
sampler uses them in its tails).  So the draws are bit-identical under any CPU,
BLAS kernel set, SIMD level, thread count and NumPy version:
``tests/test_portability.py`` pins their hashes and regenerates them in
subprocesses under other kernel sets.
"""

from __future__ import annotations

import math

import numpy as np

#: the four 16-bit lanes of one raw 64-bit draw (taken by shifts: no byte-order dependence)
_LANES = (0, 16, 32, 48)
#: mean and standard deviation of the sum of four independent uniform integers in 0..65535
_IH_MEAN = 4 * 65535 / 2
_IH_INV_SD = 1.0 / math.sqrt(4 * (65536.0**2 - 1) / 12)
#: rows of a large normal draw handled at a time (bounds the temporaries; the stream is sequential)
_CHUNK = 1 << 20


def generator(seed: int, *key: int) -> np.random.PCG64:
    """The bit generator for ``(seed, *key)``: independent streams for different keys."""
    return np.random.PCG64(np.random.SeedSequence([int(seed), *(int(k) for k in key)]))


def raw(bg: np.random.BitGenerator, size: int) -> np.ndarray:
    """``size`` raw 64-bit words of ``bg``'s stream (NumPy keeps these stable)."""
    return bg.random_raw(int(size)).astype(np.uint64, copy=False)


def uniform(bg: np.random.BitGenerator, shape) -> np.ndarray:
    """Float64 uniforms on [0, 1): the top 53 bits of each raw word times 2**-53 (exact)."""
    shape = _shape(shape)
    words = raw(bg, math.prod(shape))
    return ((words >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(shape)


def permutation(bg: np.random.BitGenerator, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` (int64).

    Ranks of ``n`` random 64-bit keys; a stable sort breaks the (rare) ties by
    position, so the result is unique whatever sorting algorithm or SIMD kernel
    NumPy picks.
    """
    return np.argsort(raw(bg, n), kind="stable").astype(np.int64, copy=False)


def normal(bg: np.random.BitGenerator, shape, dtype=np.float64) -> np.ndarray:
    """Approximately standard normal draws (Irwin-Hall: four uniforms per value).

    Each value is the sum of the four 16-bit lanes of one raw word, centred and
    scaled to unit variance: an exact integer sum, then one subtraction and one
    multiplication in float64, rounded once to ``dtype``.  Bounded at +-3.46
    (excess kurtosis -0.3), which is all a surrogate of pooled CNN features needs,
    and bit-identical everywhere, unlike NumPy's ziggurat sampler, whose tails
    call ``exp`` and ``log``.
    """
    shape = _shape(shape)
    size = math.prod(shape)
    out = np.empty(size, dtype=dtype)
    mask = np.uint64(0xFFFF)
    for lo in range(0, size, _CHUNK):
        words = raw(bg, min(_CHUNK, size - lo))
        total = words & mask
        for shift in _LANES[1:]:
            total += (words >> np.uint64(shift)) & mask
        z = (total.astype(np.float64) - _IH_MEAN) * _IH_INV_SD
        out[lo: lo + len(words)] = z
    return out.reshape(shape)


def exp_approx(x: np.ndarray) -> np.ndarray:
    """``(1 + x / 64) ** 64`` by six squarings: a smooth, positive stand-in for ``exp``.

    Positive and increasing for x > -64, relative error about x**2 / 128 against
    ``exp(x)``; made of correctly rounded operations only, so it has the same bits
    on every machine.
    """
    y = 1.0 + np.asarray(x, dtype=np.float64) / 64.0
    for _ in range(6):
        y = y * y
    return y


def fsum_mean(a: np.ndarray) -> float:
    """The mean of ``a``, its sum correctly rounded (``math.fsum``): no summation-order dependence."""
    flat = np.asarray(a, dtype=np.float64).ravel()
    return math.fsum(flat.tolist()) / len(flat)


def column_means(a: np.ndarray) -> np.ndarray:
    """Per-column means of a 2-D array, each sum correctly rounded (``math.fsum``)."""
    a = np.asarray(a, dtype=np.float64)
    return np.array([math.fsum(col.tolist()) for col in a.T]) / a.shape[0]


def _shape(shape) -> tuple[int, ...]:
    return (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
