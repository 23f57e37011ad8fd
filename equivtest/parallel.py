"""Data-parallel training with ``torch.distributed`` (``DistributedDataParallel``, gloo on the CPU).

Each plan batch is split into ``world_size`` contiguous shards (``numpy.array_split``:
a batch of 100 over 3 ranks gives 34, 33, 33 rows; a last batch smaller than the
world leaves some ranks empty); each rank takes its shard's rows and their dropout
masks.  DDP averages the ranks' gradients, so the update equals the single-process
one only if each rank's loss is its shard's *sum* of per-sample losses times
``world_size / B`` (B the global batch size): the mean of those gradients is then
the gradient of the global batch mean.  ``weighted=False`` uses each rank's own
shard mean instead (what a plain DDP script does): equal shards give the same
update, unequal ones weight a small shard's samples more.

Launch the way users do: ``env://`` rendezvous on localhost (``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``), so the worker also runs under
``torchrun``; :func:`train` spawns the processes itself.
"""

from __future__ import annotations

import os
import socket
import tempfile

import numpy as np

from .heads import SOFTMAX, Weights
from .plan import Plan
from .trajectory import Trajectory


def shard_bounds(s: int, t: int, world_size: int) -> list[tuple[int, int]]:
    """The contiguous (start, stop) of each rank's shard of batch rows s..t (``numpy.array_split``)."""
    sizes = [len(a) for a in np.array_split(np.arange(s, t), world_size)]
    out, start = [], s
    for k in sizes:
        out.append((start, start + k))
        start += k
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(head: str, init: Weights, plan: Plan, data, world_size: int, *, weighted: bool = True) -> Trajectory:
    """Train ``head`` data-parallel on ``world_size`` CPU processes (gloo); rank 0's view of the run.

    Per step: the global batch's mean loss and correct count (all-reduced), as a
    single process reports them; per epoch: the validation figures.
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    with tempfile.TemporaryDirectory(prefix="equivtest-ddp-") as tmp:
        out = os.path.join(tmp, "rank0.npz")
        for attempt in (1, 2):
            # the port is free when chosen but not held until rank 0 binds it: another process can take it
            # in between, so a failed rendezvous is tried once more on a new port (the same run, same bits)
            env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
            try:
                mp.spawn(_spawned, args=(world_size, env, head, init, plan, _arrays(data), weighted, out),
                         nprocs=world_size, join=True)
                break
            except (mp.ProcessRaisedException, mp.ProcessExitedException):
                if attempt == 2:
                    raise
        traj = Trajectory.load(out)
    traj.meta.update({"world_size": world_size, "weighted": weighted})
    return traj


def _arrays(data):
    from types import SimpleNamespace

    return SimpleNamespace(X_train=data.X_train, y_train=data.y_train, X_val=data.X_val, y_val=data.y_val)


def _spawned(rank, world_size, env, head, init, plan, data, weighted, out):
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size)})
    worker(head, init, plan, data, weighted, out)


def worker(head: str, init: Weights, plan: Plan, data, weighted: bool, out: str | None) -> Trajectory | None:
    """One rank (``RANK``/``WORLD_SIZE``/``MASTER_*`` from the environment, as ``torchrun`` sets them)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .backends import get
    from .backends._base import batch_sizes
    from .backends.torch import _DTYPES, _loss_fn
    from .heads import hits

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        be = get("torch")
        dt = _DTYPES[plan.dtype]
        layer = be._linear(init, torch.device("cpu"), dt)
        model = DDP(layer)
        opt = be._optimizer(plan, model.parameters())
        X = torch.as_tensor(data.X_train).to(dt)
        y = torch.as_tensor(data.y_train)
        yt = y if head == SOFTMAX else torch.as_tensor(plan.targets(data.y_train)).to(dt)
        n, d = X.shape
        bounds, sizes = plan.batch_bounds(n), batch_sizes(plan, n)
        scale = plan.mask_scale
        losses, correct, val_loss, val_acc = [], [], [], []
        loss_mean = _loss_fn(head, plan)
        for epoch in range(plan.epochs):
            order = torch.as_tensor(plan.batch_order(epoch, n))
            keep = plan.epoch_masks(epoch, n, d)
            for s, t in bounds:
                a, b = shard_bounds(s, t, world)[rank]
                idx = order[a:b]
                xb = X.index_select(0, idx)
                if keep is not None:
                    xb = (xb * dt_scalar(scale, dt)) * torch.as_tensor(keep[a:b]).to(dt)
                z = model(xb)
                yb = yt.index_select(0, idx)
                k = b - a
                shard_sum = loss_mean(z, yb, None) * k if k else z.sum() * 0.0  # sum of per-sample losses
                loss = shard_sum * (world / (t - s)) if weighted else (shard_sum / k if k else shard_sum)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                stats = torch.stack([shard_sum.detach().to(torch.float64),
                                     hits(head, z.detach(), y.index_select(0, idx)).sum().to(torch.float64)])
                dist.all_reduce(stats)
                losses.append(float(stats[0]) / (t - s))
                correct.append(int(stats[1]))
            with torch.no_grad():
                Xv = torch.as_tensor(data.X_val).to(dt)
                yv = torch.as_tensor(data.y_val)
                zv = layer(Xv)
                yv_t = yv if head == SOFTMAX else torch.as_tensor(plan.targets(data.y_val)).to(dt)
                val_loss.append(float(loss_mean(zv, yv_t, None)))
                val_acc.append(int(hits(head, zv, yv).sum()) / len(yv))
        from .heads import from_torch_layout

        weights = from_torch_layout(layer.weight.detach().numpy(), layer.bias.detach().numpy())
        traj = Trajectory.from_steps(losses, correct, sizes, len(bounds), val_loss, val_acc, weights,
                                     {"backend": "torch", "head": head, "dtype": plan.dtype, "lr": plan.lr,
                                      "optimizer": plan.optimizer.label})
        if rank == 0 and out:
            traj.save(out)
        dist.barrier()  # no rank tears down (rank 0 holds the rendezvous store) while another still talks to it
        return traj
    finally:
        dist.destroy_process_group()


def dt_scalar(value: float, dt):
    """``value`` rounded once to the run's dtype (as the single-process path scales the features)."""
    import torch

    return torch.tensor(value, dtype=dt)
