"""Write docs/performance.md's tables by machine from the files that hold the figures.

Each figure in those tables is read from one file, never typed:

* every pytest-benchmark JSON in ``tests/benchmarks/baselines/`` (``pytest tests/benchmarks --bench
  --benchmark-json=F``): one table per file, with the machine and date the file records;
* every stored ``equivtest run`` report in ``docs/reports/`` (``equivtest run --out D``, then ``D/report.json``
  copied there): one table of checks and one of val_loss per epoch, with the report's machine, date and time.

The block between the two markers in docs/performance.md is this tool's output and nothing else::

    python tools/perf_tables.py           # rewrite the block (atomically)
    python tools/perf_tables.py --check   # exit 1 when the block is not what the files give

``tests/test_docs.py`` runs the check, so a figure changed in a file and not in the document (or the other way
round) fails the suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from equivtest.experiment import RUNS
from equivtest.report import CHECK_HEADER, RUN_LABELS, check_row, md_table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
BENCHMARKS = ROOT / "tests" / "benchmarks" / "baselines"
REPORTS = ROOT / "docs" / "reports"
BEGIN = "<!-- tables by machine: written by tools/perf_tables.py from the files it names; edit those, not this -->"
END = "<!-- end of the tables by machine -->"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()


def _versions(info: dict) -> str:
    vers = info.get("versions") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(vers.items()))


def benchmark_table(path: Path) -> str:
    """One pytest-benchmark file: its machine, its date, one row per benchmark."""
    data = json.loads(path.read_text(encoding="utf-8"))
    mi = data["machine_info"]
    ours = mi.get("equivtest", {})
    cpu = ours.get("cpu") or mi.get("cpu", {}).get("brand_raw") or mi.get("machine", "")
    cores = ours.get("cores") or mi.get("cpu", {}).get("count")
    gpu = ours.get("gpu")
    commit = data.get("commit_info", {}).get("id", "")
    ran = sorted({(b.get("extra_info") or {}).get("backend") or (b.get("params") or {}).get("backend") or ""
                  for b in data["benchmarks"]} - {""})
    devices = sorted({str((b.get("params") or {}).get("device") or (b.get("extra_info") or {}).get("device"))
                      .split(":")[0] for b in data["benchmarks"]} - {"None"})
    on = "/".join(devices) + (f" ({gpu})" if gpu else "")
    lines = [f"### Benchmarks: {', '.join(ran)} on {on}; {cpu}, {cores} cores ({data['datetime'][:10]}, "
             f"`{_rel(path)}`)", ""]
    about = [f"Python {mi.get('python_version')}", f"{mi.get('system')} {mi.get('release')}"]
    if _versions(ours):
        about.append(_versions(ours))
    if ours.get("blas"):
        about.append("BLAS " + "; ".join(ours["blas"]))
    if commit and commit != "unknown":
        about.append(f"commit {commit[:10]}")
    lines += ["; ".join(about) + ".", ""]
    lines += ["| group | benchmark | median | IQR | min | rounds | throughput |", "|---|---|---|---|---|---|---|"]
    for b in sorted(data["benchmarks"], key=lambda b: (b.get("group") or "", b["name"])):
        s, extra = b["stats"], b.get("extra_info", {})
        through = f"{extra['samples_per_s']:,} samples/s" if "samples_per_s" in extra else ""
        if "peak_mib" in extra:
            through += f", peak {extra['peak_mib']} MiB"
        lines.append(f"| {b.get('group') or ''} | `{b['name']}` | {_ms(s['median'])} | {_ms(s['iqr'])} | "
                     f"{_ms(s['min'])} | {s['rounds']} | {through} |")
    return "\n".join(lines)


def report_tables(path: Path) -> str:
    """One stored ``equivtest run`` report: its machine, date and time, its checks, val_loss per epoch."""
    r = json.loads(path.read_text(encoding="utf-8"))
    env, plan, feats = r["environment"], r["plan"], r["features"]
    cores = env.get("cores")
    machine = f"{env.get('cpu', env.get('platform'))}" + (f", {cores} cores" if cores else "")
    lines = [f"### `equivtest run`: {machine} ({r['created'][:10]}, `{_rel(path)}`)", ""]
    backends = ", ".join(f"{n} ({e.get('version', '')}, {r['backends'][n]['device']})"
                         for n, e in env.get("backends", {}).items())
    opt = plan["optimizer"]["name"] if isinstance(plan["optimizer"], dict) else plan["optimizer"]
    shape = " x ".join(str(v) for v in feats["shape"])
    lines += [f"Python {env.get('python')}, {env.get('platform')}; {backends}.  Features `{feats['source']}` "
              f"({shape}; {feats['n_train']} training rows); {plan['epochs']} epochs, batch {plan['batch_size']}, "
              f"{opt} at lr {r['lr']['softmax']:g} (sigmoid x {r['lr']['factor']:g}), dropout "
              f"{plan['dropout']}, {plan['dtype']}, masks {r['masks']}.  "
              f"**{'passed' if r['passed'] else 'failed'}**, {len(r['checks'])} checks; the report's `wall_s` "
              f"(the runs and their checks; importing the frameworks, making the features and drawing the plots "
              f"come on top): {r['wall_s']:.1f} s.", ""]
    lines += [md_table(CHECK_HEADER, [check_row(c) for c in r["checks"]])]
    seed = (r.get("seed") or {}).get("runs") or {}  # present when the run's recipe is the seed's
    sources = [(name, b["runs"]) for name, b in r["backends"].items()]
    sources += [("the seed (Keras 2, `gap_Xception.h5`)", seed)] if seed else []
    rows = []
    for name, runs in sources:
        series = [runs.get(run, {}).get("val_loss", []) for run in RUNS]
        for e in range(max(len(s) for s in series)):
            rows.append([name, str(e + 1)] + [f"{s[e]:.4f}" if e < len(s) else "" for s in series])
    lines += ["", "val_loss per epoch:", "", md_table(["backend", "epoch"] + [RUN_LABELS[run] for run in RUNS], rows)]
    return "\n".join(lines)


def render(benchmarks: Path = BENCHMARKS, reports: Path = REPORTS) -> str:
    """The whole block, markers included: the benchmark files, then the reports, each in name order."""
    parts = [benchmark_table(p) for p in sorted(benchmarks.glob("*.json"))]
    parts += [report_tables(p) for p in sorted(reports.glob("*.json"))]
    return "\n\n".join([BEGIN, *parts, END])


def replace_block(doc: str, block: str) -> str:
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{_rel(DOC)}: the markers of the generated tables are missing")
    return doc[:start] + block + doc[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the document's block is out of date")
    args = ap.parse_args(argv)
    doc = DOC.read_text(encoding="utf-8")
    new = replace_block(doc, render())
    if args.check:
        if new != doc:
            print(f"{_rel(DOC)}: the tables by machine are out of date; run python tools/perf_tables.py")
            return 1
        return 0
    if new != doc:
        from equivtest.atomic import write_text

        write_text(DOC, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
