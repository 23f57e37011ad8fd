"""The seed's own setting: each framework's native Dropout, masks drawn independently per run.

Runs then agree only statistically.  R = 8 softmax runs that differ only in their
dropout seed give, per epoch, a spread sigma_e of val_loss from mask noise alone
(sigma = max_e sigma_e, estimated to about 27 % from 8 runs).  If the converted
sigmoid at 2 lr follows the same process, its val_loss minus the runs' mean has
a standard deviation of sqrt(1 + 1/R) sigma, so we require a 4-sigma band:
|gap_e| <= 4 sqrt(1 + 1/R) sigma at every epoch.  Measured (torch and numpy,
the suite's plan): the converted sigmoid sits at 0.9 to 1.6 sigma; at lr x 1.5
or x 2.5 it sits at 12.6 sigma or more, at lr x 1 and x 3 at 24 or more.  So the
control (x 1.5 and x 3) must leave the band by a factor 2 (measured 3).  Seeds
are fixed: the outcome is deterministic per machine and backend.
"""

import numpy as np
import pytest

from equivtest.heads import softmax_to_sigmoid

from .tiers import FIRST

#: the fast tier runs this module on one backend; the slow tier on every selected one
pytestmark = pytest.mark.fast_cells(dict(backend=FIRST))

R = 8
SIGMAS = 4.0
CONTROL_FACTOR = 2.0


def test_native_dropout_heads_agree_statistically(backend, device, dataset, plan):
    d = dataset.n_features
    w = plan.initial_weights("softmax", d)
    reps = np.array([
        backend.train("softmax", w, plan.replace(mask_stream=k), dataset, device=device, masks="native").val_loss
        for k in range(R)
    ])
    sigma = reps.std(axis=0, ddof=1).max()
    assert sigma > 0, "native masks must differ between runs (else this is not the seed's setting)"
    band = SIGMAS * np.sqrt(1 + 1 / R) * sigma

    def gap(factor: float) -> float:
        sig = plan.replace(lr=factor * plan.lr, mask_stream=R)
        conv = backend.train("sigmoid", softmax_to_sigmoid(w), sig, dataset, device=device, masks="native")
        return float(np.abs(conv.val_loss - reps.mean(axis=0)).max())

    g2 = gap(2.0)
    assert g2 <= band, f"softmax vs converted sigmoid val_loss gap {g2:.3g} > 4-sigma band {band:.3g}"
    for factor in (1.5, 3.0):  # the controls: a wrong rate leaves the band, by CONTROL_FACTOR
        gf = gap(factor)
        assert gf > CONTROL_FACTOR * band, f"at lr x {factor} the gap {gf:.3g} is within {CONTROL_FACTOR} x the band"
