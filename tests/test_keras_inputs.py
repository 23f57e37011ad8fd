"""The Keras (TensorFlow) backend's input pipeline: the plan's masked rows, bit for bit.

The model is the head alone; tf.data gathers each batch in the plan's order and
applies the plan's masks.  The pipeline is built once per set of variables and
reads their values afresh each epoch.
"""

import numpy as np
import pytest

from equivtest import rand
from equivtest.plan import Plan

pytestmark = pytest.mark.needs_backends("keras")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dropout", [0.5, 0.3, 0.0])
def test_epoch_batches_are_the_plans_masked_rows_and_follow_each_epochs_assignment(dtype, dropout):
    from equivtest.backends import get

    backend = get("keras")
    plan = Plan(batch_size=32, dropout=dropout, dtype=dtype, epochs=2, seed=4)
    n, d = 250, 24
    X = rand.normal(rand.generator(1), (n, d))
    y = np.arange(n) % 2
    Xt, Yt = backend._tensor(X, dtype), backend._tensor(y, dtype, "sigmoid")
    order, keep = backend._epoch_buffers(n, d, dropout > 0)
    steps = plan.steps_per_epoch(n)
    data = backend._epoch_dataset(Xt, Yt, order, keep, plan.mask_scale, plan.batch_size, steps)
    assert backend._epoch_dataset(Xt, Yt, order, keep, plan.mask_scale, plan.batch_size, steps) is data
    for epoch in range(plan.epochs):
        o = plan.batch_order(epoch, n)
        order.assign(o)
        expected = X.astype(dtype)[o]
        if dropout:
            keep.assign(plan.epoch_masks(epoch, n, d))
            expected = (expected * expected.dtype.type(plan.mask_scale)) * plan.epoch_masks(epoch, n, d)
        batches = list(data.as_numpy_iterator())
        assert [len(xb) for xb, _ in batches] == [t - s for s, t in plan.batch_bounds(n)]
        assert np.concatenate([xb for xb, _ in batches]).tobytes() == expected.tobytes()
        np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches])[:, 0], y[o])


def test_plan_dropout_layer_scales_in_the_inputs_dtype():
    """The in-model form (used by keras-torch / keras-jax): a float64 scale is not rounded via float32."""
    from equivtest.backends import get

    get("keras")  # Keras on TensorFlow in this process
    from equivtest.backends.keras.common import PlanDropout

    plan = Plan(dropout=0.3)
    x = rand.normal(rand.generator(0), (40, 9))
    keep = plan.epoch_masks(0, 40, 9)
    got = np.asarray(PlanDropout(plan.mask_scale, dtype="float64")(x, keep))
    assert got.tobytes() == np.where(keep, x * plan.mask_scale, 0.0).tobytes()
