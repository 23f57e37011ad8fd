"""bfloat16 figures behind test_mixed_precision.py's tables.

    python tools/bf16_figures.py BACKEND [FEATURES]     # the heads
    python tools/bf16_figures.py --network BACKEND      # the mlp network (its NETWORK_CASE)

The test's plan (SGD 1e-2 / Adam 1e-3, batch 64, 3 epochs) on the suite's features (default synthetic:2000x128):
for each optimizer, the softmax's bfloat16 drift from float32 and, at factors 2, 1.95 and 2.05, the pair's gaps.
With ``--network``: the per-layer rule's gaps, the drift, and the global x2's gap (the control).
"""
import sys

import numpy as np

from equivtest import backends
from equivtest.heads import softmax_to_sigmoid
from equivtest.plan import Plan
from equivtest.rules import sigmoid_plan
from equivtest.sources import load_features


def network_rows(name: str) -> None:
    from equivtest.networks import Network, group_rates
    from equivtest.sources import surrogate
    from equivtest.suite.test_mixed_precision import NETWORK_CASE, OPTIMIZERS

    data = surrogate(NETWORK_CASE["n"], NETWORK_CASE["d"], seed=NETWORK_CASE["seed"])
    net, be = Network("mlp", data.input_shape), backends.get(name)
    for opt, lr in OPTIMIZERS.args[1]:
        p = Plan(epochs=3, batch_size=64, lr=lr, optimizer=opt, autocast="bfloat16")
        bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)

        def train(head, w, rule="per-layer", plan=p, bw=bw, lr=lr):
            return be.train_network(net, head, bw, w, plan, data, rates=group_rates(lr, 0.0, head, rule=rule))

        soft, sig = train("softmax", hw), train("sigmoid", softmax_to_sigmoid(hw))
        f32 = train("softmax", hw, plan=p.replace(autocast=None))
        glob = train("sigmoid", softmax_to_sigmoid(hw), rule="global")
        gap, vg = (np.max(np.abs(getattr(soft, f) - getattr(sig, f))) for f in ("step_loss", "val_loss"))
        drift = np.max(np.abs(soft.step_loss - f32.step_loss))
        print(f"{name} {opt}: max d step loss {gap:.2g}  d val_loss {vg:.2g}  drift {drift:.2g}  "
              f"gap/drift {gap / drift:.3g}  global x2 {np.max(np.abs(soft.step_loss - glob.step_loss)):.3g}",
              flush=True)


if sys.argv[1] == "--network":
    network_rows(sys.argv[2])
    sys.exit(0)
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
