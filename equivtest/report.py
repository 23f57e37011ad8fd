"""Turn an :class:`~equivtest.experiment.ExperimentResult` into a table, Markdown, JSON and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import atomic
from .compare import CONTROL_MARGIN, TOLERANCES
from .experiment import RUNS, ExperimentResult

RUN_LABELS = {"softmax": "softmax", "sigmoid_converted": "sigmoid (conv)", "sigmoid_random": "sigmoid (rand)"}
REPORT_KEYS = ("equivtest_version", "created", "environment", "features", "plan", "masks", "lr", "network",
               "data_parallel", "backends", "checks", "seed", "passed", "interrupted", "wall_s")


def fmt_value(v: float) -> str:
    """A check's value or tolerance as the reports print it (docs/performance.md's tables too)."""
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    if isinstance(v, (int, np.integer)) or float(v).is_integer() and abs(v) >= 1:
        return f"{int(v)}"
    return f"{v:.3g}" if abs(v) < 1e-3 else f"{v:.4f}"


def epoch_rows(res: ExperimentResult, backend: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the seed-style val_loss table for one backend."""
    runs = res.results[backend].runs
    seed = res.to_dict()["seed"] if res.seed_matches_recipe() else None
    header = ["epoch"] + [f"{RUN_LABELS[r]} val_loss" for r in RUNS]
    if seed:
        header += [f"seed {RUN_LABELS[r]}" for r in RUNS]
    rows = []
    for e in range(res.plan.epochs):
        row = [str(e + 1)]
        for r in RUNS:
            t = runs.get(r)
            row.append(f"{t.val_loss[e]:.4f}" if t is not None and e < len(t.val_loss) else "-")
        if seed:
            row += [f"{seed['runs'][r]['val_loss'][e]:.4f}" for r in RUNS]
        rows.append(row)
    return header, rows


CHECK_HEADER = ["check", "backend", "value", "op", "tolerance", "verdict"]


def check_row(c: dict) -> list[str]:
    """One check as ``report.json`` holds it (``Check.to_dict``), as a row under :data:`CHECK_HEADER`."""
    return [c["name"], c["backend"], fmt_value(c["value"]), c["op"], fmt_value(c["tolerance"]),
            "PASS" if c["passed"] else "FAIL"]


def check_rows(res: ExperimentResult) -> tuple[list[str], list[list[str]]]:
    return CHECK_HEADER, [check_row(c.to_dict()) for c in res.checks]


def _text_table(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def md_table(header, rows) -> str:
    """A Markdown table (report.md, docs/performance.md's tables)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _title(res: ExperimentResult) -> str:
    p = res.plan
    f = res.dataset
    shape = " x ".join(str(k) for k in f["shape"])  # (N, D) features or (N, H, W, C) images
    return (f"features {f['source']} ({shape}; {f['n_train']} train / {f['n_val']} val); "
            f"{p.optimizer.label} lr {p.lr:g} (sigmoid {res.lr_factor * p.lr:g}), batch {p.batch_size}, {p.epochs} epochs, "
            f"dropout {p.dropout:g}, masks {res.masks}, seed {p.seed}, {p.dtype}"
            + ("" if res.data_parallel == 1 else f"; data-parallel over {res.data_parallel} workers")
            + ("" if res.body is None else f"; network: body {res.body}, {res.lr_rule} rule "
               f"(sigmoid network: body x{res.lr_factor if res.lr_rule == 'global' else 1:g}, "
               f"head x{res.lr_factor:g})"))


def text(res: ExperimentResult) -> str:
    parts = [_title(res), ""]
    for name, br in res.results.items():
        parts.append(f"[{name} on {br.device}: {br.environment.get('version', '')}]")
        parts.append(_text_table(*epoch_rows(res, name)))
        parts.append("")
    parts.append(_text_table(*check_rows(res)))
    for c in res.checks:
        if c.op == "never" or (not c.passed and c.detail):  # a stopped run or a failed check: say why
            parts.append(f"{'FAIL ' if c.op != 'never' else ''}{c.name} ({c.backend}): {c.detail}")
    n_fail = sum(not c.passed for c in res.checks)
    verdict = "INTERRUPTED" if res.interrupted else ("all checks pass" if not n_fail else f"{n_fail} check(s) FAILED")
    parts.append("")
    parts.append(f"{verdict} ({len(res.checks)} checks, {res.wall_s:.1f} s)")
    return "\n".join(parts)


def markdown(res: ExperimentResult, plots=()) -> str:
    n_fail = sum(not c.passed for c in res.checks)
    status = "interrupted" if res.interrupted else ("all checks pass" if not n_fail else f"{n_fail} check(s) failed")
    parts = ["# equivtest report", "", f"**{status}** ({len(res.checks)} checks, {res.wall_s:.1f} s)", "",
             _title(res), ""]
    for name, br in res.results.items():
        parts += [f"## {name} on {br.device}", "", f"{br.environment.get('version', '')}", "",
                  md_table(*epoch_rows(res, name)), ""]
    parts += ["## Checks", "", md_table(*check_rows(res)), ""]
    for c in res.checks:
        if c.detail:
            parts.append(f"- `{c.name}` ({c.backend}): {c.detail}")
    if plots:
        parts += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(parts) + "\n"


def write_json(res: ExperimentResult, path: Path) -> dict:
    d = res.to_dict()
    atomic.write_text(path, json.dumps(d, indent=1, default=float))
    return d


# ------------------------------------------------------------------------------------- plots
#: the plots ``plot`` writes, in order
PLOT_FILES = ("loss_curves.png", "val_loss_diff.png", "step_loss_gap.png")
COLORS = {"softmax": "tab:blue", "sigmoid_converted": "tab:orange", "sigmoid_random": "tab:green"}
BACKEND_STYLES = ["-", "--", ":", "-."]
#: one marker per backend, and a small horizontal offset each, so that backends whose curves coincide stay visible
BACKEND_MARKERS = ["o", "s", "^", "D", "v"]
#: below this, a difference is drawn on the symlog axis's linear part: 0 is drawn at 0 ("exact"), not at 1e-17
LINTHRESH = 1e-12


def _rule_title(res) -> str:
    if res.body is None:
        return f"softmax @ lr vs sigmoid @ {res.lr_factor:g} x lr (converted and random init)"
    body = res.lr_factor if res.lr_rule == "global" else 1
    return (f"{res.body} network, {res.lr_rule} rule: softmax at lr\nvs sigmoid (converted and random init) with "
            f"the head at {res.lr_factor:g} x lr, the body at {body:g} x lr")


def _symlog(ax) -> None:
    ax.set_yscale("symlog", linthresh=LINTHRESH)
    ax.axhline(0.0, color="black", lw=0.5, ls=":")
    ax.text(1.0, 0.0, " 0 (exact)", fontsize=7, va="bottom", ha="left", transform=ax.get_yaxis_transform())


def _save(fig, path: Path) -> None:
    """Save a figure atomically and free it."""
    import matplotlib.pyplot as plt

    try:
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def plot(res: ExperimentResult, out: Path, between=None) -> list[Path]:
    """Draw the seed's two figures (and the per-step gap); return the files written.

    Each file is written atomically; ``between()``, if given, is called after each one.
    """
    between = between or (lambda: None)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in res.results.items() if r.runs]
    if not names:
        return []
    written = []
    seed = res.to_dict()["seed"] if res.seed_matches_recipe() else None
    epochs = np.arange(1, res.plan.epochs + 1)

    # 1. loss curves, one panel per backend, shared y axis
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names) + 2.5, 4), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], names):
        for run, t in res.results[name].runs.items():
            e = epochs[: len(t.val_loss)]
            wide = run == "softmax"  # drawn wide underneath: the converted sigmoid lies on top of it
            ax.plot(e, t.epoch_loss, "--", color=COLORS[run], alpha=0.35 if wide else 0.8, lw=5 if wide else 1.2,
                    label=f"{RUN_LABELS[run]} loss")
            ax.plot(e, t.val_loss, "-o", color=COLORS[run], ms=3, alpha=0.35 if wide else 1, lw=5 if wide else 1.5,
                    label=f"{RUN_LABELS[run]} val_loss")
        if seed:
            for run in RUNS:
                ax.plot(epochs, seed["runs"][run]["val_loss"], ":", color=COLORS[run], alpha=0.5,
                        label=f"seed {RUN_LABELS[run]} val_loss")
        ax.set_title(f"{name} ({res.results[name].device})")
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cross-entropy")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right center")  # outside the data
    fig.suptitle(_rule_title(res), fontsize=10)
    written.append(out / PLOT_FILES[0])
    _save(fig, written[-1])
    between()

    # 2. val_loss differences per epoch, all backends on shared axes
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4), layout="constrained")
    width = 0.06 * max(len(names) - 1, 1)
    for i, name in enumerate(names):
        runs = res.results[name].runs
        ls, mk = BACKEND_STYLES[i % len(BACKEND_STYLES)], BACKEND_MARKERS[i % len(BACKEND_MARKERS)]
        shift = (i - (len(names) - 1) / 2) * width / max(len(names) - 1, 1)  # coinciding backends side by side
        if "softmax" in runs and "sigmoid_converted" in runs:
            n = min(len(runs["softmax"].val_loss), len(runs["sigmoid_converted"].val_loss))
            diff = np.abs(runs["softmax"].val_loss[:n] - runs["sigmoid_converted"].val_loss[:n])
            a1.plot(epochs[:n] + shift, diff, ls, marker=mk, label=name)
        if "sigmoid_converted" in runs and "sigmoid_random" in runs:
            n = min(len(runs["sigmoid_converted"].val_loss), len(runs["sigmoid_random"].val_loss))
            a2.plot(epochs[:n] + shift, runs["sigmoid_random"].val_loss[:n] - runs["sigmoid_converted"].val_loss[:n],
                    ls, marker=mk, label=name)
    if seed:
        s = seed["runs"]
        a1.plot(epochs, np.abs(np.subtract(s["softmax"]["val_loss"], s["sigmoid_converted"]["val_loss"])),
                color="grey", marker="x", label="seed (independent masks)")
        a2.plot(epochs, np.subtract(s["sigmoid_random"]["val_loss"], s["sigmoid_converted"]["val_loss"]),
                color="grey", marker="x", label="seed")
    tol = TOLERANCES[res.plan.dtype]["atol"]
    a1.axhline(tol, color="red", lw=0.8, ls="--", label=f"{res.plan.dtype} tolerance {tol:g}")
    _symlog(a1)
    threshold = CONTROL_MARGIN * tol  # the negative control must leave this band
    a2.axhspan(-threshold, threshold, color="red", alpha=0.12, lw=0,
               label=f"control threshold +-{threshold:g} ({CONTROL_MARGIN:g} x tolerance)")
    a1.set_title("|val_loss softmax - val_loss sigmoid (conv)|")
    a2.set_title("val_loss sigmoid (rand) - val_loss sigmoid (conv): the control")
    for ax in (a1, a2):
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    written.append(out / PLOT_FILES[1])
    _save(fig, written[-1])
    between()

    # 3. per-step loss gap softmax vs converted sigmoid (where two trajectories split)
    fig, ax = plt.subplots(figsize=(10, 3.5), layout="constrained")
    for i, name in enumerate(names):
        runs = res.results[name].runs
        if "softmax" in runs and "sigmoid_converted" in runs:
            a, b = runs["softmax"].step_loss, runs["sigmoid_converted"].step_loss
            n = min(len(a), len(b))
            line, = ax.plot(np.arange(1, n + 1), np.abs(a[:n] - b[:n]), BACKEND_STYLES[i % len(BACKEND_STYLES)],
                            lw=0.8, marker=BACKEND_MARKERS[i % len(BACKEND_MARKERS)], ms=2.5, label=name)
            split = next((c.divergence for c in res.checks
                          if c.name == "trajectory_gap_step_loss" and c.backend == name and c.divergence), None)
            if split is not None:  # mark where this backend's pair first left the tolerance
                ax.axvline(split["step"], color=line.get_color(), lw=0.8, ls=":",  # steps count from 1
                           label=f"{name}: first split, step {split['step']}")
    tol = TOLERANCES[res.plan.dtype]["atol"]
    ax.axhline(tol, color="red", lw=0.8, ls="--", label=f"{res.plan.dtype} tolerance {tol:g}")
    _symlog(ax)
    ax.set_title("|step loss softmax - step loss sigmoid (conv)| per training step (steps count from 1)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    written.append(out / PLOT_FILES[2])
    _save(fig, written[-1])
    between()
    return written
