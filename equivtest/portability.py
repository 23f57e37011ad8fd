"""Digests of everything equivtest generates, and the kernel sets they are checked under.

``input_digests()`` hashes (SHA-256 of the raw bytes, with dtype and shape) every
input equivtest makes itself: the built-in features at several sizes, their
splits, scikit-learn's sets as equivtest prepares them, initial weights, batch
orders and dropout masks at several rates.  They are the same on every CPU,
BLAS kernel, SIMD level, thread count and NumPy version (see
:mod:`equivtest.rand`); the repository's ``tests/test_portability.py`` pins them
and regenerates them under :data:`KERNEL_SETS`.

Compare two machines by hand::

    python -m equivtest.portability > here.json     # on each machine, then diff
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

#: the built-in feature sources whose bytes are pinned (the suite's default, the regression data, the seed's size)
SOURCES = ("synthetic:400x24", "synthetic:2000x128", "synthetic", "breast-cancer", "digits")


def digest(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and little-endian bytes (the same on any byte order)."""
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def input_digests(sources=SOURCES) -> dict[str, str]:
    """name -> digest of every generated input (features, labels, split, weights, orders, masks)."""
    from .plan import Plan
    from .sources import load_features, surrogate

    out: dict[str, str] = {}
    for src in sources:
        ds = load_features(src)
        out[f"{src}/X"] = digest(ds.X)
        out[f"{src}/y"] = digest(ds.y)
        tr, va = ds.split_indices
        out[f"{src}/split"] = digest(np.concatenate([tr, va]))
    ds = surrogate(400, 24, seed=9)  # the regression baselines' data
    out["surrogate(400x24, seed 9)/X"] = digest(ds.X)
    plan = Plan(epochs=2)
    for head in ("softmax", "sigmoid"):
        for d in (24, 2048):
            w = plan.initial_weights(head, d)
            out[f"init/{head}/d={d}"] = digest(np.concatenate([w.kernel.ravel(), w.bias]))
        out[f"init/{head}/own stream"] = digest(plan.initial_weights(head, 128, stream=1).kernel)
    for epoch in (0, 1):
        out[f"order/epoch {epoch}/n=20000"] = digest(plan.batch_order(epoch, 20000))
    for rate in (0.5, 0.25, 0.3):
        plan = Plan(dropout=rate, epochs=2)
        for epoch in (0, 1):
            out[f"masks/rate {rate}/epoch {epoch}/1600x128"] = digest(plan.epoch_masks(epoch, 1600, 128))
        out[f"masks/rate {rate}/independent stream"] = digest(plan.replace(mask_stream=1).epoch_masks(0, 100, 24))
    return out


def main(argv=None) -> int:
    """``python -m equivtest.portability [--out FILE] [--import-frameworks]``: the digests as JSON."""
    import argparse

    from . import atomic

    ap = argparse.ArgumentParser(
        prog="python -m equivtest.portability",
        description="Print the SHA-256 digests of every input equivtest generates (built-in features, splits, initial "
                    "weights, batch orders, dropout masks), to compare two machines: they must be identical.",
        epilog="exit codes: 0 written; 2 a usage error (one line)")
    ap.add_argument("--out", metavar="FILE", default=None,
                    help="write the JSON to FILE (atomically; its folder must exist) instead of stdout")
    ap.add_argument("--import-frameworks", action="store_true",
                    help="import torch and tensorflow first, where installed (importing one must not change a bit)")
    args = ap.parse_args(argv)
    if args.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        print(f"python -m equivtest.portability: error: --out '{args.out}': its folder does not exist", file=sys.stderr)
        return 2
    if args.import_frameworks:
        import importlib.util

        from .backends import before_tensorflow

        before_tensorflow()  # torch (and Triton) first, as every path to TensorFlow loads them
        if importlib.util.find_spec("tensorflow") is not None:
            __import__("tensorflow")
    text = json.dumps(input_digests(), indent=1, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        atomic.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
