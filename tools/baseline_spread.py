"""Measure how far the regression baselines' runs move across kernel sets and thread counts.

Runs the configuration of the regression baselines (``equivtest/suite/test_regression.py``:
``DATA`` and ``baseline_plan``) for every installed
backend, head and dtype, in subprocesses under each kernel set below, and prints
the largest |difference| from the default run per backend and dtype.  The
regression tolerances are set from these figures (see the constant's comment).

    python tools/baseline_spread.py [--backend numpy,torch,keras] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

KERNEL_SETS = {
    "default": {},
    "1 thread": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "EQUIVTEST_SPREAD_THREADS": "1"},
    "openblas Prescott": {"OPENBLAS_CORETYPE": "Prescott"},
    "openblas Sandybridge, 1 thread": {"OPENBLAS_CORETYPE": "Sandybridge", "OMP_NUM_THREADS": "1",
                                       "OPENBLAS_NUM_THREADS": "1", "EQUIVTEST_SPREAD_THREADS": "1"},
    "aten default, onednn off": {"ATEN_CPU_CAPABILITY": "default", "TF_ENABLE_ONEDNN_OPTS": "0"},
    "16 threads": {"OMP_NUM_THREADS": "16", "OPENBLAS_NUM_THREADS": "16", "EQUIVTEST_SPREAD_THREADS": "16"},
}


def run_one(backends):
    """In the subprocess: every run of the baselines, as lists."""
    threads = os.environ.get("EQUIVTEST_SPREAD_THREADS")
    from equivtest import backends as registry
    from equivtest.suite.test_regression import DATA as data
    from equivtest.suite.test_regression import baseline_plan

    if threads and "torch" in backends:
        import torch

        torch.set_num_threads(int(threads))
    out = {}
    for name in backends:
        be = registry.get(name)
        for dtype in ("float32", "float64"):
            if dtype == "float64" and not be.supports_float64:
                continue
            plan = baseline_plan(dtype)
            for head in ("softmax", "sigmoid"):
                t = be.train(head, plan.initial_weights(head, data.n_features), plan, data)
                out[f"{name}/{head}/{dtype}"] = {
                    "step_loss": t.step_loss.tolist(), "val_loss": t.val_loss.tolist(),
                    "val_accuracy": t.val_accuracy.tolist(),
                    "kernel": np.asarray(t.weights.kernel, dtype=np.float64).ravel().tolist()}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="numpy,torch,keras")
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    names = a.backend.split(",")
    if a.child:
        json.dump(run_one(names), sys.stdout)
        return
    runs = {}
    for label, env in KERNEL_SETS.items():
        res = subprocess.run([sys.executable, __file__, "--child", "--backend", a.backend], capture_output=True,
                             text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
        if res.returncode:
            sys.exit(f"{label}: {res.stderr[-2000:]}")
        runs[label] = json.loads(res.stdout)
    base = runs["default"]
    spread = {}
    for label, r in runs.items():
        for key, fields in r.items():
            for f, v in fields.items():
                d = float(np.max(np.abs(np.asarray(v) - np.asarray(base[key][f]))))
                b, _, dt = key.split("/")
                k = f"{b}/{dt}"
                spread.setdefault(k, {}).setdefault(label, 0.0)
                spread[k][label] = max(spread[k][label], d)
    for k, per in sorted(spread.items()):
        print(f"{k:<16} " + "  ".join(f"{lab}: {v:.3g}" for lab, v in per.items()))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"spread": spread, "runs": runs}, fh)


if __name__ == "__main__":
    main()
