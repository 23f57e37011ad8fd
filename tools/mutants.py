"""Deliberate bugs, and the proof that the suite catches each one.

For every mutant: copy the repository (without .git) into a temporary folder,
make one small change to the product code there, and run the tests that should
notice it, with that copy first on ``PYTHONPATH``.  A mutant is *caught* when
those tests fail; the unchanged copy must pass the same tests (otherwise the
verdict would mean nothing).

    python tools/mutants.py              # every mutant; exit 1 if one survives
    python tools/mutants.py --list       # the mutants and the tests each runs
    python tools/mutants.py -k epsilon   # only mutants whose name contains the word

The slow tier runs it (``tests/test_mutants.py``).  Each mutant states the
test that must catch it; add a mutant with every new check that claims to tell
two things apart.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # a file of the repository
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments: what must catch it
    backends: str = "numpy,torch"
    extra: tuple[str, ...] = field(default=())


MUTANTS = (
    Mutant("Keras network drops coupled decay", "equivtest/backends/keras/network.py",
           'regs = [keras.regularizers.L2(decay / 2) if decay and kind != "jax" else None for decay in decays]',
           "regs = [None, None]",
           ("equivtest/suite/test_composition.py", "--run-slow", "-k", "coupled and mlp and keras"), backends="keras"),
    Mutant("Keras drops class weights", "equivtest/backends/keras/network.py",
           "sw = plan.sample_weights(data.y_train)", "sw = None",
           ("equivtest/suite/test_networks.py", "--run-slow", "-k",
            "follows_the_oracle and keras and mlp and float32 and class"), backends="keras"),
    Mutant("Keras optimizer slots restarted at zero (Adagrad's accumulator starts at 0.1)",
           "equivtest/backends/keras/common.py", "        v.assign(value)",
           "        v.assign(ops.zeros(v.shape, dtype=v.dtype))",
           ("equivtest/suite/test_cross_framework.py", "--run-slow", "-k",
            "matches_float64_reference and keras and adagrad and softmax"), backends="keras"),
    Mutant("Keras replicas' weighted sums divided again by their shard's size", "equivtest/backends/keras/network.py",
           'loss_fn = keras_loss(head, plan, "sum" if scaled else "sum_over_batch_size")',
           'loss_fn = keras_loss(head, plan, "sum_over_batch_size")',
           ("equivtest/suite/test_parallel.py", "-k", "workers_follow_one_worker and keras and not jax and float32"),
           backends="keras"),
    Mutant("Keras network trains in float32 when bfloat16 autocast is asked", "equivtest/backends/keras/network.py",
           "self.layers = build(net, head, dt, *regs, autocast=plan.autocast, drop=drop, plan=plan)",
           "self.layers = build(net, head, dt, *regs, drop=drop, plan=plan)",
           ("equivtest/suite/test_mixed_precision.py", "--run-slow", "-k", "network and sgd"), backends="keras"),
    # equivtest convert / verify (tests/test_convert.py)
    Mutant("converted bias left as b1", "equivtest/convert/core.py",
           "stored_w, stored_b = round_to(exact_w, dtype), round_to(exact_b, bdt)",
           "stored_w, stored_b = round_to(exact_w, dtype), round_to(b64[1:] if to == SIGMOID else exact_b, bdt)",
           ("tests/test_convert.py", "-k", "converts_reloads_and_verifies and torch-float32"), backends="torch"),
    Mutant("verify decides ties to class 1 (logit >= 0)", "equivtest/convert/api.py",
           "dec_a, dec_b = l_a > 0, l_b > 0", "dec_a, dec_b = l_a > 0, l_b >= 0",
           ("tests/test_convert.py", "-k", "exact_ties"), backends="torch"),
    Mutant("bfloat16 rounded through float32 first (a double rounding)", "equivtest/convert/core.py",
           "    v = np.array(values, dtype=np.float64)\n",
           "    v = np.array(values, dtype=np.float32).astype(np.float64)\n",
           ("equivtest/suite/test_convert_rules.py", "-k", "rounding_is_one_rounding")),
    Mutant("bfloat16 storage bound with float32's unit roundoff", "equivtest/convert/core.py",
           '"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}', '"float16": 2.0 ** -11, "bfloat16": 2.0 ** -24}',
           ("tests/test_convert.py", "-k", "half_precision and bfloat16"), backends="torch"),
    Mutant("ONNX Softmax kept over one logit (always 1.0)", "equivtest/convert/onnxio.py",
           '            if to == SIGMOID:\n                node.op_type = "Sigmoid"',
           '            if to == SIGMOID:\n                node.op_type = "Softmax"',
           ("tests/test_convert.py", "-k", "converts_reloads_and_verifies and onnx-float32"), backends="torch"),
    Mutant("Hugging Face num_labels 1 without a problem type (MSE regression)", "equivtest/convert/tensors.py",
           'new.update(num_labels=1, problem_type="multi_label_classification", ',
           "new.update(num_labels=1, ",
           ("tests/test_convert.py", "-k", "converts_reloads_and_verifies and hf-float32"), backends="torch"),
    Mutant("lr factor 1.9", "equivtest/heads.py", "    return 2.0\n\n\ndef weight_decay_factor",
           "    return 1.9\n\n\ndef weight_decay_factor",
           ("equivtest/suite/test_trajectory.py", "-k", "test_trajectory and sgd and float32")),
    Mutant("lr factor 2.1", "equivtest/heads.py", "    return 2.0\n\n\ndef weight_decay_factor",
           "    return 2.1\n\n\ndef weight_decay_factor",
           ("equivtest/suite/test_trajectory.py", "-k", "test_trajectory and sgd and float32")),
    Mutant("beta = w0 - w1", "equivtest/heads.py", "beta = w.kernel[:, 1] - w.kernel[:, 0]",
           "beta = w.kernel[:, 0] - w.kernel[:, 1]",
           ("equivtest/suite/test_conversion.py", "-k", "predicts_like_softmax")),
    Mutant("transposed conv layout (kh and kw swapped)", "equivtest/backends/torch/network.py",
           "kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1)",
           "kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 1, 0)",
           ("equivtest/suite/test_networks.py", "-k", "moved_between_frameworks and cnn"),
           backends="torch,keras"),
    Mutant("Adam epsilon inside the sqrt (torch convention)", "equivtest/backends/numpy/ops.py",
           "p -= lr * (a / bc1) / (np.sqrt(v / bc2) + s.epsilon)",
           "p -= lr * (a / bc1) / np.sqrt(v / bc2 + s.epsilon)",
           ("equivtest/suite/test_cross_framework.py", "-k", "epsilon_convention and torch"), backends="torch"),
    Mutant("Adam epsilon outside the bias correction (keras convention)", "equivtest/backends/numpy/ops.py",
           "p -= (lr * np.sqrt(bc2) / bc1) * a / (np.sqrt(v) + s.epsilon)",
           "p -= lr * (a / bc1) / (np.sqrt(v / bc2) + s.epsilon)",
           ("equivtest/suite/test_cross_framework.py", "-k", "epsilon_convention and keras"), backends="keras"),
    Mutant("unshared masks (the sigmoid draws its own)", "equivtest/backends/numpy/network.py",
           'mask_plan = plan if masks == "plan" else plan.replace(mask_stream=plan.native_seed)',
           'mask_plan = (plan if masks == "plan" else plan.replace(mask_stream=plan.native_seed)).replace('
           'mask_stream=plan.mask_stream + (kh.shape[1] == 1))',
           ("equivtest/suite/test_trajectory.py", "-k", "test_trajectory and numpy and sgd and float64"),
           backends="numpy"),
    Mutant("class weight dropped (torch's sigmoid loss)", "equivtest/backends/torch/ops.py",
           "            return F.binary_cross_entropy_with_logits(z[:, 0], t, weight=w)",
           "            return F.binary_cross_entropy_with_logits(z[:, 0], t)",
           ("equivtest/suite/test_rules.py", "-k", "class_weights and torch"), backends="torch"),
    Mutant("body at x2 under the per-layer rule", "equivtest/networks.py",
           "        return GroupRates(lr, f * lr, decay, g * decay)",
           "        return GroupRates(f * lr, f * lr, decay, g * decay)",
           ("equivtest/suite/test_networks.py", "-k", "test_network_per_layer_rule_holds and mlp and sgd")),
    Mutant("DDP loss as a mean of shard means", "equivtest/backends/torch/__init__.py",
           "loss = shard_sum * (world.world_size / (t - s)) if world.weighted else (",
           "loss = (shard_sum / k if k else shard_sum) if world.weighted else (",
           ("equivtest/suite/test_parallel.py", "-k", "weighted_losses_follow_one_process and 3 and float64"),
           backends="torch"),
    Mutant("the heap frozen at the end of a pytester session inside another", "equivtest/suite/plugin.py",
           "return from_the_command_line and tuple(config.invocation_params.args) == tuple(sys.argv[1:])",
           "return from_the_command_line",
           ("tests/test_plugin.py", "-k", "collector_alone"), backends="numpy"),
    Mutant("the heap frozen after pytest.main() in a program that goes on", "equivtest/suite/plugin.py",
           "return from_the_command_line and tuple(", "return tuple(",
           ("tests/test_plugin.py", "--run-slow", "-k", "freezes_the_heap"), backends="numpy"),
    Mutant("the heap left to the collectors at the end of the session", "equivtest/suite/plugin.py",
           "        gc.collect()\n        gc.freeze()", "        gc.collect()",
           ("tests/test_plugin.py", "--run-slow", "-k", "freezes_the_heap"), backends="numpy"),
    Mutant("the heap frozen after pytest's clean-up collections", "equivtest/suite/plugin.py",
           "    _freeze_the_heap(config)\n",
           '    __import__("atexit").register(lambda: _freeze_the_heap(config))\n',
           ("tests/test_plugin.py", "--run-slow", "-k", "freezes_the_heap"), backends="numpy"),
    Mutant("the fork server tears down the frameworks it preloaded", "equivtest/_forkserver.py",
           "atexit.register(os._exit, 0)", "atexit.register(print, end='')",
           ("tests/test_workers.py", "-k", "fork_server"), backends="numpy"),
    Mutant("every process that imports the fork server's module leaves with status 0", "equivtest/_forkserver.py",
           "if _imported_by_the_fork_server():", "if True:",
           ("tests/test_workers.py", "-k", "fork_server"), backends="numpy"),
    Mutant("the factor search walks away from the smaller gap", "equivtest/rules.py",
           "if f(c) <= f(d):", "if f(c) >= f(d):", ("tests/test_factor_search.py",), backends="numpy"),
    Mutant("the factor search stops at the grid", "equivtest/rules.py",
           "while b - a > xtol:", "while False:", ("tests/test_factor_search.py",), backends="numpy"),
    Mutant("a package equivtest imports left out of pyproject.toml", "pyproject.toml",
           '"threadpoolctl>=2.0",', "", ("tests/test_architecture.py", "-k", "declared"), backends="numpy"),
    Mutant("torch's worker thread serves every epoch on a CPU", "equivtest/backends/torch/__init__.py",
           "X.device.type == \"cpu\" and X.shape[0] * X.shape[1] >= self.PIPELINE_MIN_ELEMENTS",
           "X.device.type == \"cpu\"", ("tests/test_torch_inputs.py", "-k", "large_epochs"), backends="torch"),
    Mutant("a bundled data set hands out the cache's own arrays", "equivtest/sources.py",
           "return parsed[0].copy(), parsed[1].copy()", "return parsed", ("tests/test_data.py", "-k", "bundled"),
           backends="numpy"),
    Mutant("a bundled data set's cache ignores a rewritten file", "equivtest/sources.py",
           "stat.st_mtime_ns, stat.st_size)", "0, 0)", ("tests/test_data.py", "-k", "bundled"), backends="numpy"),
    Mutant("docs/performance.md's benchmark tables show each benchmark's fastest round as its median",
           "tools/perf_tables.py", "{_ms(s['median'])}", "{_ms(s['min'])}",
           ("tests/test_docs.py", "-k", "machine or changed_in"), backends="numpy"),
    Mutant("a check's row shows PASS for a failed check (report.md, docs/performance.md)", "equivtest/report.py",
           '"PASS" if c["passed"] else "FAIL"]', '"PASS"]', ("tests/test_docs.py", "-k", "machine or changed_in"),
           backends="numpy"),
    Mutant("TensorFlow loaded before Triton (a crash with CUDA builds of torch)", "equivtest/backends/__init__.py",
           'importlib.import_module("triton")', "pass", ("tests/test_registry.py", "-k", "before_tensorflow"),
           backends="numpy"),
    Mutant("a Triton that fails to import stops Keras from loading", "equivtest/backends/__init__.py",
           "        except ImportError:", "        except ZeroDivisionError:",
           ("tests/test_registry.py", "-k", "before_tensorflow"), backends="numpy"),
    Mutant("equivtest convert loads Keras without loading torch and Triton first", "equivtest/convert/kerasio.py",
           "    before_tensorflow()\n", "", ("tests/test_registry.py", "-k", "before_tensorflow"), backends="numpy"),
)


def _copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".tox", ".benchmarks", "equivtest-report*")
    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def _pytest(copy: Path, m: Mutant) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EQUIVTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(copy), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--run-slow",
           f"--backend={m.backends}", *m.tests, *m.extra]
    return subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=900)


def _apply(copy: Path, m: Mutant) -> None:
    f = copy / m.path
    text = f.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"mutant {m.name!r}: {m.path} holds the original text {text.count(m.old)} times, not once "
                         "(the code changed: update the mutant)")
    f.write_text(text.replace(m.old, m.new))


def _ran(res: subprocess.CompletedProcess) -> bool:
    """pytest ran at least one test (exit 5 means the selection is empty: a stale -k)."""
    return res.returncode != 5


def run(mutants) -> list[tuple[Mutant, str, float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="equivtest-mutants-") as tmp:
        for i, m in enumerate(mutants):
            copy = Path(tmp) / f"m{i}"
            _copy(copy)
            t0 = time.monotonic()
            clean = _pytest(copy, m)
            if clean.returncode != 0:
                rows.append((m, f"INVALID (the unchanged code fails these tests: exit {clean.returncode})",
                             time.monotonic() - t0))
                continue
            _apply(copy, m)
            res = _pytest(copy, m)
            if not _ran(res):
                verdict = "INVALID (no test selected)"
            else:
                verdict = "caught" if res.returncode != 0 else "SURVIVED"
            rows.append((m, verdict, time.monotonic() - t0))
            shutil.rmtree(copy, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Apply deliberate bugs and check that the suite catches each one "
                                             "(exit 0: all caught; 1: one survived or was invalid).")
    ap.add_argument("-k", dest="word", default=None, help="only mutants whose name contains this word")
    ap.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if args.word is None or args.word.lower() in m.name.lower()]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.path}; pytest --backend={m.backends} {' '.join(m.tests)}")
        return 0
    rows = run(mutants)
    width = max(len(m.name) for m, _, _ in rows)
    for m, verdict, secs in rows:
        print(f"{m.name:<{width}}  {verdict:<10}  {secs:5.1f} s  ({' '.join(m.tests)})")
    caught = sum(v == "caught" for _, v, _ in rows)
    print(f"{caught}/{len(rows)} mutants caught")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
