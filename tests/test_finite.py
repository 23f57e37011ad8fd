"""``check_finite``: the one place a run is stopped by a NaN or an infinity, and what it says."""

import numpy as np
import pytest

from equivtest.backends._base import all_finite, check_finite
from equivtest.errors import NonFiniteLoss


def test_first_non_finite_loss_names_its_step_in_the_run():
    with pytest.raises(NonFiniteLoss, match=r"^non-finite loss at step 13 \(torch, softmax\)$") as info:
        check_finite("torch", "softmax", [0.7, 0.6, np.inf, np.nan], first_step=10)
    assert info.value.step == 12  # the index; the message counts from 1, as Keras prints steps


def test_non_finite_weights_after_finite_losses_name_the_last_step():
    assert not all_finite(np.zeros(3), np.array([1.0, np.nan]))
    with pytest.raises(NonFiniteLoss, match=r"non-finite weight after step 15 \(keras, sigmoid\)") as info:
        check_finite("keras", "sigmoid", [0.7] * 5, first_step=10, params_finite=all_finite([np.inf]))
    assert info.value.step == 14


def test_finite_runs_pass():
    check_finite("numpy", "sigmoid", [0.7, 0.6], first_step=0, params_finite=all_finite(np.ones((3, 1)), [0.0]))
