"""Data-parallel training with each framework's own engine: N workers follow one, and the rule survives.

* torch: DistributedDataParallel over gloo.  Weighting each rank's loss by its
  shard's share of the batch makes the update the single process's; DDP's plain
  mean of per-rank means does so only when the shards are equal.
* keras: ``tf.distribute.MirroredStrategy`` over logical CPUs.  Keras's own loss
  is the mean of the replicas' shard means (the same flaw as plain DDP with
  unequal shards); sample weights 1 / B with a summed loss fix it.
* keras-jax: ``keras.distribution.DataParallel`` over XLA host devices: one
  partitioned program whose loss is the global mean.

The world sizes come from ``--data-parallel N`` (or EQUIVTEST_DATA_PARALLEL);
by default 2, 3 and 4, each against one worker of the same engine.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from equivtest.backends._base import shard_bounds
from equivtest.compare import (
    CONTROL_MARGIN,
    TOLERANCES,
    assert_trajectories_close,
    assert_trajectories_differ,
)
from equivtest.data import Dataset
from equivtest.errors import InputError
from equivtest.heads import softmax_to_sigmoid
from equivtest.networks import Network, group_rates
from equivtest.parallel import check, engine
from equivtest.plan import Plan
from equivtest.sources import digits, surrogate

from .plugin import PARALLEL_BATCH, world_sizes
from .tiers import FIRST

pytestmark = pytest.mark.workers  # run last: their workers start in the background (plugin)

DATA = surrogate(600, 16, seed=2)  # 480 training rows
#: the batch of the tests that compare engines: 120 divides by 1, 2, 3, 4, 5, 6, 8, 10, 12, ... and 480 by it,
#: so every engine (JAX needs every batch to split evenly) takes every world size that divides it
BATCH = PARALLEL_BATCH
#: final weights, N workers against one: the reduction order moves each update by float rounding only; measured
#: over heads and networks (none, mlp, cnn), torch and keras, N = 2, 3, 4: at most 1.0e-7 (float32) and 5.6e-17
#: (float64) on weights of magnitude up to 0.5.  The bounds are ~10 x (float32) and ~18 x (float64) those.
WEIGHT_TOLERANCES = {"float32": 1e-6, "float64": 1e-15}


def assert_weights_close(a, b, dtype: str) -> None:
    """Every trained array: the body's kernels and biases (for a network) and the head's kernel and bias."""
    __tracebackhide__ = True
    tol = WEIGHT_TOLERANCES[dtype]
    pairs = [("head kernel", a.weights.kernel, b.weights.kernel), ("head bias", a.weights.bias, b.weights.bias)]
    for i, ((ka, ba), (kb, bb)) in enumerate(zip(a.body or [], b.body or [])):
        pairs += [(f"body layer {i} kernel", ka, kb), (f"body layer {i} bias", ba, bb)]
    assert len(a.body or []) == len(b.body or []), "the runs trained different bodies"
    for name, x, y in pairs:
        gap = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        assert gap <= tol, f"{name}: max |diff| {gap:.3g} > {tol:g} ({dtype})"


def _train(*args, **kw):
    from equivtest import parallel

    return parallel.train(*args, **kw)


def _train_network(*args, **kw):
    from equivtest import parallel

    return parallel.train_network(*args, **kw)


def pytest_generate_tests(metafunc):
    """``--data-parallel N`` (or EQUIVTEST_DATA_PARALLEL) picks the world size; by default 2, 3 and 4."""
    if "world_size" in metafunc.fixturenames:
        metafunc.parametrize("world_size", world_sizes(metafunc.config))


@pytest.fixture
def dp_backend(backend):
    """The selected backend, where its framework has a data-parallel engine."""
    if engine(backend.name) is None:
        pytest.skip(f"backend '{backend.name}' has no data-parallel engine (torch, keras and keras-jax have)")
    return backend.name


def _float64(name: str, dtype: str) -> None:
    from equivtest.backends import info

    if dtype == "float64" and not info(name).float64:  # declared in the registry: keras-torch, keras-jax
        pytest.skip(f"backend '{name}' does not train in float64")


# ------------------------------------------------------------------------------ no framework needed
def test_parallel_shards_are_contiguous_and_cover_the_batch():
    assert shard_bounds(0, 100, 3) == [(0, 34), (34, 67), (67, 100)]
    assert shard_bounds(7, 9, 4) == [(7, 8), (8, 9), (9, 9), (9, 9)]  # a last batch smaller than the world


def test_parallel_engines_refuse_batches_they_cannot_split_in_one_line():
    """Keras on TensorFlow averages the first batch across replicas when fit starts (equal shapes needed);
    JAX shards every batch over the mesh; numpy has no engine.  Each is one line naming backend and batch."""
    p = Plan(batch_size=100)
    check("torch", p, 480, 3)  # any split
    check("keras", p.replace(batch_size=8), 486, 4)  # the last batch (6) may split unevenly
    with pytest.raises(InputError, match=r"backend 'keras' \(tf.distribute.MirroredStrategy\) needs the first "
                                         r"batch to divide by the 3 workers: a batch of 100"):
        check("keras", p, 480, 3)
    check("keras-jax", p, 480, 4)  # 100 x 4, then 80: 25 and 20 rows a device
    with pytest.raises(InputError, match=r"backend 'keras-jax' .* every batch \(the last one too\) .* a batch of 90"):
        check("keras-jax", p, 490, 4)  # the last batch, 90, does not split over 4 devices
    with pytest.raises(InputError, match="backend 'numpy' has no data-parallel training"):
        check("numpy", p, 480, 2)
    for name, n, world in (("keras", 480, 3), ("keras-jax", 490, 4), ("numpy", 480, 2)):
        with pytest.raises(InputError) as exc:  # each must refuse: a refusal that vanished fails here
            check(name, p, n, world)
        assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------ torch's DDP, uneven shards
@pytest.mark.needs_backends("torch")
@pytest.mark.fast_cells(dict(world_size=3, dtype="float32"))  # uneven shards, once
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_parallel_weighted_losses_follow_one_process(world_size, dtype):
    """Batch 100 over N ranks (3: uneven, 34/33/33, last batch 80: 27/27/26): one process's path."""
    from equivtest import backends

    p = Plan(epochs=2, batch_size=100, lr=0.05, optimizer="momentum", dtype=dtype)
    w = p.initial_weights("softmax", DATA.n_features)
    one = backends.get("torch").train("softmax", w, p, DATA)
    # the reduction order differs (per-rank sums, then the all-reduce): measured 3.3e-16 (float64) and
    # 1.6e-7 (float32), within the suite's tolerances
    many = _train("softmax", w, p, DATA, world_size)
    assert many.meta["world_size"] == world_size
    assert_trajectories_close(many, one, **TOLERANCES[dtype])
    assert_weights_close(many, one, dtype)


@pytest.mark.needs_backends("torch")
@pytest.mark.fast_cells(dict(ranks=2))
@pytest.mark.parametrize("ranks", [2, 4])
def test_parallel_ddp_mean_of_shard_means_breaks_with_uneven_shards(ranks):
    """Batch 2N - 1 over N ranks (2/.../2/1), 40 steps: DDP's average of per-rank means weights the lone row
    twice (measured: 0.060 at 2 ranks, 0.035 at 4, against CONTROL_MARGIN x 1e-5)."""
    from equivtest import backends

    p = Plan(epochs=1, batch_size=2 * ranks - 1, lr=0.05, optimizer="sgd", dtype="float64")
    data = _rows(DATA, 40 * p.batch_size)
    w = p.initial_weights("softmax", DATA.n_features)
    one = backends.get("torch").train("softmax", w, p, data)
    plain = _train("softmax", w, p, data, ranks, weighted=False)
    assert_trajectories_differ(plain, one, factor=CONTROL_MARGIN, **TOLERANCES["float32"])


@pytest.mark.slow
@pytest.mark.needs_backends("torch")
@pytest.mark.parametrize("ranks", [2, 4])
def test_parallel_ddp_mean_of_shard_means_holds_with_even_shards(ranks):
    """The control's other side: batch 2N over N ranks, 2 rows each in every one of 40 batches, where the plain
    mean is the batch mean."""
    from equivtest import backends

    even = Plan(epochs=1, batch_size=2 * ranks, lr=0.05, optimizer="sgd", dtype="float64")
    data = _rows(DATA, 40 * even.batch_size)
    w = even.initial_weights("softmax", DATA.n_features)
    assert_trajectories_close(_train("softmax", w, even, data, ranks, weighted=False),
                              backends.get("torch").train("softmax", w, even, data), **TOLERANCES["float64"])


# ------------------------------------------------------------------------------ every engine
# each engine once: the Keras ones here, torch's DDP in test_parallel_weighted_losses_follow_one_process (3 ranks)
@pytest.mark.fast_cells(dict(world_size=2, dtype="float32", backend=("keras", "keras-jax")))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_parallel_workers_follow_one_worker(dp_backend, world_size, dtype):
    """N workers against the plain backend in one process, same head: the reduction order is all that differs.

    The reference is the backend itself, not its engine at N = 1, so an engine that is consistently wrong at
    every world size cannot pass.
    """
    from equivtest import backends

    _float64(dp_backend, dtype)
    p = Plan(epochs=2, batch_size=BATCH, lr=0.05, optimizer="momentum", dtype=dtype)
    w = p.initial_weights("softmax", DATA.n_features)
    with ThreadPoolExecutor(1) as beside:  # the N workers are other processes: they train while this one does
        many = beside.submit(_train, "softmax", w, p, DATA, world_size, backend=dp_backend)
        one = backends.get(dp_backend).train("softmax", w, p, DATA)
        many = many.result()
    assert many.meta["world_size"] == world_size and many.meta["engine"] == engine(dp_backend)
    # measured: at most 2.2e-16 (float64) and 1.3e-7 (float32) for torch, keras and keras-jax at 2, 3 and 4
    assert_trajectories_close(many, one, **TOLERANCES[dtype])
    assert_weights_close(many, one, dtype)


@pytest.mark.fast_cells(dict(backend=FIRST))  # T31 once: torch where installed (the oracle has no engine: a skip)
def test_parallel_softmax_and_converted_sigmoid_agree(dp_backend):
    p = Plan(epochs=2, batch_size=BATCH, lr=0.05, optimizer="sgd")
    w = p.initial_weights("softmax", DATA.n_features)
    soft = _train("softmax", w, p, DATA, 2, backend=dp_backend)
    sig = _train("sigmoid", softmax_to_sigmoid(w), p.replace(lr=0.1), DATA, 2, backend=dp_backend)
    assert soft.meta["world_size"] == sig.meta["world_size"] == 2
    assert_trajectories_close(soft, sig, **TOLERANCES["float32"])
    assert np.array_equal(soft.val_accuracy, sig.val_accuracy)
    # the negative control: the sigmoid at the softmax's rate is another trajectory
    slow = _train("sigmoid", softmax_to_sigmoid(w), p, DATA, 2, backend=dp_backend)
    assert_trajectories_differ(soft, slow, factor=CONTROL_MARGIN, **TOLERANCES["float32"])


@pytest.mark.slow
@pytest.mark.needs_backends("keras")
def test_parallel_mirrored_mean_of_replica_means_breaks_on_an_uneven_last_batch():
    """MirroredStrategy, batch 8 over 4 replicas, last batch 6: Keras's loss (each replica's mean, scaled by
    1/4, gradients summed) weights the rows of the short shards more; sample weights 1/B with a summed loss
    give the global mean again."""
    data = _rows(surrogate(650, 16, seed=2), 486)  # 60 batches of 8, then 6
    p = Plan(epochs=3, batch_size=8, lr=0.2, optimizer="sgd", dtype="float64")
    w = p.initial_weights("softmax", data.n_features)
    one = _train("softmax", w, p, data, 1, backend="keras")
    # weighted: measured 2.2e-16 from one replica
    assert_trajectories_close(_train("softmax", w, p, data, 4, backend="keras"), one, **TOLERANCES["float64"])
    plain = _train("softmax", w, p, data, 4, backend="keras", weighted=False)
    # every full batch splits 2/2/2/2 and is exact up to the last step of the first epoch, where they part:
    # measured 9.0e-3 in step loss by the end (the control's threshold is 100 x 1e-5)
    steps = p.steps_per_epoch(486)
    assert np.allclose(plain.step_loss[:steps], one.step_loss[:steps], rtol=0, atol=TOLERANCES["float64"]["atol"])
    assert_trajectories_differ(plain, one, factor=CONTROL_MARGIN, **TOLERANCES["float32"])


def _rows(data: Dataset, n_train: int) -> Dataset:
    """``data``'s first ``n_train`` training rows as a dataset of their own (all of them for training)."""
    X, y = data.X_train[:n_train], data.y_train[:n_train]
    return Dataset(X, y, source=f"{data.source}[:{n_train}]", _split=(np.arange(n_train), np.arange(n_train)))


# ------------------------------------------------------------------------------ whole networks
def _network_case(body: str):
    if body == "cnn":
        d = digits(images=True)
        data = Dataset(d.X[:600], d.y[:600], source="digits[:600]")  # 480 training rows
        return Network("cnn", data.input_shape, widths=(8, 16)), data
    data = surrogate(600, 32, seed=2)
    return Network(body, data.input_shape), data


@pytest.mark.slow
@pytest.mark.parametrize("body", ["none", "mlp", "cnn"])
def test_parallel_network_workers_follow_one_worker(dp_backend, body, world_size):
    """Every body: N workers against one, float32, momentum (the body's and the head's optimizers)."""
    net, data = _network_case(body)
    p = Plan(epochs=2, batch_size=BATCH, lr=0.05, optimizer="momentum")
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    rates = group_rates(p.lr, 0.0, "softmax")
    one = _train_network(net, "softmax", bw, hw, p, data, rates, 1, backend=dp_backend)
    many = _train_network(net, "softmax", bw, hw, p, data, rates, world_size, backend=dp_backend)
    assert many.meta["world_size"] == world_size
    assert_trajectories_close(many, one, **TOLERANCES["float32"])
    assert_weights_close(many, one, "float32")


@pytest.mark.slow
@pytest.mark.parametrize("body", ["mlp", "cnn"])
def test_parallel_network_per_layer_rule_holds(dp_backend, body):
    """Softmax network vs converted sigmoid network (head x2, body x1) on 2 workers; the global x2 misses."""
    net, data = _network_case(body)
    p = Plan(epochs=2, batch_size=BATCH, lr=0.05, optimizer="momentum")
    bw, hw = p.body_weights(net), p.initial_weights("softmax", net.width)
    soft = _train_network(net, "softmax", bw, hw, p, data, group_rates(p.lr, 0.0, "softmax"), 2, backend=dp_backend)
    sig = _train_network(net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data, group_rates(p.lr, 0.0, "sigmoid"), 2,
                         backend=dp_backend)
    assert soft.meta["world_size"] == sig.meta["world_size"] == 2
    assert_trajectories_close(soft, sig, **TOLERANCES["float32"])
    glob = _train_network(net, "sigmoid", bw, softmax_to_sigmoid(hw), p, data,
                          group_rates(p.lr, 0.0, "sigmoid", rule="global"), 2, backend=dp_backend)
    assert_trajectories_differ(soft, glob, factor=CONTROL_MARGIN, **TOLERANCES["float32"])


@pytest.mark.slow
@pytest.mark.needs_backends("torch")
def test_parallel_torchrun_launch_holds_and_writes_the_verdict(tmp_path):
    """The launch users run across machines, here on one: ``torchrun --nproc-per-node=2 -m equivtest.parallel``."""
    import json
    import subprocess
    import sys

    out = tmp_path / "verdict.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "-m", "equivtest.parallel",
           "--features", "synthetic:600x16", "--batch-size", "100", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(out.read_text())
    assert verdict["passed"] and verdict["world_size"] == 2
    assert verdict["checks"]["ranks_vs_one_process"]["max_abs_gap"] <= TOLERANCES["float32"]["atol"]
    # outside torchrun: one line, exit 2
    bare = subprocess.run([sys.executable, "-m", "equivtest.parallel"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})
    assert bare.returncode == 2 and "launch it with torchrun" in bare.stderr and len(bare.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.needs_backends("torch")
def test_parallel_a_rank_error_surfaces_once_as_itself():
    """Overflowing features: every rank stops at the same step; the parent raises the rank's NonFiniteLoss with
    its message (not a spawn traceback), and it trains once (no retry that would hide a real error)."""
    from equivtest import backends
    from equivtest.errors import NonFiniteLoss

    big = Dataset(DATA.X * np.float32(1e30), DATA.y, source="overflow")
    p = Plan(epochs=1, batch_size=BATCH, lr=0.05, optimizer="sgd")
    w = p.initial_weights("softmax", DATA.n_features)
    with pytest.raises(NonFiniteLoss) as alone:
        backends.get("torch").train("softmax", w, p, big)
    with pytest.raises(NonFiniteLoss) as ranks:
        _train("softmax", w, p, big, 2)
    assert str(ranks.value) == str(alone.value) and ranks.value.step == alone.value.step  # the same stop


@pytest.mark.needs_backends("torch")
def test_parallel_one_worker_is_the_calling_process():
    """N = 1 starts no rank: the backend's own run, bit for bit, marked world size 1."""
    from equivtest import backends

    p = Plan(epochs=1, batch_size=BATCH, lr=0.05, optimizer="momentum")
    w = p.initial_weights("softmax", DATA.n_features)
    one = _train("softmax", w, p, DATA, 1)
    assert one.meta["world_size"] == 1 and one.meta["engine"] is None
    assert one.step_loss.tobytes() == backends.get("torch").train("softmax", w, p, DATA).step_loss.tobytes()
