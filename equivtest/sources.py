"""The built-in feature sources: the GAP-like surrogate and scikit-learn's sets.

Each is generated from :mod:`equivtest.rand` (or prepared with correctly rounded
sums), so its bytes are the same on every machine; ``load_features`` in
:mod:`equivtest.data` names them (``synthetic[:NxD]``, ``breast-cancer``, ``digits``).
"""

from __future__ import annotations

import functools
import math
import os
import re

import numpy as np

from .data import BUILTIN_SOURCES, DEFAULT_SEED, SURROGATE_SHAPE, Dataset, join_h5
from .errors import FeatureError


# --------------------------------------------------------------------------- surrogate
def surrogate(n: int = SURROGATE_SHAPE[0], d: int = SURROGATE_SHAPE[1], seed: int = DEFAULT_SEED,
              *, split_seed: int = DEFAULT_SEED) -> Dataset:
    """A deterministic GAP-like stand-in for ``gap_Xception.h5`` (default 25000 x 2048).

    Like globally average-pooled post-ReLU CNN features: non-negative, about a third
    exact zeros, a few strongly informative channels among many weak ones,
    per-image "content" shared across channels, and a small share of ambiguous
    images.  Classes are balanced (N // 2 of each, the odd row in class 1).

    Generative model, per image i with label s_i = +-1 and channel j::

        z_ij = mu_j + sigma_j * (a * t_i * s_i * v_j + u_i . L_j + e_ij)
        x_ij = max(z_ij, 0) * scale

    with ``t_i`` an image's class clarity (mostly ~1, a few per cent near or
    below 0), ``v_j`` a sparse-ish class direction, ``u_i . L_j`` a rank-8
    content term and ``e_ij`` white noise; ``mu_j`` is set so that about one
    third of the ``z_ij`` fall below zero.  Its constants are tuned so that the
    seed's softmax recipe (Dropout 0.5, SGD lr 1e-3, batch 128, 5 epochs) gives
    seed-like numbers at full size (see README).
    """
    if n < 4 or d < 1:
        raise FeatureError("features 'synthetic'", f"size must be at least 4 x 1, got {n} x {d}")
    from . import rand

    f32 = np.float32
    bg = rand.generator(seed, 0x5EED)
    y = np.zeros(n, dtype=np.int64)
    y[: n - n // 2] = 1
    y = y[rand.permutation(bg, n)]
    s = (2.0 * y - 1.0).astype(f32)

    # channel properties (float64, then rounded once to float32)
    sigma = rand.exp_approx(0.35 * rand.normal(bg, d)).astype(f32)
    v = rand.normal(bg, d)
    v *= (rand.uniform(bg, d) < 0.25) * 2.5 + 0.35  # a quarter strongly informative
    v = (v / math.sqrt(rand.fsum_mean(v * v))).astype(f32)
    rank = 8
    L = (rand.normal(bg, (rank, d)) * 0.45).astype(f32)

    # image properties: clarity t (a few per cent ambiguous or misleading), content u
    t = (1.0 + 0.45 * rand.normal(bg, n)).astype(f32)
    u = rand.normal(bg, (n, rank), dtype=f32)

    a = f32(_SURROGATE_SIGNAL)
    # threshold so that ~1/3 are below zero: noise sd is sqrt(1 + 0.45^2*rank + signal)
    vd = v.astype(np.float64)
    sd = np.sqrt(1.0 + 0.45**2 * rank + (_SURROGATE_SIGNAL * vd) ** 2 * (1 + 0.45**2))
    shift = (0.4307 * sd).astype(f32)  # Phi(-0.4307) = 1/3
    signal = a * t * s  # (n,) float32
    X = np.empty((n, d), dtype=f32)
    rows = max(1, (1 << 20) // d)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        z = rand.normal(bg, (hi - lo, d), dtype=f32)
        for k in range(rank):  # u @ L as rank-1 updates in a fixed order: no BLAS
            z += u[lo:hi, k:k + 1] * L[k]
        z += signal[lo:hi, None] * v
        z += shift
        z *= sigma
        np.maximum(z, f32(0.0), out=z)
        z *= f32(_SURROGATE_SCALE)
        X[lo:hi] = z
    return Dataset(X, y, source=_synthetic_name(n, d), split_seed=split_seed,
                   description=f"built-in GAP-like surrogate, seed {seed}")


# tuned constants of the surrogate (see README: measured trajectory vs the seed's)
_SURROGATE_SIGNAL = 0.45
_SURROGATE_SCALE = 0.175


def _synthetic_name(n: int, d: int) -> str:
    return "synthetic" if (n, d) == SURROGATE_SHAPE else f"synthetic:{n}x{d}"


# --------------------------------------------------------------------------- scikit-learn's sets
def sklearn_set(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(data (N, D) float64, target (N,) int64) of one of scikit-learn's bundled sets: "digits" or
    "breast_cancer".

    Read from scikit-learn's own copy of the file and parsed as its loader parses it, without importing
    scikit-learn: ``sklearn.datasets`` imports 1.5 s of modules (scipy.stats among them) to read a file of a
    few hundred kB.  Where scikit-learn lays its files out otherwise, its loader reads them.  Either way the
    numbers are the same (tests/test_portability.py pins the digests of both sources).
    """
    import importlib.util
    from pathlib import Path

    files = {"digits": "digits.csv.gz", "breast_cancer": "breast_cancer.csv"}
    if name not in files:
        raise ValueError(f"unknown scikit-learn set {name!r}; expected 'digits' or 'breast_cancer'")
    try:
        spec = importlib.util.find_spec("sklearn")  # a top-level package: found, not run
    except ValueError:  # a stand-in module without a spec in sys.modules
        spec = None
    places = list(spec.submodule_search_locations or ()) if spec is not None else []
    path = Path(places[0]) / "datasets" / "data" / files[name] if places else None
    if path is not None and path.is_file():
        stat = path.stat()
        parsed = _parse_bundled(str(path), name, stat.st_mtime_ns, stat.st_size)
        if parsed is not None:
            return parsed[0].copy(), parsed[1].copy()  # the cache's arrays stay unchanged whatever the caller does
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _parse_bundled(path: str, name: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """scikit-learn's file at ``path`` parsed as its loader parses it (None: not laid out as expected), once per
    file and version of it (``mtime_ns``, ``size``): a suite reads digits in many tests, 25 ms a time."""
    if name == "digits":
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as f:  # load_digits: np.loadtxt on the gzip stream
            table = np.loadtxt(f, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    import csv

    with open(path, encoding="utf-8") as f:  # load_csv_data: a header (N, D, class names), then rows
        rows = csv.reader(f)
        n, d = (int(v) for v in next(rows)[:2])
        table = list(rows)
    if len(table) == n and all(len(r) == d + 1 for r in table):
        return (np.asarray([r[:-1] for r in table], dtype=np.float64),
                np.asarray([r[-1] for r in table], dtype=np.int64))
    return None


def breast_cancer(*, split_seed: int = DEFAULT_SEED) -> Dataset:
    """scikit-learn's Wisconsin breast cancer set (569 x 30), standardised per feature.

    Label 1 = benign, 0 = malignant (scikit-learn's own coding).  Standardisation
    uses the whole set's mean and standard deviation (no fitting on labels).
    """
    from . import rand

    X, y = sklearn_set("breast_cancer")
    X = X - rand.column_means(X)  # sums correctly rounded: the same bits on every machine
    X = X / np.sqrt(rand.column_means(X * X))
    return Dataset(X.astype(np.float32), y, source="breast-cancer", split_seed=split_seed,
                   description="scikit-learn breast cancer (569 x 30, standardised); 1 = benign")


def digits(*, split_seed: int = DEFAULT_SEED, images: bool = False) -> Dataset:
    """scikit-learn's 8x8 digits (1797 x 64) as a binary task: even (0) vs odd (1) digit.

    Pixel values 0..16 are divided by 16.  ``images=True`` keeps them as 8 x 8 x 1
    images (NHWC), for a convolutional body.
    """
    data, target = sklearn_set("digits")
    X = (data / 16.0).astype(np.float32)
    if images:
        X = X.reshape(-1, 8, 8, 1)
    y = target % 2
    shape = "1797 x 8 x 8 x 1 images" if images else "1797 x 64"
    return Dataset(X, y, source="digits", split_seed=split_seed,
                   description=f"scikit-learn digits ({shape}, pixels / 16); label 1 = odd digit")


# --------------------------------------------------------------------------- any source by name
_SYNTH_RE = re.compile(r"^synthetic(?::(\d+)x(\d+))?$")


def load_features(source: str | os.PathLike | None = None, *, split_seed: int = DEFAULT_SEED,
                  surrogate_seed: int = DEFAULT_SEED) -> Dataset:
    """Load a features source by name.

    ``source`` is one of: ``None`` or ``"synthetic"`` (the full surrogate),
    ``"synthetic:NxD"`` (a surrogate of that size), ``"breast-cancer"``,
    ``"digits"``, a path to an h5 file in the seed's schema, or several paths
    joined with commas.
    """
    if source is None:
        source = "synthetic"
    src = str(source).strip()
    m = _SYNTH_RE.match(src)
    if m:
        n, d = (int(m.group(1)), int(m.group(2))) if m.group(1) else SURROGATE_SHAPE
        _check_memory(src, n, d)
        return surrogate(n, d, seed=surrogate_seed, split_seed=split_seed)
    if src == "breast-cancer":
        return breast_cancer(split_seed=split_seed)
    if src == "digits":
        return digits(split_seed=split_seed)
    if not src:
        raise FeatureError("features ''", "empty source; give an h5 path or one of " + ", ".join(BUILTIN_SOURCES))
    paths = [p.strip() for p in src.split(",")]
    if any(not p for p in paths):
        raise FeatureError(f"features '{src}'", "empty path in the comma-separated list")
    if len(paths) == 1 and not _looks_like_path(paths[0]):
        raise FeatureError(
            f"features '{src}'",
            "is neither an existing file nor a built-in source (" + ", ".join(BUILTIN_SOURCES) + ", synthetic:NxD)",
        )
    return join_h5(paths, split_seed=split_seed)


def _looks_like_path(s: str) -> bool:
    return os.path.exists(s) or os.sep in s or s.endswith((".h5", ".hdf5", ".hdf"))


#: bytes a surrogate of n x d needs at its peak while it is made (float32 features, the float64 and integer
#: scratch arrays of the generator, the split's copies): measured about 6x the float32 matrix; 8 for room
_SURROGATE_BYTES_PER_VALUE = 4 * 8


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no check
        return None


def _check_memory(src: str, n: int, d: int) -> None:
    """Refuse, before allocating, a surrogate larger than the memory this machine has free."""
    need = n * d * _SURROGATE_BYTES_PER_VALUE
    free = _available_memory()
    if free is not None and need > free:
        raise FeatureError(f"features '{src}'", f"needs about {need / 1e9:.1f} GB to make ({n} x {d} values), "
                                                f"but {free / 1e9:.1f} GB of memory is free")
