"""Data-parallel training with each framework's own engine: the same trajectory on 1, 2 and 4 workers.

* ``torch``: ``DistributedDataParallel`` over gloo on CPU processes.  Each plan
  batch is split into ``world_size`` contiguous shards (``numpy.array_split``:
  a batch of 100 over 3 ranks gives 34, 33, 33 rows; a last batch smaller than
  the world leaves some ranks empty); each rank takes its shard's rows and their
  dropout masks.  DDP averages the ranks' gradients, so the update equals the
  single-process one only if each rank's loss is its shard's *sum* of per-sample
  losses times ``world_size / B`` (B the global batch size): the mean of those
  gradients is then the gradient of the global batch mean.  ``weighted=False``
  uses each rank's own shard mean instead (what a plain DDP script does): equal
  shards give the same update, unequal ones weight a small shard's samples more.
  :func:`train` spawns the ranks itself, with a ``file://`` rendezvous store
  that it owns; under ``torchrun`` (:func:`main`) the worker takes ``env://``
  (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``).  The plan's
  class weights, autocast and the non-finite check apply on every rank.
* One worker (N = 1) is the calling process: the backend's own training.
* ``keras``: ``tf.distribute.MirroredStrategy`` over N logical CPU devices;
  ``keras-jax``: ``keras.distribution.DataParallel`` over N XLA host devices.
  Both run in a Keras worker process started for N devices
  (:mod:`equivtest.backends.keras.parallel` says how each weights its loss).

Whole networks (:mod:`equivtest.networks`) train the same way
(:func:`train_network`): the masks of the network's Dropout layer are sharded
with the rows.
"""

from __future__ import annotations

import gc
import os
import pickle
import tempfile

from .backends._base import shard_bounds  # noqa: F401  (public here too: a rank's contiguous shard)
from .errors import InputError
from .heads import Weights
from .plan import Plan
from .trajectory import Trajectory


def engine(backend: str) -> str | None:
    """The framework engine that trains ``backend`` data-parallel, or None."""
    from .backends import info

    return info(backend).data_parallel


def check(backend: str, plan: Plan, n: int, world_size: int, *, network: bool = False) -> None:
    """Raise :class:`~equivtest.errors.InputError` (one line) where ``backend``'s engine cannot split the plan.

    torch takes any split.  Keras on TensorFlow reduces the first batch across
    replicas when ``fit`` starts (``Trainer._maybe_symbolic_build``), which needs
    equal per-replica shapes: the batch size must divide by N (a smaller last
    batch is fine).  JAX shards every batch over the devices' mesh: every batch,
    the last one too, must divide by N.
    """
    if engine(backend) is None:
        from .backends import REGISTRY

        usable = ", ".join(n_ for n_, bi in REGISTRY.items() if bi.data_parallel)
        raise InputError(f"backend '{backend}' has no data-parallel training (backends with it: {usable})")
    if world_size < 1:
        raise InputError(f"data-parallel needs at least 1 worker, got {world_size}")
    from .backends import refusal

    declared = refusal(backend, plan, world_size=world_size, network=network)  # declared not offered
    if declared:
        raise InputError(declared)
    if backend == "torch" or world_size == 1:
        return
    sizes = [t - s for s, t in plan.batch_bounds(n)] if n else [plan.batch_size]  # n = 0: rows not known yet
    bad = [k for k in (sizes if backend == "keras-jax" else sizes[:1]) if k % world_size]
    if bad:
        which = "every batch (the last one too)" if backend == "keras-jax" else "the first batch"
        rows = f", {n} training rows" if n else ""
        raise InputError(
            f"backend '{backend}' ({engine(backend)}) needs {which} to divide by the {world_size} workers: "
            f"a batch of {bad[-1]} does not (batch size {plan.batch_size}{rows})")


_keras_workers: dict = {}


def _keras_worker(backend: str, world_size: int):
    """The Keras worker process for ``backend`` with ``world_size`` host devices, started once and kept."""
    key = (backend, world_size)
    if key not in _keras_workers:
        from .backends import info
        from .backends.keras.worker import Backend

        reason = info(backend).unavailable_reason()
        if reason:
            from .errors import BackendUnavailable

            raise BackendUnavailable(reason)
        _keras_workers[key] = Backend(backend, host_devices=world_size)
    return _keras_workers[key]


def prestart(backend: str, world_size: int) -> None:
    """Start ``backend``'s workers for ``world_size`` now, so their framework loads while the caller does other
    work (the suite calls it when collection ends): torch's fork server (it imports
    :data:`FORKSERVER_PRELOAD` once; every rank is a fork of it), or the Keras worker (at a lower CPU priority:
    it loads ahead of need).  Nothing where the backend has no engine or its framework is absent."""
    from .backends import info

    if engine(backend) is None or info(backend).unavailable_reason() is not None:
        return
    if backend != "torch":
        _keras_worker(backend, world_size).start(background=True)
    elif _start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()  # returns at once: the server imports the preload list on its own


def close_workers() -> None:
    """Stop every Keras worker this process started (the suite calls it when the session ends)."""
    workers = list(_keras_workers.values())
    _keras_workers.clear()
    for worker in workers:  # all asked at once: they exit together
        worker.stop()
    for worker in workers:
        worker.close()


def train(head: str, init: Weights, plan: Plan, data, world_size: int, *, weighted: bool = True,
          backend: str = "torch") -> Trajectory:
    """Train ``head`` data-parallel on ``world_size`` workers with ``backend``'s engine.

    Per step: the global batch's mean loss and correct count, as a single
    process reports them; per epoch: the validation figures.
    """
    check(backend, plan, len(data.y_train), world_size)
    if world_size == 1:  # one process is the calling one: no rank, no worker
        return _one_process(get_backend(backend).train(head, init, plan, data), backend)
    if backend != "torch":
        traj = _keras_worker(backend, world_size).train_parallel(head, init, plan, data, weighted=weighted)
        traj.meta.setdefault("source", getattr(data, "source", None))
        return traj
    return _spawn(world_size, (head, init, plan, _arrays(data), weighted, None), weighted)


def train_network(network, head: str, body_init, head_init: Weights, plan: Plan, data, rates, world_size: int, *,
                  weighted: bool = True, backend: str = "torch") -> Trajectory:
    """A whole network (body and head, one optimizer per group) trained data-parallel."""
    check(backend, plan, len(data.y_train), world_size, network=True)
    if world_size == 1:
        traj = get_backend(backend).train_network(network, head, body_init, head_init, plan, data, rates=rates)
        return _one_process(traj, backend)
    if backend != "torch":
        return _keras_worker(backend, world_size).train_network_parallel(
            network, head, body_init, head_init, plan, data, rates=rates, weighted=weighted)
    net = (network, body_init, rates)
    return _spawn(world_size, (head, head_init, plan, _arrays(data), weighted, net), weighted)


def get_backend(name: str):
    from .backends import get

    return get(name)


def _one_process(traj: Trajectory, backend: str) -> Trajectory:
    traj.meta.update({"world_size": 1, "engine": None})
    return traj


#: where a rank that failed leaves its error for the parent (the first one wins): ``<out>.error``
def _error_path(out: str) -> str:
    return out + ".error"


def _spawn(world_size: int, job: tuple, weighted: bool) -> Trajectory:
    """Run ``worker(*job)`` on ``world_size`` spawned processes; rank 0's trajectory.

    One rendezvous, owned by this process: a ``file://`` store in a temporary folder that only this call
    uses, so there is no port to race for and nothing to retry.  A rank that raises leaves its error's type
    and message beside the result; it is raised here once, as itself (``NonFiniteLoss``, ``InputError``...).
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="equivtest-ddp-") as tmp:
        out = os.path.join(tmp, "rank0.pickle")
        env = {RENDEZVOUS_ENV: "file://" + os.path.join(tmp, "rendezvous")}
        ctx = mp.start_processes(_spawned, args=(world_size, env, job, out), nprocs=world_size, join=False,
                                 start_method=_start_method())
        try:
            _join(ctx, out)
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            _raise_rank_error(out)
            raise
        with open(out, "rb") as f:
            traj = pickle.load(f)
    traj.meta.update({"world_size": world_size, "weighted": weighted, "engine": engine("torch")})
    return traj


#: seconds the ranks get to exit once rank 0's result is written (they have trained and met at the barrier)
TEARDOWN_GRACE_S = 60.0


def _join(ctx, out: str) -> None:
    """Wait for the ranks; a rank that raised raises here.  Once rank 0's result is written every rank has
    finished training, so a rank still alive :data:`TEARDOWN_GRACE_S` later is stuck in torch.distributed's
    teardown: it is killed and the run stands (a safety net; the teardown order in :func:`worker` avoids the
    hang we saw)."""
    import time

    written = None
    while not ctx.join(timeout=1.0):
        if written is None and os.path.exists(out):
            written = time.monotonic()
        if written is not None and time.monotonic() - written > TEARDOWN_GRACE_S:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            return


RENDEZVOUS_ENV = "EQUIVTEST_RENDEZVOUS"
#: what the fork server imports once, so that each rank is a fork with torch loaded (a fresh ``spawn``
#: re-imports torch in every rank, seconds each); DDP's constructor imports torch._dynamo (about 2 s); last,
#: :mod:`equivtest._forkserver`: the server leaves without tearing them down
FORKSERVER_PRELOAD = ("torch", "torch.distributed", "torch.nn.parallel", "torch._dynamo", "equivtest.parallel",
                      "equivtest.backends.torch", "equivtest.backends.torch.network", "equivtest._forkserver")
_preload_set = False


def _start_method() -> str:
    """``forkserver`` with :data:`FORKSERVER_PRELOAD`; ``spawn`` where there is no forkserver (not POSIX).
    The preload list is the fork server's, set once per process before it starts (not on every call)."""
    global _preload_set
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    if not _preload_set:
        multiprocessing.set_forkserver_preload(list(FORKSERVER_PRELOAD))
        _preload_set = True
    return "forkserver"


def _raise_rank_error(out: str) -> None:
    path = _error_path(out)
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        kind, message, step = pickle.load(f)
    from .errors import NonFiniteLoss

    if kind == "NonFiniteLoss":
        raise NonFiniteLoss(message, step) from None
    known = {"InputError": InputError, "NotImplementedError": NotImplementedError, "ValueError": ValueError}
    raise known.get(kind, RuntimeError)(message if kind in known else f"a DDP rank failed: {kind}: {message}") \
        from None


def _arrays(data):
    from types import SimpleNamespace

    return SimpleNamespace(X_train=data.X_train, y_train=data.y_train, X_val=data.X_val, y_val=data.y_val)


def _spawned(rank, world_size, env, job, out):
    import sys

    # a fork of the fork server: its heap (torch, torch._dynamo) is the server's, shared copy-on-write.  Frozen,
    # the collection in worker() scans only what this rank made (its model, DDP's Reducer) instead of writing
    # to every inherited object's header (measured in docs/performance.md)
    gc.freeze()
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size)})
    try:
        worker(*job, out=out)
    except Exception as exc:  # left for the parent (first rank wins), which raises it as itself
        try:
            fd = os.open(_error_path(out), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                pickle.dump((type(exc).__name__, str(exc), getattr(exc, "step", None)), f)
        except FileExistsError:
            pass
        raise
    # our own rank process, its result written: leave without the interpreter's teardown, which would free
    # torch.distributed objects in whatever order it meets them (an error raised above still reaches spawn)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker(head: str, init: Weights, plan: Plan, data, weighted: bool, network=None, *,
           out: str | None = None) -> Trajectory | None:
    """One rank (``RANK``/``WORLD_SIZE``/``MASTER_*`` from the environment, as ``torchrun`` sets them).

    ``network`` is ``(Network, body_init, GroupRates)`` for a whole network, or None for the head alone.
    """
    import warnings

    import torch
    import torch.distributed as dist

    from .backends import get

    own = not dist.is_initialized()  # under torchrun's entry point (main) the group outlives one run
    # a Conv2d over one input channel has a weight gradient whose strides are ambiguous (size-1 dimension);
    # DDP's reducer warns that they differ from its bucket view's, which is harmless here
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    torch.set_num_threads(1)
    if own:  # spawned by _spawn: the parent's file store; under torchrun: its environment
        rendezvous = os.environ.get(RENDEZVOUS_ENV)
        if rendezvous:
            dist.init_process_group("gloo", init_method=rendezvous, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
        else:
            dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        from .backends.torch import DataParallel
        from .networks import head_alone

        meta = {"backend": "torch", "head": head, "dtype": plan.dtype, "lr": plan.lr,
                "optimizer": plan.optimizer.label, "device": "cpu"}
        if network is None:  # the head: the network with body none, at the plan's rate and decay
            (net, rates), body_init = head_alone(plan, data.X_train.shape[1]), []
        else:
            net, body_init, rates = network
            meta.update({"body": net.body, "rates": rates.__dict__})
        ddp = DataParallel(rank, world, weighted)
        traj = get("torch").run(net, head, body_init, init, plan, data, rates, "cpu", world=ddp, meta=meta)
        if network is None:
            traj.body = None
        if rank == 0 and out:
            with open(out + ".part", "wb") as f:  # our own temporary file: pickled whole, the body's weights too
                pickle.dump(traj, f)
            os.replace(out + ".part", out)  # whole or absent: the parent watches for it
        dist.barrier()  # no rank tears down (rank 0 holds the rendezvous store) while another still talks to it
        # DDP's Reducer holds the process group: freed from Python (a pybind dealloc that keeps the GIL) after
        # destroy_process_group, it would be the last owner, and the group's destructor would wait for gloo's
        # thread while that thread waits for the GIL to free its last work (seen: a rank hung for good).
        # So the Reducer goes first, while the group is still registered (run() leaves the model to ddp).
        ddp.model = None
        gc.collect()
        return traj
    finally:
        if own:
            dist.destroy_process_group()


def main(argv=None) -> int:
    """``torchrun [...] -m equivtest.parallel``: the check across machines.

    Every launched rank trains the softmax head and its converted sigmoid (at 2 x
    the rate) with DDP over gloo; rank 0 then trains the softmax head in one
    process and reports both comparisons: exit 0 when they hold, 1 when not, 2 on
    bad input.  ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; every node needs the same features (a built-in source, or the
    same h5 file).
    """
    import argparse
    import json
    import sys

    from .compare import TOLERANCES, compare_trajectories
    from .heads import softmax_to_sigmoid
    from .sources import load_features

    ap = argparse.ArgumentParser(prog="torchrun [...] -m equivtest.parallel",
                                 description="softmax vs converted sigmoid, data-parallel over torchrun's ranks")
    ap.add_argument("--features", default="synthetic:2000x64", help="features source (default: synthetic:2000x64)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05, help="the softmax head's rate; the sigmoid's is 2 x")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--out", default=None, help="rank 0 writes the verdict here as JSON")
    args = ap.parse_args(argv)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        print(f"python -m equivtest.parallel: {', '.join(missing)} not set: launch it with torchrun", file=sys.stderr)
        return 2
    try:
        data = load_features(args.features)
        plan = Plan(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, dtype=args.dtype)
        check("torch", plan, len(data.y_train), int(os.environ["WORLD_SIZE"]))  # what the ranks cannot do: refused
    except (InputError, ValueError) as exc:
        print(f"python -m equivtest.parallel: {exc}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")
    try:
        w = plan.initial_weights("softmax", data.n_features)
        soft = worker("softmax", w, plan, _arrays(data), True)
        sig = worker("sigmoid", softmax_to_sigmoid(w), plan.replace(lr=2 * plan.lr), _arrays(data), True)
        rank, world = dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return 0
    from .backends import get

    one = get("torch").train("softmax", w, plan, data)
    tol = TOLERANCES[plan.dtype]
    checks = {"ranks_vs_one_process": compare_trajectories(soft, one, **tol),
              "softmax_vs_converted_sigmoid": compare_trajectories(soft, sig, **TOLERANCES["float32"])}
    verdict = {"world_size": world, "features": data.source, "dtype": plan.dtype,
               "checks": {k: {"ok": c.ok, "max_abs_gap": c.max_abs} for k, c in checks.items()}}
    verdict["passed"] = all(c.ok for c in checks.values())
    for k, c in checks.items():
        print(f"{k} ({world} ranks): {'ok' if c.ok else 'FAILED'} (max |gap| {c.max_abs:.3g})")
    if args.out:
        from . import atomic

        atomic.write_text(args.out, json.dumps(verdict, indent=1))
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
