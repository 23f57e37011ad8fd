"""Feature data: ``Dataset``, the seed's h5 schema and every input check, the split, ``load_features``.

The built-in sources (the GAP-like surrogate, scikit-learn's sets) and
``load_features``, which reads any source by name, are in :mod:`equivtest.sources`,
which imports this module (never the other way round).

Every check on user input happens here, once, and fails with a one-line
:class:`~equivtest.errors.FeatureError` naming the file, the dataset and the problem.
Nothing here writes to or modifies a user's file (h5 files are opened read-only),
except :func:`write_h5`, which writes a new file the caller names.

The seed's schema (``gap_Xception.h5``): ``train`` (N, D) numeric, ``label`` (N,)
holding only 0 and 1 (any integer, bool or float dtype), optional ``test`` (M, D).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import FeatureError

#: names accepted wherever a features source is asked for (besides h5 paths)
BUILTIN_SOURCES = ("synthetic", "breast-cancer", "digits")

#: the seed's split: 80 % train, 20 % validation, stratified
VAL_FRACTION = 0.2
#: the seed's numpy seed, used for the split and the surrogate unless told otherwise
DEFAULT_SEED = 20180520
#: the surrogate's full size stands in for gap_Xception.h5 (25000 x 2048)
SURROGATE_SHAPE = (25000, 2048)


class _Rows:
    """A dataset's ``X`` or ``y`` at the split's train (0) or val (1) rows: C-contiguous, made once and kept
    in the instance (as ``functools.cached_property`` keeps a value)."""

    def __init__(self, array: str, part: int):
        self.array, self.part = array, part

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None) -> np.ndarray:
        if obj is None:
            return self
        rows = np.ascontiguousarray(getattr(obj, self.array)[obj.split_indices[self.part]])
        obj.__dict__[self.name] = rows
        return rows


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``X`` (N, D) float32 and labels ``y`` (N,) int64 in {0, 1}, split once.

    ``X_train, y_train, X_val, y_val`` are the stratified, seeded 80/20 split
    (computed on first use and kept).  ``X_test`` is the unlabelled ``test`` set of
    an h5 file, if it had one.  ``source`` says where the data came from (a path,
    several joined with commas, or a built-in name).
    """

    X: np.ndarray
    y: np.ndarray
    source: str = "arrays"
    split_seed: int = DEFAULT_SEED
    val_fraction: float = VAL_FRACTION
    X_test: np.ndarray | None = None
    description: str = ""
    _split: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self):
        X = np.ascontiguousarray(self.X, dtype=np.float32)
        y = np.ascontiguousarray(self.y, dtype=np.int64)
        _check_arrays(X, y, self.source)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)

    # -- the split ---------------------------------------------------------------
    @cached_property
    def split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(train_idx, val_idx): stratified, seeded, sorted within each part."""
        if self._split is not None:
            return self._split
        return stratified_split(self.y, self.val_fraction, self.split_seed, where=_where(self.source))

    X_train = _Rows("X", 0)
    y_train = _Rows("y", 0)
    X_val = _Rows("X", 1)
    y_val = _Rows("y", 1)

    def features(self, part: str, dtype: str = "float32") -> np.ndarray:
        """``X_train`` or ``X_val`` (``part`` = "train" / "val") in ``dtype``, converted once and kept."""
        base = self.X_train if part == "train" else self.X_val
        if np.dtype(dtype) == base.dtype:
            return base
        key = (part, np.dtype(dtype).name)
        cache = self.__dict__.setdefault("_converted", {})
        if key not in cache:
            cache[key] = base.astype(dtype)
        return cache[key]

    @property
    def n_features(self) -> int:
        """Values per row: D for feature vectors, H * W * C for images."""
        return int(np.prod(self.X.shape[1:]))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One row's shape: (D,) or (H, W, C)."""
        return tuple(int(s) for s in self.X.shape[1:])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.X.shape[0]), self.n_features)

    def summary(self) -> str:
        n_tr, n_va = len(self.split_indices[0]), len(self.split_indices[1])
        return f"{self.source} ({self.shape[0]} x {self.shape[1]}; {n_tr} train / {n_va} val)"


# --------------------------------------------------------------------------- split
#: rows of each class the stratified split needs: one for training, one for validation
MIN_ROWS_PER_CLASS = 2


def stratified_split(y: np.ndarray, val_fraction: float = VAL_FRACTION, seed: int = DEFAULT_SEED,
                     *, where: str = "features"):
    """The seed's 80/20 split, stratified on the label, reproducible from ``seed``.

    Each class's rows are permuted by :func:`equivtest.rand.permutation` and the
    first ``round(n_c * val_fraction)`` (at least one, at most ``n_c - 1``) go to
    validation, so every class is in both parts and the indices have the same
    bytes on every machine and library version (scikit-learn's splitter is not
    promised stable across releases).  Indices come back sorted so the training
    order is decided by the :class:`~equivtest.plan.Plan` alone.

    A class with fewer than :data:`MIN_ROWS_PER_CLASS` rows is a
    :class:`~equivtest.errors.FeatureError` naming ``where`` and the counts.
    """
    from . import rand

    y = np.asarray(y)
    counts = np.bincount(y.astype(np.int64), minlength=2)
    if counts.min() < MIN_ROWS_PER_CLASS:
        c = int(np.argmin(counts))
        raise FeatureError(
            where,
            f"class {c} has {counts[c]} row(s) (class counts {counts[0]} / {counts[1]}); the stratified "
            f"{round(100 * (1 - val_fraction))}/{round(100 * val_fraction)} split needs at least "
            f"{MIN_ROWS_PER_CLASS} rows of each class, one for training and one for validation",
        )
    bg = rand.generator(seed, 0x5B17)
    train, val = [], []
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        rows = rows[rand.permutation(bg, len(rows))]
        n_val = min(len(rows) - 1, max(1, int(math.floor(len(rows) * val_fraction + 0.5))))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# --------------------------------------------------------------------------- checks
def _check_arrays(X: np.ndarray, y: np.ndarray, where: str) -> None:
    """Checks that need the arrays only (already converted to float32 / int64)."""
    if X.ndim not in (2, 4):
        raise FeatureError(where, f"features must be vectors (N, D) or images (N, H, W, C), got shape {X.shape}")
    if X.shape[0] == 0:
        raise FeatureError(where, "features have zero rows")
    if X.shape[1] == 0:
        raise FeatureError(where, "features have zero columns (D = 0)")
    if y.shape != (X.shape[0],):
        raise FeatureError(where, f"labels have shape {y.shape} but features have {X.shape[0]} rows")


def _problem_with_train(train) -> str | None:
    if train.ndim not in (2, 4):
        return f"dataset 'train' must be 2-D features (N, D) or 4-D images (N, H, W, C), got shape {train.shape}"
    if train.dtype.kind not in "biuf":
        return f"dataset 'train' is not numeric (dtype {train.dtype})"
    if train.shape[0] == 0:
        return "dataset 'train' has zero rows"
    if 0 in train.shape[1:]:
        return f"dataset 'train' has zero features (shape {train.shape})"
    return None


def _nonfinite_problem(X: np.ndarray, name: str = "train") -> str | None:
    finite = np.isfinite(X)
    if finite.all():
        return None
    bad = np.argwhere(~finite)
    first = tuple(int(i) for i in bad[0])
    kind = "NaN" if np.isnan(X[first]) else "infinite"
    where = f"column {first[1]}" if len(first) == 2 else f"position {first[1:]}"
    return (
        f"dataset '{name}' has {len(bad)} non-finite value(s) "
        f"(first: {kind} at row {first[0]}, {where})"
    )


def _labels_problem(label: np.ndarray, n_rows: int) -> tuple[str | None, np.ndarray | None]:
    """Return (problem, labels as int64) for a raw ``label`` dataset."""
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 1:
        return f"dataset 'label' must be 1-D (N,), got shape {label.shape}", None
    if label.dtype.kind not in "biuf":
        return f"dataset 'label' is not numeric (dtype {label.dtype})", None
    if label.shape[0] != n_rows:
        return f"dataset 'label' has {label.shape[0]} rows but 'train' has {n_rows}", None
    ok = (label == 0) | (label == 1)
    if not ok.all():
        i = int(np.argmin(ok))
        bad = np.unique(label[~ok])
        shown = ", ".join(repr(v.item()) for v in bad[:3]) + (", ..." if len(bad) > 3 else "")
        return (
            f"dataset 'label' must hold only 0 and 1, found {shown} "
            f"({int((~ok).sum())} row(s), first at row {i})"
        ), None
    y = label.astype(np.int64)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        only = int(np.argmax(counts))
        return (
            f"dataset 'label' holds only class {only} ({counts[only]} rows); "
            "both classes 0 and 1 are needed"
        ), None
    return None, y


# --------------------------------------------------------------------------- h5
def read_h5(path: str | os.PathLike, *, split_seed: int = DEFAULT_SEED) -> Dataset:
    """Read one features file in the seed's schema, checking everything once.

    The file is opened read-only; nothing in it is changed.
    """
    X, y, X_test = _read_h5_arrays(Path(path))
    return Dataset(X, y, source=str(path), split_seed=split_seed, X_test=X_test,
                   description=f"h5 features file {path}")


def _read_h5_arrays(path: Path):
    where = f"features file '{path}'"
    if not path.exists():
        raise FeatureError(where, "no such file")
    if path.is_dir():
        raise FeatureError(where, "is a directory, not an HDF5 file")
    import h5py

    try:
        is_h5 = h5py.is_hdf5(str(path))
    except OSError as exc:  # unreadable (permissions)
        raise FeatureError(where, f"cannot be read ({exc.strerror or exc})") from None
    if not is_h5:
        raise FeatureError(where, "is not an HDF5 file")
    try:
        f = h5py.File(str(path), "r")
    except OSError as exc:
        raise FeatureError(where, f"cannot be opened as HDF5 ({exc})") from None
    with f:
        names = sorted(f.keys())
        for required in ("train", "label"):
            if required not in f or not isinstance(f[required], h5py.Dataset):
                found = ", ".join(repr(n) for n in names) or "nothing"
                raise FeatureError(where, f"dataset '{required}' is missing (found: {found})")
        train_ds, label_ds = f["train"], f["label"]
        problem = _problem_with_train(train_ds)
        if problem:
            raise FeatureError(where, problem)
        n = train_ds.shape[0]
        label = label_ds[()]
        problem, y = _labels_problem(np.asarray(label), n)
        if problem:
            raise FeatureError(where, problem)
        X = np.asarray(train_ds[()], dtype=np.float32)
        problem = _nonfinite_problem(X, "train")
        if problem:
            raise FeatureError(where, problem)
        X_test = None
        if "test" in f:
            t = f["test"]
            if not isinstance(t, h5py.Dataset) or t.ndim != X.ndim or t.dtype.kind not in "biuf":
                raise FeatureError(where, f"dataset 'test' must be a numeric {X.ndim}-D array like 'train', "
                                          f"got {getattr(t, 'shape', '?')}")
            if t.shape[1:] != X.shape[1:]:
                raise FeatureError(where, f"dataset 'test' has rows of shape {t.shape[1:]} but 'train' has {X.shape[1:]}")
            X_test = np.asarray(t[()], dtype=np.float32)
    return X, y, X_test


def join_h5(paths, *, split_seed: int = DEFAULT_SEED) -> Dataset:
    """Join several features files along the feature axis, in the order given.

    The seed's author joined ResNet50, Xception and InceptionV3 features this way.
    All files must have the same number of rows and identical labels.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return read_h5(paths[0], split_seed=split_seed)
    parts = [_read_h5_arrays(p) for p in paths]
    for p, part in zip(paths, parts):
        if part[0].ndim != 2:
            raise FeatureError(f"features file '{p}'", "holds images (N, H, W, C); only feature vectors can be joined")
    X0, y0, _ = parts[0]
    for p, (X, y, _) in zip(paths[1:], parts[1:]):
        where = f"features files '{paths[0]}' and '{p}'"
        if X.shape[0] != X0.shape[0]:
            raise FeatureError(
                where, f"cannot be joined: dataset 'train' has {X0.shape[0]} rows in '{paths[0]}' but {X.shape[0]} in '{p}'"
            )
        if not np.array_equal(y, y0):
            i = int(np.argmax(y != y0))
            raise FeatureError(
                where, f"cannot be joined: dataset 'label' differs (first at row {i}: {y0[i]} vs {y[i]})"
            )
    X = np.concatenate([part[0] for part in parts], axis=1)
    tests = [part[2] for part in parts]
    X_test = None
    if all(t is not None for t in tests) and len({t.shape[0] for t in tests}) == 1:
        X_test = np.concatenate(tests, axis=1)
    src = ",".join(str(p) for p in paths)
    return Dataset(X, y0, source=src, split_seed=split_seed, X_test=X_test,
                   description=f"{len(paths)} h5 features files joined along the feature axis")


def write_h5(dataset: Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``dataset`` in the seed's schema (``train`` float32, ``label`` uint8, ``test``).

    Refuses to replace an existing file unless ``overwrite`` is set, and a folder
    that does not exist; written atomically (complete or absent).
    """
    import h5py

    from . import atomic

    path = Path(path)
    if path.exists() and not overwrite:
        raise FeatureError(f"features file '{path}'", "already exists (pass overwrite=True to replace it)")
    if not path.parent.is_dir():
        raise FeatureError(f"features file '{path}'", f"its folder '{path.parent}' does not exist")
    with atomic.atomic_path(path) as tmp, h5py.File(str(tmp), "w") as f:
        f.create_dataset("train", data=dataset.X.astype(np.float32, copy=False))
        f.create_dataset("label", data=dataset.y.astype(np.uint8))
        if dataset.X_test is not None:
            f.create_dataset("test", data=dataset.X_test.astype(np.float32, copy=False))
        f.attrs["source"] = dataset.source
    return path


def _where(source: str) -> str:
    """How an error names a source: ``features file 'x.h5'`` or ``features 'digits'``."""
    if source in BUILTIN_SOURCES or source.startswith("synthetic") or source == "arrays":
        return f"features '{source}'"
    return f"features file{'s' if ',' in source else ''} '{source}'"
