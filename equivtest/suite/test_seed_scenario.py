"""The seed's own setting: each framework's native Dropout, masks drawn independently per run.

Runs then agree only statistically.  The bound: R softmax runs that differ only in
their dropout seed give, per epoch, a spread sigma_e of val_loss caused by mask
noise alone.  If the converted sigmoid at 2 lr follows the same process, its
val_loss minus a softmax run's has standard deviation about sqrt(2) sigma_e, so
we require |gap_e| <= 4 sqrt(2) max_e(sigma_e) (a 4-sigma band) at every epoch,
and the gap must be smaller than the gap to a sigmoid from its own random init.
Seeds are fixed, so the outcome is deterministic per machine and backend.
"""

import numpy as np
import pytest

from equivtest.heads import softmax_to_sigmoid

from .tiers import FIRST

#: the fast tier runs this module on one backend; the slow tier on every selected one
pytestmark = pytest.mark.fast_cells(dict(backend=FIRST))

R = 4


def test_native_dropout_heads_agree_statistically(backend, device, dataset, plan):
    d = dataset.n_features
    w = plan.initial_weights("softmax", d)
    reps = np.array([
        backend.train("softmax", w, plan.replace(mask_stream=k), dataset, device=device, masks="native").val_loss
        for k in range(R)
    ])
    sig2 = plan.replace(lr=2 * plan.lr, mask_stream=R)
    conv = backend.train("sigmoid", softmax_to_sigmoid(w), sig2, dataset, device=device, masks="native").val_loss
    rand = backend.train("sigmoid", plan.initial_weights("sigmoid", d, stream=1), sig2.replace(mask_stream=R + 1),
                         dataset, device=device, masks="native").val_loss
    sigma = reps.std(axis=0, ddof=1).max()
    assert sigma > 0, "native masks must differ between runs (else this is not the seed's setting)"
    gap_conv = np.abs(conv - reps[0]).max()
    gap_rand = np.abs(rand - reps[0]).max()
    bound = 4 * np.sqrt(2) * sigma
    assert gap_conv <= bound, f"softmax vs converted sigmoid val_loss gap {gap_conv:.3g} > 4-sigma bound {bound:.3g}"
    assert gap_conv < gap_rand, (
        f"converted sigmoid gap {gap_conv:.3g} not smaller than random-init sigmoid gap {gap_rand:.3g}"
    )
