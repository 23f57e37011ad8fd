"""The torch backend's CPU input pipeline: a worker thread gathers and masks the next steps.

Speed must not cost exactness: the rows a step trains on are exactly
``X[order][s:t] * scale * keep``, the worker's buffers are never written while
in use, its errors reach the caller, and leaving early stops it.
"""

import threading

import numpy as np
import pytest

from equivtest import rand
from equivtest.plan import Plan

pytestmark = pytest.mark.needs_backends("torch")


@pytest.fixture(scope="module")
def tb():
    from equivtest.backends import torch as tb

    return tb


@pytest.mark.parametrize("pipelined", [True, False], ids=["worker-thread", "in-order"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dropout", [0.5, 0.3, 0.0])
def test_step_inputs_are_the_plans_masked_rows_bit_for_bit(tb, dtype, dropout, pipelined):
    """Both forms: the CPU's worker thread, and the in-order steps a GPU runs (here on the CPU)."""
    import torch

    plan = Plan(batch_size=32, dropout=dropout, dtype=dtype, epochs=2, seed=4)
    n, d = 250, 24  # a last partial batch and a partial chunk
    X = torch.as_tensor(rand.normal(rand.generator(1), (n, d))).to(getattr(torch, dtype))
    bounds = plan.batch_bounds(n)
    inputs = tb._StepInputs(X, plan, bounds, plan_masks=True, pipelined=pipelined)
    for epoch in range(plan.epochs):
        order = plan.batch_order(epoch, n)
        expected = X.numpy()[order]
        if dropout:
            expected = (expected * expected.dtype.type(plan.mask_scale)) * plan.epoch_masks(epoch, n, d)
        with inputs.epoch(epoch, torch.as_tensor(order)) as steps:
            got = [xb.numpy().copy() for xb in steps]
        assert [len(x) for x in got] == [t - s for s, t in bounds]
        assert np.concatenate(got).tobytes() == expected.tobytes()


def test_prefetched_yields_in_order_and_never_writes_a_buffer_in_use(tb):
    """No sleeping: for each item, the consumer waits until the worker has run as far ahead as the design
    lets it (item i + 2 prepared, i + 1 queued, the worker blocked), then checks that its buffer was never
    handed to ``prepare`` while held, and that the worker stopped exactly there."""
    buffers = [np.zeros(1) for _ in range(3)]
    held = {"buf": None}
    violations, prepared = [], {"count": 0}
    cond = threading.Condition()

    def prepare(i, buf):
        if buf is held["buf"]:
            violations.append(i)
        buf[0] = i
        with cond:
            prepared["count"] = i + 1
            cond.notify_all()
        return buf

    seen, n = [], 40
    for item in tb._prefetched(prepare, n, buffers):
        held["buf"] = item
        i = int(item[0])
        with cond:  # the timeout only guards against a deadlock; nothing depends on timing
            assert cond.wait_for(lambda i=i: prepared["count"] >= min(i + 3, n), timeout=120)
            assert prepared["count"] == min(i + 3, n)  # ... and no further: the queue holds one item
        assert item[0] == i  # not overwritten while held
        seen.append(i)
        held["buf"] = None
    assert seen == list(range(n))
    assert violations == []


def test_prefetched_raises_the_workers_error_in_the_caller(tb):
    def prepare(i, buf):
        if i == 3:
            raise ValueError("row 3 is bad")
        return i

    got = []
    with pytest.raises(ValueError, match="row 3 is bad"):
        for item in tb._prefetched(prepare, 10, [None] * 3):
            got.append(item)
    assert got == [0, 1, 2]


def test_leaving_the_loop_early_stops_the_worker(tb):
    before = threading.active_count()
    items = tb._prefetched(lambda i, buf: i, 10_000, [None] * 3)
    assert next(items) == 0
    items.close()
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="three buffers"):
        next(tb._prefetched(lambda i, buf: i, 5, [None] * 2))


def test_thread_count_is_shared_while_pipelined_and_restored_after(tb):
    import torch

    before = torch.get_num_threads()
    with tb._threads_per_worker(2):
        assert torch.get_num_threads() == max(1, before // 2)
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), tb._threads_per_worker(2):
        raise RuntimeError
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_gpu_input_path_trains_bit_for_bit_like_the_cpu_path(tb, optimizer, dtype):
    """The in-order path a GPU takes (epoch masks uploaded at once, steps in order, losses and correct
    counts accumulated as tensors and read once per epoch), run on the CPU: the same bits as the
    worker-thread path, for every step loss, count, validation figure and final weight."""
    from equivtest.heads import softmax_to_sigmoid
    from equivtest.sources import surrogate

    data = surrogate(600, 40, seed=3)
    plan = Plan(epochs=2, batch_size=64, lr=0.05, optimizer=optimizer, dropout=0.5, dtype=dtype)
    w = plan.initial_weights("softmax", data.n_features)
    for head, init in (("softmax", w), ("sigmoid", softmax_to_sigmoid(w))):
        cpu = tb.Backend(pipelined=True).train(head, init, plan, data, record_history=True)
        gpu_form = tb.Backend(pipelined=False).train(head, init, plan, data, record_history=True)
        for field in ("step_loss", "epoch_accuracy", "val_loss", "val_accuracy", "history"):
            assert np.array_equal(getattr(cpu, field), getattr(gpu_form, field)), (head, field)
        assert np.array_equal(cpu.weights.kernel, gpu_form.weights.kernel)


def test_the_worker_thread_serves_large_epochs_on_a_cpu_and_small_ones_run_in_order(tb):
    """By default (``pipelined=None``) the worker thread gathers only an epoch of at least
    ``PIPELINE_MIN_ELEMENTS`` rows x features: one element less runs in order; an explicit choice wins."""
    import torch

    d = 16
    n = tb._StepInputs.PIPELINE_MIN_ELEMENTS // d
    plan = Plan(epochs=1, batch_size=64, dropout=0.5)
    for rows, expected in ((n, True), (n - 1, False)):
        X = torch.empty((rows, d))  # never written: only its shape and device are read
        inputs = tb._StepInputs(X, plan, plan.batch_bounds(rows), plan_masks=True)
        assert inputs.pipelined is expected, (rows, d)
        assert tb._StepInputs(X, plan, plan.batch_bounds(rows), True, pipelined=not expected).pipelined is not expected
