"""The arithmetic of converting a stored head, and what a conversion costs in the file's own dtype.

Layout here is PyTorch's (``weight`` (k, d), ``bias`` (k,)), the layout of every
weights-only file; Keras's (d, k) kernels are transposed at their own edge.  The
rule itself (beta = w1 - w0, c = b1 - b0, and the zero / symmetric split back)
is :mod:`equivtest.heads`'s, applied here in float64 and rounded once to the
storage dtype, so the only error a conversion adds is that one rounding, and
:class:`Rounding` reports it.

No framework is imported here, and nothing else either: float16 and float32
are NumPy's own casts from float64, and bfloat16 (which NumPy lacks) is rounded
here (:func:`round_to_bfloat16`), straight from float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import heads
from ..errors import InputError

SIGMOID, SOFTMAX = heads.SIGMOID, heads.SOFTMAX
#: what a head outputs after its Dense: probabilities (softmax / sigmoid) or the logits themselves
LOGITS = "logits"
SPLITS = ("zero", "symmetric")

#: unit roundoff u of each storage dtype (round to nearest: |fl(x) - x| <= u |x|): 2^-p for p significant bits
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
#: dtypes whose values a float32 computation holds exactly; a head stored in one is applied in float32
HALF = ("float16", "bfloat16")


class ConversionError(InputError):
    """A model file that cannot be converted or verified: ``str(err)`` names the file and what was wrong."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"model '{path}': {problem}")


def dtype_name(dtype) -> str:
    """'float32', 'bfloat16', ... for a NumPy, ml_dtypes, torch or Keras dtype (or its name)."""
    s = str(dtype).replace("torch.", "")
    return {"half": "float16", "float": "float32", "double": "float64"}.get(s, s)


#: bfloat16: 8 significant bits and float32's exponent range, so values below its smallest normal (2^-126) are
#: spaced 2^-133; 2^128 and past it are past its largest finite value (and its rounding boundary)
_BF16_BITS, _BF16_SUBNORMAL_SPACING_EXP, _BF16_OVERFLOW = 8, -133, 2.0 ** 128


def round_to_bfloat16(values) -> np.ndarray:
    """float64 ``values`` rounded once to the nearest bfloat16 (ties to even), returned as float64 (exact).

    Each finite x = m 2^e (0.5 <= |m| < 1) is a whole number of its bfloat16 spacing 2^q away from 0, with
    q = e - 8 for normals and q = -133 below bfloat16's smallest normal (2^-126); ``np.rint`` rounds x / 2^q to the
    nearest integer, ties to even, and scaling by powers of two is exact.  What rounds to 2^128 or past it
    overflows to +-inf; inf, nan and signed zeros pass through.  Converting through float32 first (as
    ``torch.from_numpy(x).to(torch.bfloat16)`` does from float64) rounds twice, and misses the nearest value
    for x just past a bfloat16 tie.
    """
    v = np.array(values, dtype=np.float64)
    live = np.isfinite(v) & (v != 0)
    x = v[live]
    _, e = np.frexp(x)
    q = np.maximum(e - _BF16_BITS, _BF16_SUBNORMAL_SPACING_EXP)
    r = np.ldexp(np.rint(np.ldexp(x, -q)), q)
    v[live] = np.where(np.abs(r) >= _BF16_OVERFLOW, np.copysign(np.inf, r), r)
    return v


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` (float64) rounded once to nearest in ``dtype``, returned as float64 (exact)."""
    dtype = dtype_name(dtype)
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"cannot store weights in {dtype}; expected one of {', '.join(UNIT_ROUNDOFF)}")
    values = np.asarray(values, dtype=np.float64)
    if dtype == "bfloat16":
        return round_to_bfloat16(values)
    return values.astype(dtype).astype(np.float64)  # NumPy casts float64 to float32 / float16 in one rounding


@dataclass(frozen=True)
class Rounding:
    """What storing the exact (float64) converted weights in ``dtype`` changed."""

    dtype: str
    max_abs: float  # max |stored - exact| over the weight and the bias
    max_rel: float  # max |stored - exact| / |exact| over the nonzero exact values
    unit_roundoff: float  # the dtype's u: max_rel <= u wherever the results are normal numbers of the dtype

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "max_abs": self.max_abs, "max_rel": self.max_rel,
                "unit_roundoff": self.unit_roundoff}

    def describe(self) -> str:
        if self.max_abs == 0.0:
            return f"exact in {self.dtype}"
        return (f"rounded to {self.dtype}: max |stored - exact| {self.max_abs:.3g} "
                f"(relative {self.max_rel:.3g}, unit roundoff {self.unit_roundoff:.3g})")


@dataclass(frozen=True)
class Converted:
    """A converted head in torch layout, float64 values already rounded to ``rounding.dtype``."""

    weight: np.ndarray  # (k', d)
    bias: np.ndarray | None  # (k',) or None for a layer without bias
    rounding: Rounding


def convert_weights(weight, bias, *, to: str = SIGMOID, split: str = "zero", dtype: str | None = None,
                    bias_dtype: str | None = None) -> Converted:
    """Convert a head (torch layout) exactly in float64, then round once to ``dtype`` (default: the input's;
    the bias to ``bias_dtype``, default ``dtype``).

    ``to="sigmoid"`` takes a (2, d) head to (1, d) with beta = w1 - w0 and c = b1 - b0;
    ``to="softmax"`` takes a (1, d) head to (2, d) with ``split`` (:func:`equivtest.heads.sigmoid_to_softmax`).
    A layer without bias (``bias=None``) gives one without bias: its c is 0.
    """
    w = np.asarray(weight)
    dtype = dtype_name(dtype or w.dtype)
    w64 = np.asarray(w, dtype=np.float64)
    b64 = np.zeros(w64.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    if to not in (SIGMOID, SOFTMAX):
        raise ValueError(f"unknown target {to!r}; expected 'sigmoid' or 'softmax'")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected 'zero' or 'symmetric'")
    canon = heads.Weights(w64.T, b64)
    out = heads.softmax_to_sigmoid(canon) if to == SIGMOID else heads.sigmoid_to_softmax(canon, split)
    exact_w, exact_b = out.kernel.T.copy(), out.bias.copy()
    bdt = dtype_name(bias_dtype or dtype)
    stored_w, stored_b = round_to(exact_w, dtype), round_to(exact_b, bdt)
    exact = np.concatenate([exact_w.ravel(), exact_b])
    err = np.abs(np.concatenate([stored_w.ravel(), stored_b]) - exact)
    nz = exact != 0
    rounding = Rounding(dtype if bdt == dtype else f"{dtype} (bias {bdt})", float(err.max(initial=0.0)),
                        float((err[nz] / np.abs(exact[nz])).max(initial=0.0)), max(UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF[bdt]))
    return Converted(stored_w, None if bias is None else stored_b, rounding)


def target_units(to: str) -> tuple[int, int]:
    """(rows the source head has, rows the converted head has) for a conversion ``to``."""
    return (2, 1) if to == SIGMOID else (1, 2)


def storage_logit_bound(X: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, dtype: str) -> np.ndarray:
    """Per item, the most storing the exact converted head in ``dtype`` can move its logit.

    Each stored weight is within u |beta_j| of the exact one (and the bias within u |c|), so the
    logit moves by at most ``u (sum_j |x_j beta_j| + |c|)``; the probability by a quarter of that
    (the logistic's slope is at most 1/4).  For a two-row head the logit is z1 - z0 and both rows'
    terms add.
    """
    u = UNIT_ROUNDOFF[dtype_name(dtype)]
    w = np.abs(np.asarray(weight, dtype=np.float64))
    s = np.abs(np.asarray(X, dtype=np.float64)) @ w.T  # (N, k)
    if bias is not None:
        s = s + np.abs(np.asarray(bias, dtype=np.float64))
    return u * s.sum(axis=1)
