"""The plan: reproducible batch orders and masks, drawn once, framework-free."""

import numpy as np
import pytest

from equivtest import rand
from equivtest.errors import InputError
from equivtest.plan import Optimizer, Plan


def test_orders_and_masks_are_bit_identical_across_instances():
    a, b = Plan(seed=7), Plan(seed=7)
    for epoch in (0, 3):
        np.testing.assert_array_equal(a.batch_order(epoch, 1000), b.batch_order(epoch, 1000))
        np.testing.assert_array_equal(a.epoch_masks(epoch, 300, 50), b.epoch_masks(epoch, 300, 50))


def test_epochs_and_seeds_draw_different_orders_and_masks():
    p = Plan(seed=7)
    assert not np.array_equal(p.batch_order(0, 1000), p.batch_order(1, 1000))
    assert not np.array_equal(p.epoch_masks(0, 100, 50), p.epoch_masks(1, 100, 50))
    assert not np.array_equal(p.batch_order(0, 1000), Plan(seed=8).batch_order(0, 1000))
    assert not np.array_equal(p.epoch_masks(0, 100, 50), p.replace(mask_stream=1).epoch_masks(0, 100, 50))


def test_order_is_a_permutation_and_masks_do_not_depend_on_lr_or_optimizer():
    p = Plan(seed=3)
    order = p.batch_order(2, 777)
    np.testing.assert_array_equal(np.sort(order), np.arange(777))
    q = p.replace(lr=0.5, optimizer="adam", epochs=5)
    np.testing.assert_array_equal(q.batch_order(2, 777), order)
    np.testing.assert_array_equal(q.epoch_masks(2, 40, 9), p.epoch_masks(2, 40, 9))


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.3])
def test_mask_keep_rate(rate):
    m = Plan(dropout=rate).epoch_masks(0, 2000, 500)
    assert m.dtype == bool and m.shape == (2000, 500)
    assert abs(m.mean() - (1 - rate)) < 0.005


def test_no_dropout_means_no_masks():
    assert Plan(dropout=0.0).epoch_masks(0, 10, 3) is None


def test_last_partial_batch_is_kept():
    p = Plan(batch_size=128)
    bounds = p.batch_bounds(20000)
    assert len(bounds) == p.steps_per_epoch(20000) == 157
    assert bounds[-1] == (19968, 20000)
    assert sum(b - a for a, b in bounds) == 20000


def test_plan_round_trips_through_dict():
    p = Plan(optimizer="nesterov", dtype="float64", epochs=2)
    assert Plan.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("kw, msg", [
    ({"epochs": 0}, "epochs"), ({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch size"),
    ({"lr": 0}, "learning rate"), ({"lr": float("nan")}, "learning rate"), ({"dropout": 1.0}, "dropout"),
    ({"dtype": "float16"}, "dtype"), ({"optimizer": "lbfgs"}, "optimizer"), ({"seed": -1}, "seed"),
])
def test_bad_plan_values_are_input_errors(kw, msg):
    with pytest.raises(InputError, match=msg):
        Plan(**kw)


def test_optimizer_presets():
    assert Optimizer.parse("momentum") == Optimizer("sgd", momentum=0.9)
    assert Optimizer.parse("nesterov").label == "nesterov"
    assert Optimizer.parse("adam").label == "adam"
    with pytest.raises(InputError, match="nesterov"):
        Optimizer("sgd", nesterov=True)


def test_initial_weights_are_glorot_and_reproducible():
    p = Plan(seed=11)
    w = p.initial_weights("softmax", 2048)
    limit = np.sqrt(6 / 2050)
    assert w.kernel.shape == (2048, 2) and np.all(np.abs(w.kernel) <= limit)
    np.testing.assert_array_equal(w.bias, [0, 0])
    np.testing.assert_array_equal(p.initial_weights("softmax", 2048).kernel, w.kernel)
    assert not np.array_equal(p.initial_weights("sigmoid", 2048, stream=1).kernel,
                              p.initial_weights("sigmoid", 2048).kernel)


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.3])
@pytest.mark.parametrize("d", [64, 13, 1])
def test_masks_unpacked_in_pieces_equal_the_whole_epoch(rate, d):
    """Row ranges of ``masks_for`` (fresh or into ``out``) are the epoch's rows; d = 13 splits bytes."""
    p = Plan(dropout=rate, epochs=2, seed=5)
    whole = p.epoch_masks(1, 301, d)
    drawn = p.masks_for(1, 301, d)
    pieces, into = [], []
    for s in range(0, 301, 37):
        t = min(s + 37, 301)
        pieces.append(drawn.rows(s, t))
        out = np.empty((t - s, d), bool)
        assert drawn.rows(s, t, out=out) is out
        into.append(out)
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    np.testing.assert_array_equal(np.concatenate(into), whole)


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [64, 13])
def test_scaled_masks_multiply_bit_for_bit_like_scale_then_mask(rate, dtype, d):
    """x * scaled_rows == (x * scale) * keep in every bit, signed zeros included."""
    p = Plan(dropout=rate, seed=2)
    x = rand.normal(rand.generator(0), (200, d)).astype(dtype)
    keep = p.epoch_masks(0, 200, d)
    expected = (x * dtype(p.mask_scale)) * keep
    drawn = p.masks_for(0, 200, d)
    out = np.empty((50, d), dtype)
    for s in range(0, 200, 50):
        got = x[s:s + 50] * drawn.scaled_rows(s, s + 50, p.mask_scale, out)
        assert got.tobytes() == expected[s:s + 50].tobytes()
    assert set(np.unique(out)) == {0, dtype(p.mask_scale)}


def test_mask_rows_reject_bad_ranges_and_outputs():
    drawn = Plan().masks_for(0, 10, 8)
    with pytest.raises(IndexError, match="rows 5..11"):
        drawn.rows(5, 11)
    with pytest.raises(ValueError, match="shape"):
        drawn.rows(0, 2, out=np.empty((3, 8), bool))
    with pytest.raises(ValueError, match="float"):
        drawn.scaled_rows(0, 2, 2.0, np.empty((2, 8), np.int32))
    assert Plan(dropout=0.0).masks_for(0, 10, 8) is None
