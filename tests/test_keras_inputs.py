"""Keras's inputs: the plan's masked rows and sample weights, bit for bit.

On TensorFlow (one worker) tf.data gathers each batch in the plan's order from host
variables: for the head alone it applies the plan's masks to the features, for a body
it carries them as the model's second input; with class weights each batch carries its
rows' weights.  The pipeline is built once per set of variables and reads their values
afresh each epoch.  Elsewhere (keras-torch, keras-jax, N workers) the same epoch comes
as NumPy arrays (``network.ArrayFeed``).
"""

import numpy as np
import pytest

from equivtest import rand
from equivtest.plan import Plan

pytestmark = pytest.mark.needs_backends("keras")


@pytest.mark.fast_cells(dict(dropout=0.5), dict(dropout=0.0, dtype="float32"))  # masked, unmasked; the rest slow
@pytest.mark.parametrize("form", ["head", "body"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dropout", [0.5, 0.3, 0.0])
def test_epoch_batches_are_the_plans_masked_rows_and_follow_each_epochs_assignment(dtype, dropout, form):
    from equivtest.backends import get

    backend = get("keras")
    plan = Plan(batch_size=32, dropout=dropout, dtype=dtype, epochs=2, seed=4)
    n, d = 250, 24
    X = rand.normal(rand.generator(1), (n, d))
    y = np.arange(n) % 2
    W = np.where(y == 1, 3.0, 1.0).astype(dtype)
    Xt, Yt, Wt = backend._tensor(X, dtype), backend._tensor(y, dtype, "sigmoid"), backend._tensor(W, dtype)
    order, keep = backend._epoch_buffers(n, d, dropout > 0)
    steps = plan.steps_per_epoch(n)
    body = form == "body"
    args = (Xt, Yt, order, keep, plan.mask_scale, plan.batch_size, steps, Wt)
    data = backend._epoch_dataset(*args, mask_input=body)
    assert backend._epoch_dataset(*args, mask_input=body) is data
    for epoch in range(plan.epochs):
        o = plan.batch_order(epoch, n)
        order.assign(o)
        expected, masks = X.astype(dtype)[o], None
        if dropout:
            keep.assign(plan.epoch_masks(epoch, n, d))
            masks = plan.epoch_masks(epoch, n, d) * expected.dtype.type(plan.mask_scale)
            if not body:
                expected = (expected * expected.dtype.type(plan.mask_scale)) * plan.epoch_masks(epoch, n, d)
        batches = list(data.as_numpy_iterator())
        xs = [xb[0] if body and dropout else xb for xb, _, _ in batches]
        assert [len(xb) for xb in xs] == [t - s for s, t in plan.batch_bounds(n)]
        assert np.concatenate(xs).tobytes() == expected.tobytes()
        if body and dropout:
            assert np.concatenate([xb[1] for xb, _, _ in batches]).tobytes() == masks.astype(dtype).tobytes()
        np.testing.assert_array_equal(np.concatenate([yb for _, yb, _ in batches])[:, 0], y[o])
        assert np.concatenate([wb for _, _, wb in batches]).tobytes() == W[o].tobytes()


@pytest.mark.parametrize("body", ["none", "mlp"])
def test_array_epochs_mask_in_the_inputs_dtype_and_carry_each_rows_class_weight(body):
    """The array form (keras-torch, keras-jax, N workers): a float64 scale is not rounded via float32; the
    head's masks multiply its features, a body's come as the second input."""
    from types import SimpleNamespace

    from equivtest.backends import get

    get("keras")  # Keras on TensorFlow in this process
    from equivtest.backends.keras.network import ArrayFeed
    from equivtest.networks import Network

    plan = Plan(dropout=0.3, dtype="float64", batch_size=8, class_weight=(1.0, 3.0))
    x = rand.normal(rand.generator(0), (40, 9))
    y = np.arange(40) % 2
    data = SimpleNamespace(X_train=x, y_train=y, X_val=x[:5], y_val=y[:5])
    net = Network(body, (9,))
    inputs, _, sw = ArrayFeed(net, "softmax", plan, data, "plan", False).arrays(1)
    o = plan.batch_order(1, 40)
    keep = plan.epoch_masks(1, 40, net.dropout_widths[0])
    if body == "none":
        (got,) = inputs
        assert got.tobytes() == (x[o] * (keep * plan.mask_scale)).tobytes()
        np.testing.assert_array_equal(got, np.where(keep, x[o] * plan.mask_scale, 0.0))
    else:
        assert inputs[0].tobytes() == x[o].tobytes() and inputs[1].tobytes() == (keep * plan.mask_scale).tobytes()
    np.testing.assert_array_equal(sw, np.where(y[o] == 1, 3.0, 1.0))
