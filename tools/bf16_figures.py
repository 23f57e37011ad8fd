"""bfloat16 figures behind test_mixed_precision.py's table: python tools/bf16_figures.py BACKEND [FEATURES].

The test's plan (SGD 1e-2 / Adam 1e-3, batch 64, 3 epochs) on the suite's features (default synthetic:2000x128):
for each optimizer, the softmax's bfloat16 drift from float32 and, at factors 2, 1.95 and 2.05, the pair's gaps.
"""
import sys

import numpy as np

from equivtest import backends
from equivtest.heads import softmax_to_sigmoid
from equivtest.plan import Plan
from equivtest.rules import sigmoid_plan
from equivtest.sources import load_features

ds = load_features(sys.argv[2] if len(sys.argv) > 2 else "synthetic:2000x128")
be = backends.get(sys.argv[1])
base = Plan(epochs=3, batch_size=64, lr=1e-2, optimizer="sgd", dropout=0.5, seed=20180520, dtype="float32")
for opt, lr in (("sgd", 1e-2), ("adam", 1e-3)):
    p = base.replace(optimizer=opt, lr=lr, autocast="bfloat16")
    w = p.initial_weights("softmax", ds.n_features)
    soft = be.train("softmax", w, p, ds)
    f32 = be.train("softmax", w, p.replace(autocast=None), ds)
    drift = np.max(np.abs(soft.step_loss - f32.step_loss))
    for factor in (2.0, 1.95, 2.05):
        sig = be.train("sigmoid", softmax_to_sigmoid(w), sigmoid_plan(p, factor), ds)
        gap = np.max(np.abs(soft.step_loss - sig.step_loss))
        vg = np.max(np.abs(soft.val_loss - sig.val_loss))
        print(f"{sys.argv[1]} {opt} {factor}: max d step loss {gap:.2g}  d val_loss {vg:.2g}  drift {drift:.2g}  gap/drift {gap/drift:.3g}", flush=True)
