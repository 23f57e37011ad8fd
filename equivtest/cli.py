"""The ``equivtest`` command.

``equivtest run``: the seed's experiment on every installed backend, with a
table, the checks, ``report.json``, ``report.md`` and plots.
``equivtest compare A.json B.json``: diff two reports; exit 1 past a tolerance.
``equivtest write-features OUT.h5``: write a features source in the seed's h5 schema.

Exit codes: 0 all checks pass; 1 a check failed; 2 usage or input error (one
line on stderr, no traceback); 130 interrupted (after writing what finished).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

from .errors import BackendUnavailable, InputError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Testing hook: ``EQUIVTEST_INTERRUPT_AT=<point>`` makes the command send itself SIGINT at that point, so
#: tests interrupt at a determined moment instead of racing a timer.  Points: ``start`` (before the
#: frameworks load), ``epoch:K`` (after the K-th epoch of the job, 1-based), ``plot`` (between two plots),
#: ``write`` (while report.json is being written).
ENV_INTERRUPT_AT = "EQUIVTEST_INTERRUPT_AT"


def checkpoint(point: str) -> None:
    """Send SIGINT to this process if the testing hook names ``point`` (handled before this returns)."""
    if os.environ.get(ENV_INTERRUPT_AT) == point:
        import signal

        signal.raise_signal(signal.SIGINT)  # the Python handler runs inside this call


class Interrupts:
    """SIGINT for one command: a ``KeyboardInterrupt`` anywhere, except inside :meth:`deferred`.

    Inside ``deferred()`` (writing the reports) a SIGINT is only recorded; the
    files are finished, and the command then exits 130.
    """

    def __init__(self):
        self.pending = False
        self._depth = 0
        self._previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def _handler(self, signum, frame):
        if self._depth:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise InputError(f"{self.prog}: {message}")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


EXIT_CODES = """exit codes:
  0    every check passes (compare: every series within tolerance; convert: written)
  1    a check failed (compare: a series differs, or is in one report only; verify: the models differ)
  2    a usage or input error, one line on stderr, nothing written (compare: the reports cannot be compared)
  130  interrupted (run: after writing the runs that finished)"""


#: the recipe a run takes where --optimizer, --lr or --epochs are not given: the seed's for its head (body none);
#: for whole networks one that learns the built-in data (measured: mlp on the built-in features reaches val_acc
#: 0.987 in 3 epochs, cnn on digit images 0.905 in 10; the seed's SGD at 1e-3 leaves both near chance)
BODY_DEFAULTS = {"none": {"optimizer": "sgd", "lr": 1e-3, "epochs": 5},
                 "mlp": {"optimizer": "momentum", "lr": 0.05, "epochs": 3},
                 "cnn": {"optimizer": "momentum", "lr": 0.1, "epochs": 10}}


def _body_defaults_text(key: str) -> str:
    return ", ".join(f"{v[key]:g} for {b}" if not isinstance(v[key], str) else f"{v[key]} for {b}"
                     for b, v in BODY_DEFAULTS.items() if b != "none")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .heads import lr_factor
    from .plan import Optimizer

    p = _Parser(prog="equivtest", description="Prove that a two-class softmax head and a one-logit sigmoid head "
                                              "are the same classifier, by training both.",
                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"equivtest {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    def command(name: str, *, json: str | None = None, **kw) -> argparse.ArgumentParser:
        """A subcommand whose help ends with the exit codes; ``json``: what its ``--json`` prints."""
        c = sub.add_parser(name, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        if json:
            c.add_argument("--json", action="store_true", help=json)
        return c

    report_json = "print the JSON report on stdout (human output to stderr)"

    r = command("run", json=report_json,
                help="reproduce the seed experiment (default: built-in 25000 x 2048 surrogate)")
    r.add_argument("--features", default="synthetic",
                   help="h5 file(s) in the seed's schema (comma-joined), synthetic[:NxD], breast-cancer, digits "
                        "(default: synthetic, 25000 x 2048)")
    r.add_argument("--backend", default=None, help="comma list of numpy, torch, keras, keras-torch, keras-jax, or all "
                        "(default: every installed one of numpy, torch, keras)")
    r.add_argument("--device", default="cpu", help="cpu, cuda[:N], mps or auto (default: cpu)")
    r.add_argument("--epochs", type=_positive_int, default=None,
                   help="default: per body, the seed's 5 for none, " + _body_defaults_text("epochs"))
    r.add_argument("--batch-size", type=_positive_int, default=128, help="default: 128")
    r.add_argument("--lr", type=_positive_float, default=None,
                   help="softmax learning rate; the sigmoid's is --lr-factor times it (default: per body, the seed's "
                        "0.001 for none, " + _body_defaults_text("lr") + ")")
    r.add_argument("--lr-factor", type=_positive_float, default=lr_factor(),
                   help="sigmoid lr = factor x softmax lr; 1 is the negative control that must fail (default: 2)")
    r.add_argument("--optimizer", default=None, choices=list(Optimizer.PRESETS),
                   help="sgd, momentum, nesterov, adam, rmsprop, adagrad, adamw (default: per body, the seed's sgd "
                        "for none, " + _body_defaults_text("optimizer") + ")")
    r.add_argument("--dropout", type=float, default=0.5, help="dropout rate before the Dense layer (default: 0.5)")
    r.add_argument("--seed", type=int, default=20180520, help="default: 20180520 (the seed's)")
    r.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default: float32")
    r.add_argument("--masks", default="shared", choices=["shared", "independent"],
                   help="dropout masks shared by the runs, or drawn independently as in the seed (default: shared)")
    r.add_argument("--body", default="none", choices=["none", "mlp", "cnn"],
                   help="train a whole network: none (the seed's head on features), mlp, or cnn (on images; "
                        "--features digits then means the 8x8x1 images) (default: none)")
    r.add_argument("--lr-rule", default="per-layer", choices=["per-layer", "global"],
                   help="the sigmoid network's rates: per-layer (head x2, body x1) or global (the seed's x2 "
                        "everywhere: the negative control, exit 1 once the body trains) (default: per-layer)")
    r.add_argument("--data-parallel", type=_positive_int, default=1, metavar="N",
                   help="train each run data-parallel on N CPU workers with the framework's own engine: torch "
                        "DistributedDataParallel, keras MirroredStrategy, keras-jax keras.distribution.DataParallel "
                        "(default: 1)")
    r.add_argument("--out", default="equivtest-report", help="report folder (default: ./equivtest-report)")
    r.add_argument("--quiet", action="store_true", help="no progress display or per-epoch lines")
    r.add_argument("--verbose", action="store_true",
                   help="let the worker processes' framework logging (TensorFlow, XLA) through to stderr")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    c = command("compare", help="diff two report.json files; exit 1 past the tolerance or when a series, "
                "run or backend is in one report only, 2 when they cannot be compared")
    c.add_argument("a", metavar="A", help="the first report.json (the reference)")
    c.add_argument("b", metavar="B", help="the second report.json")
    c.add_argument("--allow-different-setup", action="store_true",
                   help="compare reports made from different features, body, lr rule or lr factor (default: refuse)")
    c.add_argument("--atol", type=_positive_float, default=1e-5, help="max |d loss| per step and per epoch (default: 1e-5)")

    cv = command("convert", json="print what was converted as JSON on stdout",
                 help="convert a trained 2-way softmax classifier file to the 1-logit sigmoid "
                 "it equals (or back): Keras, torch state_dict, safetensors, Hugging Face "
                 "folder, ONNX")
    cv.add_argument("src", metavar="IN", help="the model file (.keras/.h5, .pt/.pth/.bin, .safetensors, .onnx) "
                                              "or a Hugging Face folder (config.json + model.safetensors)")
    cv.add_argument("out", metavar="OUT", help="where to write the converted model (its folder must exist)")
    cv.add_argument("--layer", default=None, help="the head's name (e.g. classifier, score) when the file has "
                                                  "several candidates (default: found)")
    cv.add_argument("--to", default="sigmoid", choices=["sigmoid", "softmax"],
                    help="sigmoid: (2, d) -> (1, d), beta = w1 - w0, c = b1 - b0; softmax: back (default: sigmoid)")
    cv.add_argument("--split", default="zero", choices=["zero", "symmetric"],
                    help="with --to softmax: w0 = 0, w1 = beta (zero) or w0 = -beta/2, w1 = beta/2 (symmetric) "
                         "(default: zero)")
    cv.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")

    vf = command("verify", json=report_json,
                 help="run an original and a converted model on features and check they are the "
                 "same classifier (max |dp|, max |d logit|, decisions); exit 1 if not")
    vf.add_argument("original", metavar="ORIGINAL", help="the original model file or folder")
    vf.add_argument("converted", metavar="CONVERTED", help="the converted model file or folder")
    vf.add_argument("--features", required=True,
                    help=".npy, .npz or .h5 features at the model's input (for a weights-only file, a state_dict, "
                         "safetensors or a Hugging Face folder: at the layer's input), or a built-in source")
    vf.add_argument("--dataset", default=None, help="the array in an .npz or .h5 with several (default: the only "
                                                    "one, or 'train')")
    vf.add_argument("--layer", default=None, help="the head's name in both files (default: found)")
    vf.add_argument("--export-onnx", action="store_true",
                    help="also export both heads to ONNX in --out and check ONNX Runtime against the framework")
    vf.add_argument("--out", default="equivtest-verify", help="report folder (default: ./equivtest-verify)")

    w = sub.add_parser("write-features", help="write features in the seed's h5 schema (train, label, test)")
    w.add_argument("out", metavar="OUT", help="the h5 file to write (its folder must exist)")
    w.add_argument("--features", default="synthetic", help="source to write (default: synthetic, 25000 x 2048)")
    w.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")
    return p


# ------------------------------------------------------------------------------------------ run
class Progress:
    """What the run is doing, on stderr (stdout stays for the table and the JSON).

    On a terminal: a live display from ``rich`` (a spinner for loading the features, importing the frameworks
    and drawing the plots; a bar over every run's epochs) above Keras-style epoch lines.  Elsewhere (a CI log,
    a pipe): the epoch lines alone, plain, each with the job's count.  ``--quiet``: nothing.
    """

    def __init__(self, stream, quiet: bool):
        self.total, self.done, self.stream, self.quiet = 0, 0, stream, quiet
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._live = self._task = self._steps = None
        if not quiet and self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Live

            self.console = Console(file=stream, highlight=False)
            self._live = Live(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=self.console, transient=True)
            self._live.start()

    @contextlib.contextmanager
    def stage(self, what: str):
        """A step before or after training (loading, importing, plotting), shown while it lasts."""
        task = None if self._live is None else self._live.add_task(what, total=None)
        try:
            yield
        finally:
            if task is not None:
                self._live.remove_task(task)

    def training(self, total_epochs: int) -> None:
        self.total = total_epochs
        if self._live is not None:
            self._task = self._live.add_task("training", total=total_epochs)

    def run(self, backend: str, run: str):
        if self._task is not None:
            self._live.update(self._task, description=f"training {backend} {run}")
        if self._steps is not None:
            self._live.update(self._steps, visible=False)

    @property
    def shows_steps(self) -> bool:
        """Whether :meth:`step` shows anything (a live display): the run passes its step hook only then."""
        return self._live is not None

    def step(self, backend: str, run: str, epoch: int, step: int, steps: int) -> None:
        """A bar over the current epoch's steps, under the bar over all epochs (terminal only)."""
        if self._live is None:
            return
        what = f"  epoch {epoch + 1} steps"
        if self._steps is None:
            self._steps = self._live.add_task(what, total=steps)
        self._live.update(self._steps, description=what, total=steps, completed=step, visible=True)

    def epoch(self, backend: str, run: str, epoch: int, logs: dict, epochs: int):
        self.done += 1
        if self.quiet:
            return
        line = (f"{backend:>6} {run:<17} Epoch {epoch + 1}/{epochs} - loss: {logs['loss']:.4f} - "
                f"acc: {logs['accuracy']:.4f} - val_loss: {logs['val_loss']:.4f} - val_acc: {logs['val_accuracy']:.4f}")
        if self._live is not None:
            self.console.print(line, markup=False)
            self._live.advance(self._task)
        else:
            print(f"{line}  [{self.done}/{self.total}]", file=self.stream, flush=True)

    def close(self):
        if self._live is not None:
            self._live.stop()
            self._live = None


def _check_out(path: str) -> Path:
    """``--out`` can be written (it, or the nearest folder above it that exists, is a writable folder); nothing
    is created here, so a run refused for its input leaves the file system as it was."""
    out = Path(path)
    existing = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise InputError(f"--out '{path}': cannot write there ('{existing}' is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out '{path}': cannot write there ('{existing}' is not writable)")
    return out


#: the files a run writes into --out: the report and its plots (with their temporary names' leftovers)
def _own_files(out: Path) -> list[Path]:
    from .report import PLOT_FILES

    names = ("report.json", "report.md", *PLOT_FILES)
    return [out / n for n in names] + [p for n in names for p in out.glob(f".{n}.*.tmp*")]


def _prepare_out(out: Path) -> Path:
    """Create --out once the input is known to be good, and remove an earlier run's report and plots, so that no
    file there can be mistaken for this run's (a run writes them anew; --no-plots writes none)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in _own_files(out):
            f.unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(f"--out '{out}': cannot write there ({exc.strerror or exc})") from None
    return out


def cmd_run(args, interrupts: Interrupts | None = None) -> int:
    if args.verbose:  # the workers' framework logging reaches the terminal (see backends.keras.worker)
        os.environ["EQUIVTEST_VERBOSE"] = "1"
    prog = Progress(sys.stderr, args.quiet)
    try:
        return _run(args, interrupts, prog)
    finally:
        prog.close()


def _run(args, interrupts: Interrupts | None, prog: Progress) -> int:
    from .plan import Plan
    from .session import Selection
    from .sources import load_features

    human = sys.stderr if args.json else sys.stdout
    sel = Selection.from_options(args.backend, args.device, args.features)
    if len(sel.devices) > 1:  # one report describes one device (numpy stays on the CPU regardless)
        raise InputError(f"--device takes one device for 'equivtest run', got {len(sel.devices)}: "
                         f"{', '.join(sel.devices)} (run once per device)")
    if not 0.0 <= args.dropout < 1.0:
        raise InputError(f"--dropout must be in [0, 1), got {args.dropout}")
    for key, value in BODY_DEFAULTS[args.body].items():  # what the user did not give: the body's recipe
        if getattr(args, key) is None:
            setattr(args, key, value)
    plan = Plan(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                dropout=args.dropout, seed=args.seed, dtype=args.dtype)
    out = _check_out(args.out)
    names = sel.installed
    if not names:
        raise InputError("no backend is installed: pip install 'equivtest[all]'")
    sel.check_devices()
    if args.data_parallel > 1:
        from . import parallel

        if args.device not in ("cpu", None) or args.masks != "shared":
            raise InputError(f"--data-parallel {args.data_parallel} trains on CPU workers with the plan's shared "
                             "masks: drop --device and --masks independent")
        for name in names:  # a backend without an engine, or a batch its engine cannot split: one line, exit 2
            parallel.check(name, plan, 0, args.data_parallel)
    network = None
    if args.body != "none" or args.lr_rule != "per-layer":
        from .networks import Network

        if args.masks != "shared":
            raise InputError("--masks independent is for the head alone; whole networks share the plan's masks")
        if args.body == "cnn" and args.features == "digits":
            from .sources import digits

            with prog.stage("loading the features"):
                dataset = digits(images=True)
        else:
            with prog.stage("loading the features"):
                dataset = load_features(args.features)
        try:
            network = Network(args.body, dataset.input_shape)
        except InputError as exc:
            raise InputError(f"--body {args.body} with features '{args.features}': {exc}") from None
    else:
        with prog.stage("loading the features"):
            dataset = load_features(args.features)
    if args.data_parallel > 1:
        for name in names:  # now that the training rows are known: the last batch too
            parallel.check(name, plan, len(dataset.y_train), args.data_parallel)
    for name, reason in sel.missing.items():  # only once the input is known to be good
        print(f"skipping {name}: {reason}", file=sys.stderr)
    _prepare_out(out)

    from . import atomic
    from .experiment import run_experiment
    from .report import PLOT_FILES, markdown, plot, text, write_json

    interrupts = interrupts or Interrupts()
    prog.training(len(names) * 3 * plan.epochs)

    def on_epoch(b, r, e, logs):
        prog.epoch(b, r, e, logs, plan.epochs)
        checkpoint(f"epoch:{prog.done}")

    checkpoint("start")
    from . import backends

    with prog.stage(f"importing {', '.join(names)}"):
        backends.load(names)
    if network is not None:
        from .experiment import run_network_experiment

        res = run_network_experiment(dataset, plan, names, network, lr_rule=args.lr_rule, device=args.device,
                                     on_run=prog.run, on_epoch=on_epoch, data_parallel=args.data_parallel)
    else:
        res = run_experiment(
            dataset, plan, names, device=args.device, masks=args.masks, lr_factor=args.lr_factor,
            on_run=prog.run, on_epoch=on_epoch, on_step=prog.step if prog.shows_steps else None,
            data_parallel=args.data_parallel,
        )
    plots = []
    if not args.no_plots and not res.interrupted:
        try:
            with prog.stage("drawing the plots"):
                plots = plot(res, out, between=lambda: checkpoint("plot"))
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install 'equivtest[plot]')", file=sys.stderr)
        except KeyboardInterrupt:  # the plots written so far stay; the report says the run was interrupted
            res.interrupted = True
            plots = [out / n for n in PLOT_FILES if (out / n).exists()]
    with interrupts.deferred():  # a SIGINT now is recorded; the reports are finished first
        checkpoint("write")
        res.interrupted = res.interrupted or interrupts.pending
        report = write_json(res, out / "report.json")
        atomic.write_text(out / "report.md", markdown(res, plots))
    res.interrupted = res.interrupted or interrupts.pending
    print(text(res), file=human)
    print(f"report: {out / 'report.json'}, {out / 'report.md'}" + "".join(f", {p}" for p in plots), file=human)
    if args.json:
        print(json.dumps(report, indent=1, default=float))
    if res.interrupted:
        finished = sum(len(r.runs) for r in res.results.values())
        print(f"equivtest: interrupted: {out / 'report.json'} holds the {finished} run(s) that finished",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if res.passed else EXIT_FAIL


# -------------------------------------------------------------------------------------- compare
def _load_report(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise InputError(f"report '{path}': no such file")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"report '{path}': not JSON ({exc})") from None
    if not isinstance(d, dict) or "backends" not in d or "plan" not in d:
        raise InputError(f"report '{path}': not an equivtest report (keys 'backends' and 'plan' missing)")
    return d


SERIES = ("step_loss", "val_loss", "val_accuracy")


def _setup(rep: dict) -> dict:
    """What makes two reports comparable at all: a difference here is "cannot compare" (exit 2)."""
    net = rep.get("network") or {}
    return {"features": (rep.get("features") or {}).get("source"),
            "body": net.get("body", "none") if isinstance(net, dict) else net,
            "lr rule": net.get("lr_rule") if isinstance(net, dict) else None,
            "lr factor": (rep.get("lr") or {}).get("factor")}


def cmd_compare(args) -> int:
    """Exit 0: every series of both reports within --atol; 1: compared, and a series differs or is present in
    one report only; 2: the reports cannot be compared (a different set-up, or no run in common)."""
    import numpy as np

    from .compare import compare_series

    a, b = _load_report(args.a), _load_report(args.b)
    sa, sb = _setup(a), _setup(b)
    setup_diffs = [f"{k} {sa[k]!r} vs {sb[k]!r}" for k in sa if sa[k] != sb[k]]
    if setup_diffs and not args.allow_different_setup:
        raise InputError(f"reports '{args.a}' and '{args.b}' come from different set-ups ({'; '.join(setup_diffs)}): "
                         "pass --allow-different-setup to compare them anyway")
    pairs = [(bk, run) for bk in sorted(set(a["backends"]) & set(b["backends"]))
             for run in sorted(set(a["backends"][bk].get("runs", {})) & set(b["backends"][bk].get("runs", {})))]
    if not pairs:
        raise InputError(f"reports '{args.a}' and '{args.b}' share no run to compare")
    rows, failed, compared, missing = [], 0, 0, []
    for backend in sorted(set(a["backends"]) | set(b["backends"])):
        if backend not in a["backends"] or backend not in b["backends"]:
            missing.append(f"backend {backend} only in {'A' if backend in a['backends'] else 'B'}")
            continue
        ra, rb = a["backends"][backend].get("runs", {}), b["backends"][backend].get("runs", {})
        for run in sorted(set(ra) | set(rb)):
            if run not in ra or run not in rb:
                missing.append(f"{backend} {run} only in {'A' if run in ra else 'B'}")
                continue
            for field in SERIES:
                if field not in ra[run] or field not in rb[run]:
                    missing.append(f"{backend} {run} {field} only in {'A' if field in ra[run] else 'B'}")
                    continue
                xa, xb = np.asarray(ra[run][field]), np.asarray(rb[run][field])
                if xa.shape != xb.shape:
                    rows.append(f"{backend:>6} {run:<17} {field:<12} shapes differ {xa.shape} vs {xb.shape}  FAIL")
                    failed += 1
                    continue
                c = compare_series(xa, xb, name=field, unit="step" if field == "step_loss" else "epoch", atol=args.atol)
                compared += 1
                failed += not c.ok
                where = "" if c.ok else f" first at {c.unit} {c.first + 1}"
                rows.append(f"{backend:>6} {run:<17} {field:<12} max |diff| {c.max_abs:.3g}{where}  "
                            f"{'ok' if c.ok else 'FAIL'}")
    print(f"A: {args.a}\nB: {args.b}\ntolerance atol={args.atol:g}")
    if setup_diffs:
        print(f"set-ups differ (--allow-different-setup): {'; '.join(setup_diffs)}")
    plan_diffs = sorted(k for k in set(a["plan"]) | set(b["plan"]) if a["plan"].get(k) != b["plan"].get(k))
    for k in plan_diffs:
        print(f"plan differs: {k} {a['plan'].get(k)!r} vs {b['plan'].get(k)!r}")
    print("\n".join(rows))
    for m in missing:
        print(f"MISSING {m}")
    verdict = []
    if failed:
        verdict.append(f"{failed} of {compared} series past tolerance")
    if missing:
        verdict.append(f"{len(missing)} series, runs or backends in one report only")
    print("; ".join(verdict) if verdict else f"all {compared} series within tolerance")
    return EXIT_FAIL if verdict else EXIT_OK


def cmd_write_features(args) -> int:
    from .data import write_h5
    from .sources import load_features

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # checked before the features are made, and naming the flag
        raise InputError(f"features file '{out}': already exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(f"features file '{out}': its folder '{out.parent}' does not exist")
    ds = load_features(args.features)
    path = write_h5(ds, args.out, overwrite=args.overwrite)
    print(f"wrote {path}: train {ds.shape[0]} x {ds.shape[1]}, label {ds.shape[0]} ({ds.source})")
    return EXIT_OK


# ------------------------------------------------------------------------------------------ convert, verify
def cmd_convert(args) -> int:
    from .convert import api

    res = api.convert(args.src, args.out, to=args.to, split=args.split, layer=args.layer, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(res.to_dict(), indent=1))
    else:
        print(res.describe())
    return EXIT_OK


def cmd_verify(args) -> int:
    from . import atomic
    from .convert import api

    out = _check_out(args.out)
    res = api.verify(args.original, args.converted, args.features, layer=args.layer, dataset=args.dataset,
                     export_onnx=out if args.export_onnx else None)
    out.mkdir(parents=True, exist_ok=True)
    d = res.to_dict()
    atomic.write_text(out / "report.json", json.dumps(d, indent=1))
    human = sys.stderr if args.json else sys.stdout
    print(res.text(), file=human)
    print(f"report: {out / 'report.json'}", file=human)
    if args.json:
        print(json.dumps(d, indent=1))
    return EXIT_OK if res.passed else EXIT_FAIL


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    with Interrupts() as interrupts:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return EXIT_USAGE
            if args.command == "run":
                return cmd_run(args, interrupts)
            return {"compare": cmd_compare, "write-features": cmd_write_features, "convert": cmd_convert,
                    "verify": cmd_verify}[args.command](args)
        except (InputError, BackendUnavailable) as exc:
            print(f"equivtest: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("equivtest: interrupted before any run finished (no report written)", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # e.g. `equivtest run --json | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAIL


def console_main() -> None:
    """The ``equivtest`` command: :func:`main`, then exit without a late SIGINT turning into a traceback.

    Once ``main`` has returned, SIGINT is ignored; an interrupted run leaves at
    once (``os._exit``) so that no framework's half-finished state or thread can
    hold the exit up or print at shutdown.
    """
    import signal

    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code == EXIT_INTERRUPTED:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
