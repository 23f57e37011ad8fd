"""The PyTorch backend: ``nn.Linear`` heads, ``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits``.

Devices ``cpu``, ``cuda[:N]``, ``mps`` where present; float32 and float64.  TF32
is off for CUDA matmuls unless :meth:`Backend.set_tf32` (or ``EQUIVTEST_TF32=1``)
turns it on.  The plan's masks enter as ``x * scale * mask`` before the Linear
layer (``_StepInputs``: for a large epoch on a CPU a worker thread gathers and
masks the next steps while the current one trains); ``masks="native"`` uses ``nn.Dropout`` with
a generator forked from ``plan.seed`` instead.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...heads import (
    SOFTMAX,
    UNITS,
    Weights,
    from_torch_layout,
    hits,
    sigmoid_coordinates,
    to_torch_layout,
)
from ...plan import Plan, tf32_requested
from ...trajectory import Trajectory
from .._base import BaseBackend, batch_sizes, check_finite, epoch_logs, shard_bounds, step_hook
from .ops import DTYPES, loss_fn


def _to_sigmoid_coordinates(flat: np.ndarray, d: int) -> np.ndarray:
    """(steps, (d + 1) k) rows of [kernel (d, k); bias (k)] -> (steps, d + 1) of (beta, c)."""
    w = flat.reshape(len(flat), d + 1, -1)
    return sigmoid_coordinates(w[:, :d], w[:, d])


def set_torch_tf32(on: bool) -> None:
    """torch's TF32 switches for CUDA matmuls and cuDNN (this backend's and Keras-on-torch's)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "tf32" if on else "ieee"
    else:  # torch < 2.9
        matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = bool(on)


def _correct_per_step(head: str, z, y, sizes) -> np.ndarray:
    """Correct predictions per step from an epoch's concatenated logits and labels in order."""
    hit = hits(head, z, y)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.add.reduceat(hit.cpu().numpy().astype(np.int64), starts)


@contextlib.contextmanager
def _threads_per_worker(workers: int):
    """Share torch's intra-op threads among ``workers`` Python threads for the block.

    With a gathering thread beside the training thread each gets half, so two
    threads on a 2-core machine do not fight over the cores (the thread count is
    restored on exit; the same plan gives the same count, hence the same bits).
    """
    before = torch.get_num_threads()
    share = max(1, before // workers)
    if share != before:
        torch.set_num_threads(share)
    try:
        yield
    finally:
        if share != before:
            torch.set_num_threads(before)


_DONE = object()


def _prefetched(prepare, steps: int, buffers: list):
    """Yield ``prepare(i, buffer)`` for i in range(steps), computed on a worker thread ahead of use.

    The worker fills ``buffers`` in turn and keeps at most one finished item
    queued, so with three buffers the one being trained on is never written:
    item i + 3 reuses item i's buffer only after the consumer asked for i + 1.
    torch and NumPy release the GIL while they copy, so the gather and mask of
    the next step overlap the current step's forward, backward and update.  An
    exception in the worker is raised in the consumer; leaving the loop early
    stops the worker.
    """
    if len(buffers) < 3:
        raise ValueError("prefetching needs three buffers")
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def work():
        try:
            for i in range(steps):
                if stop.is_set():
                    return
                ready.put((prepare(i, buffers[i % len(buffers)]), None))
            ready.put((_DONE, None))
        except BaseException as exc:  # handed to the consumer
            ready.put((_DONE, exc))

    worker = threading.Thread(target=work, name="equivtest-torch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = ready.get()
            if exc is not None:
                raise exc
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a pending put, then wait for the worker to see ``stop``
            with contextlib.suppress(queue.Empty):
                ready.get_nowait()
            worker.join(0.01)


class _StepInputs:
    """Each step's input rows, ``x * scale`` where the plan keeps a unit and 0 elsewhere.

    Rows are gathered into buffers reused for the whole run.  On a GPU, and on
    a CPU for a small epoch, the epoch's masks go to the device at once and the
    steps run in order.  On a CPU, for an epoch of at least
    ``PIPELINE_MIN_ELEMENTS``, a worker thread gathers and masks the next steps while the current one
    trains (``_prefetched``), ``_CHUNK`` steps at a time, and the masks are
    unpacked step by step as ``scale`` or 0 into a scratch array of the
    features' dtype: one same-dtype multiply (a uint8 or bool operand would be
    cast into a temporary per step), no memory allocated per step (memory freed
    by a worker thread goes back to the system and faults in again), and an
    epoch never holds more than its packed random bits.
    """

    _CHUNK = 2
    #: the smallest epoch (rows x features) the worker thread pays for itself on: below it the thread's start
    #: and the thread-count switch each epoch cost more than the gathering it overlaps, and the in-order path
    #: (bit for bit the same inputs) is faster; figures in docs/performance.md ("The worker thread by size")
    PIPELINE_MIN_ELEMENTS = 2**24

    def __init__(self, X, plan: Plan, bounds, plan_masks: bool, pipelined: bool | None = None, spare=None):
        self.X, self.plan, self.bounds, self.plan_masks = X, plan, bounds, plan_masks
        self.scale = plan.mask_scale
        if pipelined is None:
            pipelined = X.device.type == "cpu" and X.shape[0] * X.shape[1] >= self.PIPELINE_MIN_ELEMENTS
        self.pipelined = pipelined
        per = self._CHUNK if self.pipelined else 1
        self.chunks = [(i, min(i + per, len(bounds))) for i in range(0, len(bounds), per)]
        self.key = (per * plan.batch_size, X.shape[1], X.dtype, X.device, self.pipelined)
        if spare is not None and spare[0] == self.key:  # an earlier run's buffers: no first-touch faults
            self.buffers, self.keep = spare[1]
        else:
            rows, d = self.key[:2]
            self.buffers = [torch.empty((rows, d), device=X.device, dtype=X.dtype)
                            for _ in range(3 if self.pipelined else 1)]
            self.keep = torch.empty((rows, d), dtype=X.dtype) if self.pipelined else None  # the worker's scratch

    def spare(self):
        """The buffers, for a later run with the same shapes (``spare=``)."""
        return self.key, (self.buffers, self.keep)

    @contextlib.contextmanager
    def epoch(self, epoch: int, order):
        """The epoch's step inputs in order (an iterator), valid inside the block."""
        n, d = self.X.shape
        drawn = self.plan.masks_for(epoch, n, d) if self.plan_masks else None
        on_device = None
        if drawn is not None and not self.pipelined:  # one upload of the epoch's 0/1 bytes
            on_device = torch.as_tensor(drawn.rows(0, n).view(np.uint8), device=self.X.device)

        def prepare(chunk, buf):
            first, stop = self.chunks[chunk]
            s, t = self.bounds[first][0], self.bounds[stop - 1][1]
            xb = torch.index_select(self.X, 0, order[s:t], out=buf[: t - s])
            if on_device is not None:
                xb.mul_(self.scale).mul_(on_device[s:t])  # on a GPU uint8 is cast on the fly
            elif drawn is not None:  # scale where kept, else 0: equal to x * scale * keep bit for bit
                xb.mul_(torch.from_numpy(drawn.scaled_rows(s, t, self.scale, out=self.keep[: t - s].numpy())))
            return xb.split([b - a for a, b in self.bounds[first:stop]])

        if self.pipelined:
            chunks = _prefetched(prepare, len(self.chunks), self.buffers)
            try:
                with _threads_per_worker(2):
                    yield itertools.chain.from_iterable(chunks)
            finally:
                chunks.close()  # stops the worker when the loop was left early
        else:
            yield itertools.chain.from_iterable(prepare(c, self.buffers[0]) for c in range(len(self.chunks)))


class _BodyInputs:
    """A network's step inputs: the rows, and the plan's masks as ``scale`` or 0 where its Dropout layer sits
    (:class:`_StepInputs` is the head's, with the mask applied to the rows themselves)."""

    def __init__(self, X, plan: Plan, bounds, width: int):
        self.X, self.plan, self.bounds, self.width = X, plan, bounds, width

    @contextlib.contextmanager
    def epoch(self, epoch: int, order):
        drawn = self.plan.epoch_masks(epoch, len(order), self.width)
        scaled = None if drawn is None else torch.as_tensor(drawn, device=self.X.device).to(self.X.dtype) * \
            self.plan.mask_scale
        yield (((self.X.index_select(0, order[s:t]), None if scaled is None else scaled[s:t]), order[s:t])
               for s, t in self.bounds)


class DataParallel:
    """This process's place in a ``torch.distributed`` world, for :meth:`Backend.run`.

    The model is wrapped in ``DistributedDataParallel``; each step trains this rank's contiguous shard of
    the batch (:func:`shard_bounds`), its loss the shard's sum of per-sample losses scaled by
    world / batch rows (``weighted``: DDP's mean of the ranks' gradients is then the batch's mean), or the
    shard's own mean (the engine's plain mean of means, the negative control); each step's loss and correct
    count are summed over the ranks.  ``model`` keeps the wrapped model after the run: its owner frees it
    while the process group is still registered (see ``equivtest.parallel.worker``).
    """

    def __init__(self, rank: int, world_size: int, weighted: bool = True):
        self.rank, self.world_size, self.weighted = rank, world_size, weighted
        self.model = None


class _ShardInputs:
    """A rank's step inputs: its shard of each batch's rows, masked as one process masks them."""

    def __init__(self, X, plan: Plan, bounds, width: int, head_only: bool, world: DataParallel):
        self.X, self.plan, self.bounds, self.width, self.head_only, self.world = X, plan, bounds, width, head_only, world

    @contextlib.contextmanager
    def epoch(self, epoch: int, order):
        X, plan, dt = self.X, self.plan, self.X.dtype
        keep = plan.epoch_masks(epoch, len(order), self.width)
        scale = torch.tensor(plan.mask_scale, dtype=dt)  # rounded once to the run's dtype, as _StepInputs
        scaled = None if keep is None or self.head_only else torch.as_tensor(keep).to(dt) * plan.mask_scale

        def steps():
            for s, t in self.bounds:
                a, b = shard_bounds(s, t, self.world.world_size)[self.world.rank]
                xb = X.index_select(0, order[a:b])
                if self.head_only:
                    yield ((xb * scale) * torch.as_tensor(keep[a:b]).to(dt) if keep is not None else xb), order[a:b]
                else:
                    yield (xb, None if scaled is None else scaled[a:b]), order[a:b]

        yield steps()


class Backend(BaseBackend):
    name = "torch"
    framework = "torch"

    def __init__(self, pipelined: bool | None = None):
        """``pipelined``: the CPU's worker-thread input path (None: on a CPU for an epoch of at least
        ``_StepInputs.PIPELINE_MIN_ELEMENTS`` rows x features, never on a GPU).  ``False`` on a CPU runs the
        in-order path a GPU takes (masks uploaded per epoch, steps in order): the same bits, tested so where
        there is no GPU."""
        self.pipelined = pipelined
        self._spare = None  # the last run's step buffers (see _StepInputs)
        self.set_tf32(tf32_requested())

    def version(self) -> str:
        return torch.__version__

    def devices(self) -> list[str]:
        devs = ["cpu"]
        if torch.cuda.is_available():
            devs += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            devs.append("mps")
        return devs

    def set_tf32(self, on: bool) -> None:
        set_torch_tf32(on)
        self._tf32 = bool(on)

    def tf32(self) -> bool:
        return self._tf32

    # -- models -------------------------------------------------------------------
    def linear_layer(self, weights: Weights, device, dtype) -> nn.Linear:
        d, k = weights.kernel.shape
        layer = nn.Linear(d, k, device=device, dtype=dtype)
        w, b = to_torch_layout(weights)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float64)))
            layer.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float64)))
        return layer

    def count_params(self, head: str, d: int) -> int:
        layer = nn.Linear(int(d), UNITS[head], device="meta")
        return sum(p.numel() for p in layer.parameters())

    def predict_proba(self, weights: Weights, X, *, device="cpu", dtype="float32") -> np.ndarray:
        dev = torch.device(self.resolve_device(device))
        dt = DTYPES[dtype]
        layer = self.linear_layer(weights, dev, dt)
        with torch.no_grad():
            z = layer(torch.as_tensor(np.asarray(X), device=dev, dtype=dt))
            p = F.softmax(z, dim=1)[:, 1] if weights.head == SOFTMAX else torch.sigmoid(z[:, 0])
        return p.cpu().numpy()

    # -- training -----------------------------------------------------------------
    def make_optimizer(self, plan: Plan, params):
        s = plan.optimizer  # decoupled decay outside AdamW: refused by the registry before this (refusal())
        wd = s.weight_decay
        if s.name == "sgd":
            return torch.optim.SGD(params, lr=plan.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=wd)
        if s.name == "adam":
            return torch.optim.Adam(params, lr=plan.lr, betas=(s.beta_1, s.beta_2), eps=s.epsilon, weight_decay=wd)
        if s.name == "adamw":
            return torch.optim.AdamW(params, lr=plan.lr, betas=(s.beta_1, s.beta_2), eps=s.epsilon, weight_decay=wd)
        if s.name == "rmsprop":
            return torch.optim.RMSprop(params, lr=plan.lr, alpha=s.rho, eps=s.epsilon, weight_decay=wd)
        if s.name == "adagrad":
            return torch.optim.Adagrad(params, lr=plan.lr, eps=s.epsilon, weight_decay=wd,
                                       initial_accumulator_value=s.initial_accumulator)
        raise NotImplementedError(f"backend 'torch' has no optimizer {s.name!r}")

    def count_network_params(self, network, head: str) -> int:
        """``sum(p.numel())`` over the network's ``nn.Module``."""
        from .network import TorchNetwork

        model = TorchNetwork(network, [], head, torch.device("meta"), torch.float32)
        return int(sum(p.numel() for p in model.parameters()))

    def network_loop(self):
        def loop(backend, network, head, body_init, head_init, plan, data, rates, device="cpu"):
            return backend.run(network, head, body_init, head_init, plan, data, rates, device)

        return loop

    def train(self, head, init, plan: Plan, data, *, device="cpu", masks="plan", callback=None,
              record_history=False) -> Trajectory:
        """The head is the network with body ``none``: :meth:`run` trains both."""
        from ...networks import head_alone

        self._check_train_args(head, init, plan, data, masks)
        device = self.resolve_device(device)
        net, rates = head_alone(plan, data.n_features)
        return self.run(net, head, [], init, plan, data, rates, device,
                        masks=masks, callback=callback, record_history=record_history,
                        meta=self._meta(head, plan, data, device, masks))

    def run(self, net, head, body_init, head_init: Weights, plan: Plan, data, rates, device="cpu", *,
            masks="plan", callback=None, record_history=False, meta=None, world: DataParallel | None = None
            ) -> Trajectory:
        """The one PyTorch training loop: a body (``none``: the seed's head on features) and a head, one
        optimizer with a parameter group each (its learning rate and weight decay), every plan option, in
        one process or, with ``world``, as one rank of ``DistributedDataParallel``.

        In one process, body ``none`` takes its inputs from :class:`_StepInputs` (on a CPU a worker thread
        gathers and masks the next steps) and offers ``masks="native"`` (``nn.Dropout``); a body multiplies
        the plan's masks in where its Dropout layer sits.  ``callback`` (per epoch) and ``record_history``
        (the head's sigmoid coordinates after each step) apply to every body and world."""
        from .network import TorchNetwork, from_torch_kernel

        dev = torch.device(device)
        dt = DTYPES[plan.dtype]
        head_only = net.body == "none"
        if masks == "native" and (not head_only or world is not None):
            raise ValueError("masks='native' is the head's in one process (nn.Dropout before it); a body or a "
                             "data-parallel run takes the plan's masks")
        module = TorchNetwork(net, body_init, head, dev, dt)
        module.set_head(head_init)
        layer = module.head
        body_params = [p for m in module.body_layers() for p in (m.weight, m.bias)]
        groups = [{"params": body_params, "lr": rates.body_lr, "weight_decay": rates.body_decay}] if body_params else []
        groups.append({"params": list(layer.parameters()), "lr": rates.head_lr, "weight_decay": rates.head_decay})
        if world is not None:
            import torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel as DDP

            world.model = model = DDP(module)
        else:
            model = layer if head_only else module
        opt = self.make_optimizer(plan, groups)
        X = torch.as_tensor(data.X_train, device=dev).to(dt)
        y = torch.as_tensor(data.y_train, device=dev)
        n = len(data.y_train)
        # targets: class indices (+ label_smoothing=) for F.cross_entropy; smoothed floats for BCE
        yt = y if head == SOFTMAX else torch.as_tensor(plan.targets(data.y_train), device=dev).to(dt)
        sw = plan.sample_weights(data.y_train)  # class weights (focal alpha is inside the focal loss)
        sw = None if sw is None else torch.as_tensor(sw, device=dev).to(dt)
        batch_loss = loss_fn(head, plan)
        bounds = plan.batch_bounds(n)
        dropout = nn.Dropout(plan.dropout) if masks == "native" and plan.dropout > 0 else None
        sizes = batch_sizes(plan, n)
        Xv = torch.as_tensor(data.X_val, device=dev).to(dt)
        yv = torch.as_tensor(data.y_val, device=dev)
        yv_t = yv if head == SOFTMAX else torch.as_tensor(plan.targets(data.y_val), device=dev).to(dt)
        if world is not None:
            inputs = _ShardInputs(X, plan, bounds, net.dropout_widths[0], head_only, world)
        elif head_only:
            spare, self._spare = self._spare, None  # taken: two runs at once never share buffers
            inputs = _StepInputs(X, plan, bounds, masks == "plan", pipelined=self.pipelined, spare=spare)
        else:
            inputs = _BodyInputs(X, plan, bounds, net.dropout_widths[0])
        step_rows = [t - s for s, t in bounds]
        step_losses, step_correct, val_loss, val_acc = [], [], [], []
        # mixed precision as a PyTorch user writes it: forward and loss under autocast, float32 weights
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=plan.autocast == "bfloat16")
        history = [] if record_history else None
        on_step = step_hook(callback)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(plan.native_seed)
            for epoch in range(plan.epochs):
                order = torch.as_tensor(plan.batch_order(epoch, n), device=dev)
                losses, logits, rights = [], [], []
                with inputs.epoch(epoch, order) as x_steps:
                    if isinstance(inputs, _StepInputs):  # the head's pipeline yields rows only
                        x_steps = zip(x_steps, order.split(step_rows))
                    for step, ((xb, idx), (s, t)) in enumerate(zip(x_steps, bounds), 1):
                        yb = yt.index_select(0, idx)
                        wb = None if sw is None else sw.index_select(0, idx)
                        if dropout is not None:
                            xb = dropout(xb)
                        with autocast:
                            z = model(*xb) if isinstance(xb, tuple) else model(xb)
                            loss = batch_loss(z, yb, wb)
                            if world is not None:  # the shard's sum of (weighted) per-sample losses
                                k = len(idx)
                                shard_sum = (loss * k).to(dt) if k else z.sum().to(dt) * 0.0
                                loss = shard_sum * (world.world_size / (t - s)) if world.weighted else (
                                    shard_sum / k if k else shard_sum)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        if world is None:
                            losses.append(loss.detach())
                            logits.append(z.detach())
                        else:  # the batch's figures: every rank's shard summed
                            stats = torch.stack([shard_sum.detach().to(torch.float64),
                                                 hits(head, z.detach(), y.index_select(0, idx)).sum().to(torch.float64)])
                            dist.all_reduce(stats)
                            losses.append(float(stats[0]) / (t - s))
                            rights.append(int(stats[1]))
                        if history is not None:
                            history.append(torch.cat([layer.weight.detach().T, layer.bias.detach()[None]])
                                           .flatten().clone())
                        if on_step is not None:
                            on_step(epoch, step, len(bounds))
                if world is None:
                    # accuracy from the epoch's logits at once (before each update, with dropout, as Keras counts)
                    right = _correct_per_step(head, torch.cat(logits), y.index_select(0, order), sizes[: len(bounds)])
                    step_losses.append(torch.stack(losses).to(dt).cpu().numpy())  # autocast: maybe another dtype
                else:
                    right = np.asarray(rights)
                    step_losses.append(np.asarray(losses, dtype=np.float64))
                check_finite(self.name, head, step_losses[-1], epoch * len(bounds),
                             all(bool(torch.isfinite(p).all()) for p in module.parameters()))
                step_correct.append(right)
                with autocast:
                    vl, va = self._evaluate(head, module, batch_loss, Xv, yv, yv_t)
                val_loss.append(vl)
                val_acc.append(va)
                if callback is not None:
                    callback(epoch, epoch_logs(step_losses[-1], right, sizes[: len(bounds)], vl, va))
        weights = from_torch_layout(layer.weight.detach().cpu().numpy(), layer.bias.detach().cpu().numpy())
        if isinstance(inputs, _StepInputs):
            self._spare = inputs.spare()
        as_network = meta is None  # called as a network (train_network), not as the head's train()
        if as_network:
            meta = {"backend": self.name, "head": head, "body": net.body, "device": str(dev), "dtype": plan.dtype,
                    "lr": plan.lr, "optimizer": plan.optimizer.label, "rates": rates.__dict__}
        traj = Trajectory.from_steps(
            np.concatenate(step_losses), np.concatenate(step_correct), sizes, len(bounds), val_loss, val_acc,
            weights, meta, history=None if history is None else _to_sigmoid_coordinates(
                torch.stack(history).cpu().numpy(), int(layer.weight.shape[1])))
        if as_network or (world is not None and not head_only):
            traj.body = [(from_torch_kernel(m.weight.detach().cpu().numpy()), m.bias.detach().cpu().numpy())
                         for m in module.body_layers()]
        return traj

    def _evaluate(self, head, layer, batch_loss, Xv, yv, yv_t):
        with torch.no_grad():
            z = layer(Xv)
            loss = batch_loss(z, yv_t, None)
            right = hits(head, z, yv).sum()
        return float(loss), int(right) / len(yv)
