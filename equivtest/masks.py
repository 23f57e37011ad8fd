"""The dropout-mask engine: one epoch's keep-masks as packed random bits, unpacked by row range.

A :class:`~equivtest.plan.Plan` decides which bits (``Plan.masks_for``); this
module only turns an epoch's raw SFC64 words into keep-masks, whole or a range
of rows at a time, and into ``scale``-or-0 arrays for a one-multiply step.
Rate 0.5 uses one bit per unit; a keep probability that is a multiple of 1/256
one byte per unit; any other one 16 bits per unit.
"""

from __future__ import annotations

import numpy as np


class EpochMasks:
    """One epoch's keep-masks, drawn at once as raw random bits and unpacked by row range.

    Rate 0.5 draws one bit per unit (n*d/8 bytes for the epoch); a keep
    probability that is a multiple of 1/256 one byte per unit; any other one
    16 bits per unit.  ``rows(s, t)`` is a pure function of the draw, so masks
    unpacked in pieces equal the whole epoch's rows s..t exactly.
    """

    def __init__(self, g: np.random.SFC64, n: int, d: int, keep: float):
        self.n, self.d = n, d
        self._tables: dict = {}
        size = n * d
        t8 = keep * 256
        if t8 == 128:  # rate 0.5: one random bit per unit
            self._kind, self._raw = "bit", g.random_raw(-(-size // 64)).view(np.uint8)
        elif t8 == int(t8):  # exact with one byte per unit
            self._kind, self._raw = "byte", g.random_raw(-(-size // 8)).view(np.uint8)[:size]
            self._threshold = np.uint16(t8)
        else:
            self._kind, self._raw = "short", g.random_raw(-(-size // 4)).view(np.uint16)[:size]
            self._threshold = np.uint32(round(keep * 65536))

    def rows(self, s: int, t: int, out: np.ndarray | None = None) -> np.ndarray:
        """Keep-masks (t - s, d) bool of the rows s..t of the epoch's order.

        ``out``, a C-contiguous bool array of that shape, receives them without
        a new allocation (worth it in a loop on a worker thread, whose freed
        memory glibc hands back to the system, so every new array faults in).
        """
        if not 0 <= s <= t <= self.n:
            raise IndexError(f"rows {s}..{t} outside the epoch's 0..{self.n}")
        shape = (t - s, self.d)
        if out is not None and (out.shape != shape or out.dtype != bool or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous bool array of shape {shape}")
        lo, hi = s * self.d, t * self.d
        if self._kind == "bit":
            skip = lo % 8
            if out is not None and skip == 0 and hi % 8 == 0:  # whole bytes into ``out``: a table lookup
                _BIT_ROWS.take(self._raw[lo // 8: hi // 8], out=out.reshape(-1).view(np.uint64), mode="clip")
                return out
            mask = np.unpackbits(self._raw[lo // 8: -(-hi // 8)], count=skip + hi - lo)[skip:].view(bool)
        else:
            mask = np.less(self._raw[lo:hi], self._threshold, out=None if out is None else out.reshape(-1))
        if out is None:
            return mask.reshape(shape)
        if not np.shares_memory(mask, out):
            out.reshape(-1)[...] = mask
        return out


    def scaled_rows(self, s: int, t: int, value: float, out: np.ndarray) -> np.ndarray:
        """Rows s..t of the masks as ``value`` where kept and 0 elsewhere, written into ``out``.

        ``out`` is a C-contiguous float array of shape (t - s, d); ``value`` is
        rounded to its dtype once, so ``x * out`` equals ``(x * value) * keep``
        bit for bit.  Whole bytes of bits, and byte or 16-bit draws, are one
        table lookup with no temporary array.
        """
        shape = (t - s, self.d)
        if not 0 <= s <= t <= self.n:
            raise IndexError(f"rows {s}..{t} outside the epoch's 0..{self.n}")
        if out.shape != shape or out.dtype.kind != "f" or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float array of shape {shape}")
        lo, hi = s * self.d, t * self.d
        flat = out.reshape(-1)
        if self._kind == "bit" and lo % 8 == 0 and hi % 8 == 0:
            np.take(self._table(value, out.dtype), self._raw[lo // 8: hi // 8], axis=0,
                    out=flat.reshape(-1, 8), mode="clip")
        elif self._kind == "bit":
            np.multiply(self.rows(s, t).reshape(-1), out.dtype.type(value), out=flat)
        else:
            np.take(self._table(value, out.dtype), self._raw[lo:hi], out=flat, mode="clip")
        return out

    def _table(self, value: float, dtype: np.dtype) -> np.ndarray:
        """The lookup table from a raw draw to ``value`` or 0, in ``dtype``."""
        key = (float(value), np.dtype(dtype).str)
        if key not in self._tables:
            v = np.dtype(dtype).type(value)
            if self._kind == "bit":
                table = _BIT_ROWS.view(np.uint8).reshape(256, 8).astype(dtype) * v
            else:
                table = (np.arange(256 if self._kind == "byte" else 65536) < self._threshold).astype(dtype) * v
            self._tables[key] = table
        return self._tables[key]


# byte b -> its 8 bits, most significant first, as 8 bytes of 0/1 (np.unpackbits' order)
_BIT_ROWS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).view(np.uint64)[:, 0].copy()
