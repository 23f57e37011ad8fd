"""Tolerances as data, and comparisons that say where two trajectories split.

A failed comparison names the pair, the quantity, the first step (or epoch)
past tolerance, the count and share of mismatches, the max and mean absolute
and the max relative difference, and the tolerance used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .trajectory import Trajectory

#: default closeness per dtype; override per check with atol= / rtol=
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"atol": 1e-5, "rtol": 0.0},
    "float64": {"atol": 1e-10, "rtol": 0.0},
}
#: probabilities of two heads that should be the same function
PROBA_TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"atol": 1e-6, "rtol": 0.0},
    "float64": {"atol": 1e-12, "rtol": 0.0},
}

#: How far a negative control must miss: more than 100 x the tolerance it is checked at.  The one reason:
#: a break must not be confusable with a pass on any machine.  Every equivalence that holds lands at or below
#: 1/10 of its tolerance on every kernel set and thread count we measured (float32: largest softmax/sigmoid
#: step-loss gap 1.8e-7 against 1e-5), so a control at 100 x sits at least three orders of magnitude above
#: the largest agreement, and no summation order, thread count or CPU can move one across the other.
CONTROL_MARGIN = 100.0

#: what a trajectory comparison looks at, and the unit its index counts
FIELDS = {"step_loss": "step", "val_loss": "epoch", "val_accuracy": "epoch"}


def tolerance(dtype: str, table: dict | None = None, **override) -> dict[str, float]:
    tol = dict((table or TOLERANCES)[str(dtype)])
    tol.update({k: v for k, v in override.items() if v is not None})
    return tol


@dataclass
class Comparison:
    """The outcome of comparing two 1-D series elementwise."""

    name: str
    unit: str
    n: int
    atol: float
    rtol: float
    n_mismatch: int
    first: int | None
    max_abs: float
    mean_abs: float
    max_rel: float
    a_at_first: float | None = None
    b_at_first: float | None = None

    @property
    def ok(self) -> bool:
        return self.n_mismatch == 0

    def describe(self) -> str:
        s = (
            f"{self.name}: max |diff| {self.max_abs:.3g} (mean {self.mean_abs:.3g}, max rel {self.max_rel:.3g}) "
            f"over {self.n} {self.unit}s; tolerance atol={self.atol:g} rtol={self.rtol:g}"
        )
        if not self.ok:
            share = self.n_mismatch / max(self.n, 1)
            s += (
                f"; {self.n_mismatch} {self.unit}s ({share:.1%}) past it, first at {self.unit} {self.first + 1} "
                f"({self.a_at_first!r} vs {self.b_at_first!r})"
            )
        return s


def compare_series(a, b, *, name: str = "values", unit: str = "index", atol: float = 0.0,
                   rtol: float = 0.0) -> Comparison:
    """Elementwise |a - b| <= atol + rtol * |b|, after checking the shapes agree."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shapes differ: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    bad = ~(diff <= atol + rtol * np.abs(b))  # NaN counts as bad
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(np.abs(b) > 0, diff / np.abs(b), np.where(diff > 0, np.inf, 0.0))
    first = int(np.argmax(bad)) if bad.any() else None
    return Comparison(
        name=name, unit=unit, n=int(a.size), atol=atol, rtol=rtol, n_mismatch=int(bad.sum()), first=first,
        max_abs=float(np.nanmax(diff)) if diff.size and not np.isnan(diff).all() else (np.nan if diff.size else 0.0),
        mean_abs=float(np.nanmean(diff)) if diff.size else 0.0,
        max_rel=float(np.nanmax(rel)) if rel.size else 0.0,
        a_at_first=None if first is None else float(a.flat[first]),
        b_at_first=None if first is None else float(b.flat[first]),
    )


@dataclass
class Divergence:
    """Where two runs split: the first step past tolerance and the parameters that differ most there.

    Parameters are compared after that step's update, in sigmoid coordinates
    (beta = w1 - w0, c = b1 - b0 for a softmax head), so any two heads compare.
    """

    step: int
    loss_a: float
    loss_b: float
    top: list[tuple[str, float, float]]  # (parameter, value in a, value in b), largest |diff| first

    def describe(self) -> str:
        parts = ", ".join(f"{n} {va:.6g} vs {vb:.6g} (diff {va - vb:.3g})" for n, va, vb in self.top)
        return f"split at step {self.step + 1}; parameters differing most after it: {parts}"

    def to_dict(self) -> dict:
        """For report.json: ``step`` counts from 1, as every message and plot does (``self.step`` is the index)."""
        return {"step": self.step + 1, "loss_a": self.loss_a, "loss_b": self.loss_b,
                "top": [{"parameter": n, "a": va, "b": vb} for n, va, vb in self.top]}


def locate_divergence(a: Trajectory, b: Trajectory, *, atol: float, top: int = 5) -> Divergence | None:
    """The first step where |d step loss| > atol and, if both runs kept a history, the top parameters."""
    gap = np.abs(a.step_loss - b.step_loss)
    bad = ~(gap <= atol)
    if not bad.any():
        return None
    k = int(np.argmax(bad))
    rows: list[tuple[str, float, float]] = []
    if a.history is not None and b.history is not None and a.history.shape == b.history.shape:
        ha, hb = a.history[k], b.history[k]
        d = len(ha) - 1
        for j in np.argsort(-np.abs(ha - hb), kind="stable")[:top]:
            rows.append((f"beta[{j}]" if j < d else "c", float(ha[j]), float(hb[j])))
    return Divergence(k, float(a.step_loss[k]), float(b.step_loss[k]), rows)


@dataclass
class TrajectoryComparison:
    """Per-field comparisons of trajectories ``a`` and ``b`` (labels name the pair)."""

    a_label: str
    b_label: str
    fields: dict[str, Comparison] = field(default_factory=dict)
    step_gap: np.ndarray | None = None
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.fields.values())

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.fields.values()), default=0.0)

    def describe(self) -> str:
        head = f"{self.a_label} vs {self.b_label}: " + ("agree" if self.ok else "SPLIT")
        lines = [head] + ["  " + c.describe() for c in self.fields.values()]
        if self.divergence is not None and self.divergence.top:
            lines.append("  " + self.divergence.describe())
        return "\n".join(lines)


def compare_trajectories(a: Trajectory, b: Trajectory, *, atol: float | None = None, rtol: float | None = None,
                         dtype: str | None = None, fields=tuple(FIELDS)) -> TrajectoryComparison:
    """Compare per-step loss, per-epoch val_loss and val_accuracy of two runs.

    The tolerance defaults to :data:`TOLERANCES` for ``dtype`` (or the coarser of
    the two runs' dtypes).
    """
    if dtype is None:
        dts = {a.meta.get("dtype", "float32"), b.meta.get("dtype", "float32")}
        dtype = "float32" if "float32" in dts else "float64"
    tol = tolerance(dtype, atol=atol, rtol=rtol)
    out = TrajectoryComparison(a.label, b.label)
    for name in fields:
        out.fields[name] = compare_series(getattr(a, name), getattr(b, name), name=name, unit=FIELDS.get(name, "index"),
                                          **tol)
    if a.step_loss.shape == b.step_loss.shape:
        out.step_gap = np.abs(a.step_loss - b.step_loss)
        out.divergence = locate_divergence(a, b, atol=tol["atol"])
    return out


def assert_trajectories_close(a: Trajectory, b: Trajectory, **kw) -> TrajectoryComparison:
    """Assert two runs agree; the failure says which pair, where it split and by how much."""
    __tracebackhide__ = True
    cmp = compare_trajectories(a, b, **kw)
    if not cmp.ok:
        raise AssertionError(cmp.describe())
    return cmp


def assert_trajectories_differ(a: Trajectory, b: Trajectory, *, factor: float = CONTROL_MARGIN,
                               **kw) -> TrajectoryComparison:
    """Negative control: the runs must differ by more than ``factor`` x the tolerance (:data:`CONTROL_MARGIN`)."""
    __tracebackhide__ = True
    cmp = compare_trajectories(a, b, fields=("step_loss",), **kw)
    c = cmp.fields["step_loss"]
    limit = factor * (c.atol or 1.0)
    if not c.max_abs > limit:
        raise AssertionError(
            f"negative control failed: {cmp.a_label} vs {cmp.b_label} should differ by more than "
            f"{factor:g} x atol = {limit:.3g}, but max |d step_loss| = {c.max_abs:.3g}"
        )
    return cmp


def assert_allclose(a, b, *, name: str = "values", atol: float = 0.0, rtol: float = 0.0) -> Comparison:
    """``numpy.testing``-style closeness with this module's failure message."""
    __tracebackhide__ = True
    c = compare_series(np.ravel(a), np.ravel(b), name=name, atol=atol, rtol=rtol)
    if not c.ok:
        raise AssertionError(c.describe())
    return c
