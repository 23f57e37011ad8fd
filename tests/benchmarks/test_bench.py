"""Benchmarks at the seed's scale (20000 x 2048 float32 training rows, batch 128).

Skipped unless ``--bench`` is given.  The documented command (README, tox -e bench):

    pytest tests/benchmarks --bench --benchmark-group-by=group \
        --benchmark-json=.benchmarks/cpu.json

``test_parallel_epoch`` times data-parallel epochs at N = 1, 2, 4 (``--backend=torch,keras,keras-jax``).
Every training benchmark reports throughput (``samples_per_s``) in extra_info.
"""

import tracemalloc

import numpy as np
import pytest

from equivtest.heads import softmax_to_sigmoid
from equivtest.plan import Plan
from equivtest.sources import surrogate

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def seed_data():
    ds = surrogate()  # 25000 x 2048 -> 20000 train / 5000 val
    ds.X_train, ds.X_val  # noqa: B018 - split once, outside the timings
    return ds


def _throughput(benchmark, samples):
    med = benchmark.stats.stats.median
    benchmark.extra_info["samples_per_s"] = round(samples / med)
    benchmark.extra_info["median_ms"] = round(1e3 * med, 2)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_epoch(benchmark, backend, device, seed_data, head):
    """One training epoch with the plan's shared masks, plus the epoch's validation pass."""
    dtype = "float64" if backend.name == "numpy" else "float32"
    plan = Plan(epochs=1, batch_size=128, lr=1e-3, dtype=dtype)
    init = plan.initial_weights(head, seed_data.n_features)
    benchmark.group = f"epoch-{head}"
    benchmark.extra_info.update(backend=backend.name, device=device, dtype=dtype)
    backend.train(head, init, plan, seed_data, device=device)  # warm-up: imports, kernels, tracing
    benchmark.pedantic(backend.train, args=(head, init, plan, seed_data), kwargs={"device": device},
                       rounds=9, iterations=1)  # 9: a median that one noisy round on 2 vCPUs does not move
    _throughput(benchmark, len(seed_data.y_train))


def test_seed_run(benchmark, backend, device, seed_data):
    """The seed's full softmax run: 5 epochs, SGD lr 1e-3, batch 128, dropout 0.5."""
    plan = Plan()
    init = plan.initial_weights("softmax", seed_data.n_features)
    benchmark.group = "seed-run-5-epochs"
    benchmark.extra_info.update(backend=backend.name, device=device)
    benchmark.pedantic(backend.train, args=("softmax", init, plan, seed_data), kwargs={"device": device},
                       rounds=2, iterations=1, warmup_rounds=1)
    _throughput(benchmark, 5 * len(seed_data.y_train))


def test_conversion_and_prediction(benchmark, backend, device, seed_data):
    """Convert a softmax head and predict both heads on all 25000 x 2048 rows."""
    w = Plan().initial_weights("softmax", seed_data.n_features)

    def convert_and_predict():
        return (backend.predict_proba(w, seed_data.X, device=device),
                backend.predict_proba(softmax_to_sigmoid(w), seed_data.X, device=device))

    benchmark.group = "convert-predict-25000"
    benchmark.extra_info.update(backend=backend.name, device=device)
    p, q = benchmark.pedantic(convert_and_predict, rounds=5, iterations=1, warmup_rounds=1)
    assert np.max(np.abs(p - q)) <= 1e-6
    _throughput(benchmark, 2 * seed_data.shape[0])


def _kept_units(plan, n: int, d: int, form: str) -> int:
    """Draw 5 epochs' orders and masks; count the kept units (one epoch's draw alive at a time)."""
    kept = 0
    scratch = np.empty((plan.batch_size, d), bool)
    for e in range(plan.epochs):
        plan.batch_order(e, n)
        if form == "whole-epochs":
            kept += int(np.count_nonzero(plan.epoch_masks(e, n, d)))
        else:  # as the torch backend draws them: packed bits per epoch, unpacked batch by batch
            drawn = plan.masks_for(e, n, d)
            for s, t in plan.batch_bounds(n):
                kept += int(np.count_nonzero(drawn.rows(s, t, out=scratch[: t - s])))
    return kept


@pytest.mark.parametrize("form", ["whole-epochs", "batch-by-batch"])
def test_plan_generation(benchmark, form):
    """Batch orders and dropout masks for 5 seed-scale epochs, with peak memory."""
    plan = Plan()
    n, d = 20000, 2048
    benchmark.group = "plan"
    kept = benchmark.pedantic(_kept_units, args=(plan, n, d, form), rounds=5, iterations=1, warmup_rounds=1)
    assert abs(kept / (5 * n * d) - 0.5) < 1e-3
    tracemalloc.start()
    _kept_units(plan, n, d, form)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    benchmark.extra_info["peak_mib"] = round(peak / 2**20, 1)
    _throughput(benchmark, 5 * n)


@pytest.fixture(scope="module")
def parallel_data():
    ds = surrogate(10000, 512)  # 8000 training rows: batches of 128, the last of 64 (splits over 1, 2, 4)
    ds.X_train, ds.X_val  # noqa: B018
    return ds


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_parallel_epoch(benchmark, backend, parallel_data, world_size):
    """One data-parallel epoch with the framework's engine (torch DDP, MirroredStrategy, keras.distribution),
    start-up of the ranks included for torch (forked from a preloaded server); the Keras worker is warm."""
    from equivtest import parallel

    if parallel.engine(backend.name) is None:
        pytest.skip(f"backend '{backend.name}' has no data-parallel engine")
    plan = Plan(epochs=1, batch_size=128, lr=1e-3)
    init = plan.initial_weights("softmax", parallel_data.n_features)
    benchmark.group = f"parallel-epoch-{backend.name}"
    benchmark.extra_info.update(backend=backend.name, world_size=world_size, engine=parallel.engine(backend.name))
    args = ("softmax", init, plan, parallel_data, world_size)
    benchmark.pedantic(parallel.train, args=args, kwargs={"backend": backend.name}, rounds=3, iterations=1,
                       warmup_rounds=1)
    _throughput(benchmark, len(parallel_data.y_train))
