"""Keras's one training function for networks, on any Keras backend and any number of workers.

A network is a body (``none``, the seed's head alone; ``mlp``; ``cnn``, Conv2D NHWC) and the head.  Keras
optimizers have no parameter groups, so the per-layer rule uses Keras's documented way of customising
``fit``: a ``keras.Model`` subclass whose ``train_step`` (``tf.GradientTape`` on TensorFlow, torch
autograd on PyTorch, as Keras's guides to customising ``fit()`` write them) applies one optimizer to the
body's variables and another to the head's.  On JAX, whose ``fit`` carries one optimizer's state, the epoch
is the loop of Keras's guide to training from scratch in JAX.  The plan's masks come in as a second input
and multiply the activations where the Dropout layer sits.  Coupled weight decay is an L2 penalty per group
(decay / 2), decoupled decay the group optimizer's ``weight_decay``; class weights are sample weights;
bfloat16 autocast is Keras's ``mixed_bfloat16`` policy on every layer.  On N workers the same function runs
under :mod:`.parallel`'s engine.  The seed's head is the network with body ``none`` (:func:`train_head`), on
one worker as on N: this module is the one place where Keras reads a plan.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...heads import SOFTMAX, UNITS, Weights
from ...networks import GroupRates, Network, head_alone
from ...plan import Plan
from ...trajectory import Trajectory


class Layers(NamedTuple):
    """A network's Keras layers: ``inputs`` (the features, and the masks where they are an input), the body's
    layers, the head, the training output and the output without dropout (what evaluation runs)."""

    inputs: list
    body: list
    dense: object
    out: object
    plain: object


def build(net: Network, head: str, dt: str, body_reg=None, head_reg=None, autocast: str | None = None,
          drop: str | None = None, plan: Plan | None = None) -> Layers:
    """The network's layers in Keras, with dropout where the network has it: after the first hidden layer
    (``mlp``), after the pooling (``cnn``), on the features (``none``, the seed's head).

    ``drop``: None (no dropout); ``"plan"``, the plan's masks as a second input that multiplies the
    activations, or, for body ``none``, applied to the features by the caller's input pipeline (the model's
    input is the masked features); ``"native"``, Keras's ``Dropout`` seeded from the plan.
    ``autocast="bfloat16"``: every layer under Keras's ``mixed_bfloat16`` policy (bfloat16 compute, float32
    variables), as for the head alone; the inputs, the masks and the loss stay in the plan's dtype."""
    import keras

    layer_dt = "mixed_bfloat16" if autocast == "bfloat16" else dt
    regs = {"kernel_regularizer": body_reg, "bias_regularizer": body_reg, "dtype": layer_dt}
    a, b = net.widths
    if net.body == "mlp":
        body = [keras.layers.Dense(a, activation="relu", **regs), keras.layers.Dense(b, activation="relu", **regs)]
    elif net.body == "cnn":
        body = [keras.layers.Conv2D(a, 3, activation="relu", **regs),
                keras.layers.Conv2D(b, 3, activation="relu", **regs)]
        pool = keras.layers.GlobalAveragePooling2D(dtype=layer_dt)
    else:
        body = []
    dense = keras.layers.Dense(UNITS[head], activation="softmax" if head == SOFTMAX else "sigmoid",
                               kernel_regularizer=head_reg, bias_regularizer=head_reg, dtype=layer_dt,
                               name=f"{head}_head")
    x_in = keras.Input(net.input_shape, dtype=dt)
    inputs = [x_in]
    if drop == "plan" and net.body != "none":
        inputs.append(keras.Input((net.dropout_widths[0],), dtype=dt))
        dropout = lambda h: h * inputs[1]  # noqa: E731
    elif drop == "native":
        dropout = keras.layers.Dropout(plan.dropout, seed=plan.native_seed, dtype=dt)
    else:
        dropout = None

    def forward(x, dropout):
        h = x
        if net.body == "mlp":
            h = body[0](h)
        elif net.body == "cnn":
            h = pool(body[1](body[0](h)))
        if dropout is not None:
            h = dropout(h)
        if net.body == "mlp":
            h = body[1](h)
        return dense(h)

    return Layers(inputs, body, dense, forward(x_in, dropout), forward(x_in, None))


def count_params(net: Network, head: str) -> int:
    """Keras's own count for the network (``Model.count_params()``)."""
    import keras

    layers = build(net, head, "float32")
    return int(keras.Model(layers.inputs, layers.out).count_params())


def head_model(head: str, d: int, dtype: str):
    """The head alone as a Keras model (the network with body ``none``, without dropout): for predictions and
    parameter counts."""
    import keras

    layers = build(Network("none", (d,)), head, dtype)
    return keras.Model(layers.inputs[0], layers.plain)


def train_head(backend, head: str, init: Weights, plan: Plan, data, device: str = "cpu", **kw) -> Trajectory:
    """The seed's head: :func:`train_network` with body ``none`` (``kw``: its options), as a head's
    trajectory (no body, no group rates)."""
    net, rates = head_alone(plan, data.X_train.shape[1])
    traj = train_network(backend, net, head, [], init, plan, data, rates, device, **kw)
    for key in ("body", "rates"):
        traj.meta.pop(key)
    traj.body = None
    return traj


def train_network(backend, net: Network, head: str, body_init, head_init: Weights, plan: Plan, data,
                  rates: GroupRates, device: str = "cpu", *, world: int = 1, weighted: bool = True,
                  masks: str = "plan", callback=None, record_history: bool = False) -> Trajectory:
    """Keras's one training function: a network (body ``none`` is the seed's head), on ``world`` workers.

    On TensorFlow and PyTorch, ``fit`` with the two-optimizer ``train_step``; on JAX, the from-scratch loop.
    ``world > 1`` is the same function under the engine of :mod:`.parallel` (``MirroredStrategy`` on
    TensorFlow, ``keras.distribution.DataParallel`` on JAX; Keras on PyTorch has none).  Every option of the
    plan is read here: class weights and (under a strategy, ``weighted``) 1 / (the global batch's size) are
    each row's sample weight, coupled decay is each group's L2 penalty, the masks a second input (or, for the
    head alone, applied to its features), ``masks="native"`` Keras's Dropout.  On one worker the epoch's
    batches come from the backend's input pipeline where it has one (TensorFlow: a cached ``tf.data``
    pipeline over host variables, and the built model is cached with its traced functions), validation is
    ``evaluate`` on the model without dropout, ``record_history`` keeps the head's parameters after every
    step and ``callback(epoch, logs)`` gets Keras-style figures.
    """
    import keras

    from .._base import all_finite, batch_sizes, check_finite, epoch_logs
    from .common import floatx

    kind = keras.backend.backend()
    if kind not in ("tensorflow", "torch", "jax"):
        raise NotImplementedError(f"backend '{backend.name}' does not train whole networks on Keras's {kind}")
    _refuse(backend.name, plan, world, net)
    if masks not in ("plan", "native") or (world > 1 and (masks == "native" or record_history)):
        from ...errors import InputError

        # on N workers a metric variable reads as the replicas' sum: per-step history is one worker's
        raise InputError(f"backend '{backend.name}' takes masks 'plan' (or 'native' on one worker) and records "
                         f"history on one worker, got masks {masks!r}, history {record_history} on {world} workers")
    place, engine = _places(backend, kind, world, device)
    dt = plan.dtype
    n = len(data.y_train)
    steps, sizes = plan.steps_per_epoch(n), batch_sizes(plan, n)
    # TensorFlow's replicas each sum their rows' weighted losses, so the summed gradients are the global mean's
    scaled = world > 1 and weighted and kind == "tensorflow"
    drop = masks if plan.dropout > 0 else None
    pipeline = getattr(backend, "keras_pipeline", None) if world == 1 else None
    with floatx(dt), place():
        feed = (pipeline or ArrayFeed)(net, head, plan, data, drop, scaled)
        with engine():
            if pipeline is not None and drop != "native":  # built once per configuration, its functions traced
                key = ("network", net, head, drop, steps, record_history, device, plan.replace(
                    lr=1.0, seed=0, mask_stream=0, epochs=1, class_weight=None),
                    rates.body_lr > 0, rates.body_decay, rates.head_decay)
                m = backend.cached(key, lambda: Built(kind, net, head, plan, rates, steps, world, scaled, drop,
                                                      record_history))
            else:
                m = Built(kind, net, head, plan, rates, steps, world, scaled, drop, record_history)
            m.start(body_init, head_init, rates, dt)
        losses, correct, history, val_loss, val_acc = [], [], [], [], []
        for epoch in range(plan.epochs):
            with engine():
                step_loss, step_right, rows = m.fit_epoch(feed, epoch, None if world == 1 or scaled else sizes)
            losses.append(step_loss)
            correct.append(step_right)
            history.append(rows)
            check_finite(backend.name, head, step_loss, epoch * steps, all_finite(*m.values()))
            vl, va = m.validate(feed)  # outside any strategy, whose scope would scale a Keras loss by 1/N
            val_loss.append(vl)
            val_acc.append(va)
            if callback is not None:
                callback(epoch, epoch_logs(losses[-1], correct[-1], sizes[:steps], vl, va))
        m.finish()
    traj = network_trajectory(backend.name, net, head, plan, rates, n, losses, correct, val_loss, val_acc,
                              m.layers.dense, m.layers.body, device)
    if record_history:
        traj.history = np.concatenate(history)
    if world > 1:
        from .parallel import engine_meta

        traj.meta.update(engine_meta(backend.name, world, weighted and kind != "jax"))
    return traj


class Built:
    """One built network and what trains it: the layers, each group's optimizer, the training model (``fit``
    with the two-group ``train_step``, or on JAX the from-scratch loop), the step figures and, on one
    worker, the evaluator.  A cached one starts each run afresh (:meth:`start`)."""

    def __init__(self, kind: str, net: Network, head: str, plan: Plan, rates: GroupRates, steps: int, world: int,
                 scaled: bool, drop: str | None, record_history: bool):
        import keras

        from .common import StepFigures, keras_loss, optimizer_state

        dt = plan.dtype
        self.kind, self.world, self.head, self.steps = kind, world, head, steps
        decays = coupled_decays(plan, rates)
        self.body_opt, self.head_opt = group_optimizers(plan, rates)
        # coupled decay: fit adds the layers' L2 regularizers (model.losses); the JAX step adds the penalties
        regs = [keras.regularizers.L2(decay / 2) if decay and kind != "jax" else None for decay in decays]
        self.layers = build(net, head, dt, *regs, autocast=plan.autocast, drop=drop, plan=plan)
        body_vars, head_vars = group_variables(self.layers.body, self.layers.dense, self.body_opt, self.head_opt)
        self.fresh = [(opt, optimizer_state(opt)) for opt in (self.body_opt, self.head_opt) if opt is not None]
        loss_fn = keras_loss(head, plan, "sum" if scaled else "sum_over_batch_size")
        track = self.layers.dense if record_history else None
        self.run_epoch = None
        if kind == "jax":
            self.model = keras.Model(self.layers.inputs, self.layers.out)
            self._jax = (loss_fn, body_vars, head_vars, decays, track is not None)
        else:
            self.figures = StepFigures(steps, dt, track=track, head=head)
            per_row = keras_loss(head, plan, reduction=None) if world > 1 else None
            self.model = _fit_model(kind, self.layers.inputs, self.layers.out, loss_fn, per_row, self.figures, head,
                                    (self.body_opt, body_vars), (self.head_opt, head_vars),
                                    steps_per_execution=steps if kind == "tensorflow" and world == 1 else 1)
        self.val_loss = keras_loss(head, plan)
        self.evaluator = None
        if world == 1:  # validation: Keras's evaluate on the network without dropout
            self.evaluator = keras.Model(self.layers.inputs[0], self.layers.plain)
            data_loss = keras.metrics.MeanMetricWrapper(keras_loss(head, plan), name="data_loss")
            self.evaluator.compile(loss=keras_loss(head, plan), metrics=["accuracy", data_loss], jit_compile=False)

    def start(self, body_init, head_init: Weights, rates: GroupRates, dt: str) -> None:
        """A run's initial weights, fresh optimizer states at the run's rates (a cached model's were used)."""
        from .common import reset_optimizer

        set_initial(self.layers.body, self.layers.dense, body_init, head_init, dt)
        lrs = {id(self.body_opt): rates.body_lr, id(self.head_opt): rates.head_lr}
        for opt, fresh in self.fresh:
            reset_optimizer(opt, lrs[id(opt)], fresh)
        if self.kind == "jax":
            loss_fn, body_vars, head_vars, decays, track = self._jax
            self.run_epoch = _jax_epoch(self.model, loss_fn, self.body_opt, self.head_opt, body_vars, head_vars,
                                        self.head, decays, track)

    def fit_epoch(self, feed, epoch: int, divide_by):
        """One epoch: (each step's loss, its correct count, the head's parameters after it or None)."""
        if self.run_epoch is not None:
            return self.run_epoch(feed.bounds, *feed.arrays(epoch))
        self.figures.reset_state()
        self.model.fit(**feed.fit_args(epoch), epochs=1, shuffle=False, verbose=0)
        # on N workers each replica adds its rows' (weighted) losses: the global batch's sum
        return (*self.figures.read(self.steps, divide_by), self.figures.rows(self.steps))

    def values(self) -> list:
        """The model's trainable values as NumPy arrays (on JAX they live in the loop's state until written)."""
        return _values(self.model, self.run_epoch)

    def validate(self, feed) -> tuple[float, float]:
        """(val_loss, val_accuracy): ``evaluate`` on one worker; a direct call outside the engine on N."""
        if self.evaluator is not None:
            if self.run_epoch is not None:
                self.run_epoch.state.write_back()
            ev = self.evaluator.evaluate(**feed.val_args(), verbose=0, return_dict=True)
            return ev["data_loss"], ev["accuracy"] if "accuracy" in ev else ev["compile_metrics"]
        return val_figures(self.val_loss, self.head,
                           _predict(self.model, feed.val_inputs(), self.run_epoch, self.world), *feed.val_targets())

    def finish(self) -> None:
        if self.run_epoch is not None:
            self.run_epoch.state.write_back()


class ArrayFeed:
    """An epoch's batches as NumPy arrays, in the plan's order: the features (masked, for the head alone), the
    masks (for a body), the targets and each row's sample weight (its class weight, times 1 / (its global
    batch's size) when the replicas' losses are sums: ``scaled``)."""

    def __init__(self, net: Network, head: str, plan: Plan, data, drop: str | None, scaled: bool):
        dt = plan.dtype
        self.net, self.plan, self.drop = net, plan, drop
        self.X, self.Y, self.Xv, self.Yv = arrays(head, data, dt)
        self.y_val = data.y_val
        n = len(self.Y)
        self.bounds = plan.batch_bounds(n)
        self.class_w = row_weights(plan, data, dt)
        self.shares = _batch_shares(plan, n) if scaled else None

    def arrays(self, epoch: int):
        """(inputs, targets, sample weights or None) of the epoch."""
        n = len(self.Y)
        order = self.plan.batch_order(epoch, n)
        x = self.X[order]
        inputs = [x]
        if self.drop == "plan":
            m = scaled_masks(self.plan, epoch, n, self.net.dropout_widths[0], self.plan.dtype)
            inputs = [x * m] if self.net.body == "none" else [x, m]  # the head's masks: on its features
        return inputs, self.Y[order], _epoch_weights(self.class_w, order, self.shares)

    def fit_args(self, epoch: int) -> dict:
        inputs, y, sw = self.arrays(epoch)
        return dict(x=inputs if len(inputs) > 1 else inputs[0], y=y, sample_weight=sw,
                    batch_size=self.plan.batch_size)

    def val_args(self) -> dict:
        return dict(x=self.Xv, y=self.Yv, batch_size=max(len(self.Xv), 1))

    def val_inputs(self):
        if self.drop == "plan" and self.net.body != "none":
            return [self.Xv, np.ones((len(self.Xv), self.net.dropout_widths[0]), self.plan.dtype)]
        return self.Xv

    def val_targets(self):
        return self.Yv, self.y_val


def _refuse(name: str, plan: Plan, world: int, net: Network) -> None:
    """What the registry declares this backend does not offer for this run (the parent refuses it first, in
    one line; this keeps a direct call honest)."""
    from .. import refusal

    declared = refusal(name, plan, world_size=world, network=net.body != "none")
    if declared:
        from ...errors import InputError

        raise InputError(declared)


def _places(backend, kind: str, world: int, device: str):
    """(place, engine): the contexts a run is made in.  One worker: the run's device around everything.  N
    workers: the engine's scope around building and ``fit`` (validation runs outside it, whose scope would
    scale a Keras loss by 1/N)."""
    import contextlib

    if world > 1:
        from .parallel import distributed

        return contextlib.nullcontext, lambda: distributed(world)
    if kind == "tensorflow":
        import tensorflow as tf

        return lambda: tf.device(backend.tf_device(device)), contextlib.nullcontext
    return contextlib.nullcontext, contextlib.nullcontext


def _batch_shares(plan: Plan, n: int) -> np.ndarray:
    """1 / (its global batch's size) for each position of an epoch (the same every epoch)."""
    return np.concatenate([np.full(t - s, 1.0 / (t - s)) for s, t in plan.batch_bounds(n)]).astype(plan.dtype)


def _epoch_weights(class_w, order, shares):
    """Each row's sample weight for the epoch, in the plan's order: its class weight, times its batch share
    when the replicas' losses are sums (``shares``); None when every row weighs 1 in a mean."""
    w = None if class_w is None else class_w[order]
    if shares is not None:
        w = shares if w is None else w * shares
    return w


def _fit_model(kind: str, inputs, out, loss_fn, per_row, figures, head: str, body_group, head_group, *,
               steps_per_execution: int = 1):
    """``fit`` with one optimizer per parameter group (Keras's documented ``train_step`` override):
    ``tf.GradientTape`` on TensorFlow, autograd on PyTorch, as Keras's guides to customising ``fit()`` write
    them.  Each group is ``(optimizer, variables)``; a frozen body has no variables.  ``figures`` keeps each
    step's loss and correct count: the loss itself on one worker, each replica's sum of its rows' (weighted)
    losses on N (``per_row``)."""
    import keras
    from keras import ops

    from .common import hits

    (body_opt, body_vars), (head_opt, head_vars) = body_group, head_group

    def apply(grads):
        if body_vars:
            body_opt.apply(grads[: len(body_vars)], body_vars)
        head_opt.apply(grads[len(body_vars):], head_vars)

    def record(y, p, loss, sw):
        value = loss if per_row is None else ops.sum(per_row(y, p, sample_weight=sw))
        figures.record(value, ops.sum(ops.cast(hits(head, y, p), "int32")))

    if kind == "tensorflow":
        import tensorflow as tf

        class TwoGroups(keras.Model):
            def train_step(self, batch):
                x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                with tf.GradientTape() as tape:
                    p = self(x, training=True)
                    loss = loss_fn(y, p, sample_weight=sw)  # class weights: sum(w l) / B, as the head's
                    # each replica's share: Keras scales a mean loss by 1/N itself (a summed one is already a
                    # share); the L2 penalties of coupled decay count once over the replicas
                    total = loss + tf.add_n(self.losses) / tf.cast(replicas, loss.dtype) if self.losses else loss
                apply(tape.gradient(total, body_vars + head_vars))
                record(y, p, loss, sw)
                return {"loss": loss}
    else:
        class TwoGroups(keras.Model):  # Keras on PyTorch: eager, autograd; one worker
            def train_step(self, batch):
                import torch

                x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
                self.zero_grad()
                p = self(x, training=True)
                loss = loss_fn(y, p, sample_weight=sw)  # class weights: sum(w l) / B, as the head's
                total = loss + sum(self.losses) if self.losses else loss
                total.backward()
                with torch.no_grad():
                    apply([v.value.grad for v in body_vars + head_vars])
                    record(y, p.detach(), loss.detach(), sw)
                return {"loss": loss}

    model = TwoGroups(inputs if len(inputs) > 1 else inputs[0], out)
    model.compile(jit_compile=False, steps_per_execution=steps_per_execution)
    return model


def _values(model, run_epoch) -> list:
    """The model's trainable values as NumPy arrays (on JAX they live in the loop's state until written back)."""
    from keras import ops

    if run_epoch is not None:
        import jax

        return list(jax.device_get(run_epoch.state.values[0]))
    return [ops.convert_to_numpy(v) for v in model.trainable_variables]


def _predict(model, inputs, run_epoch, world: int):
    """The validation probabilities (on N workers a direct call: ``predict`` would trace a distributed function
    for one batch)."""
    if run_epoch is not None:
        tv, ntv = run_epoch.state.values[:2]
        return model.stateless_call(tv, ntv, inputs, training=False)[0]
    if world > 1:
        return model(inputs, training=False)
    return model.predict(inputs, batch_size=max(len(inputs[0]), 1), verbose=0)


def _jax_epoch(model, loss_fn, body_opt, head_opt, body_vars, head_vars, head: str, decays=(0.0, 0.0),
               track: bool = False):
    """Keras on JAX: ``fit``'s ``train_step`` is stateless and carries one optimizer, so the loop is the one
    Keras's guide "writing a training loop from scratch in JAX" writes: ``model.stateless_call``,
    ``jax.value_and_grad``, and each group's optimizer ``stateless_apply``-ed to its own variables.  Under a
    distribution each batch is placed by its data layout, so the jitted step runs sharded (GSPMD: the loss
    is the global batch's mean).  ``run_epoch(bounds, inputs, Y, w)`` returns each step's loss, correct
    count and (``track``) the head's parameters after it; ``run_epoch.state`` carries the values between
    steps."""
    import jax
    import keras

    step = jax.jit(jax_step(model, loss_fn, body_opt, head_opt, body_vars, head_vars, head, decays, track))
    state = JaxState.of(model, body_opt if body_vars else None, head_opt)

    def run_epoch(bounds, inputs, Y, w=None):
        dist = keras.distribution.distribution()
        losses, rights, rows = [], [], []
        for s, t in bounds:
            batch = [None if a is None else a[s:t] for a in (*inputs, Y, w)]
            if dist is not None:
                batch = [None if a is None else jax.device_put(a, dist.get_data_layout(a.shape).backend_layout)
                         for a in batch]
            *xs, y, wb = batch
            loss, right, row, *state.values = step(*state.values, xs, y, wb)
            losses.append(loss)
            rights.append(right)
            rows.append(row)
        rows = np.asarray(jax.device_get(rows)) if track else None
        return np.asarray(jax.device_get(losses), dtype=np.float64), np.asarray(jax.device_get(rights)), rows

    run_epoch.state = state
    return run_epoch


def coupled_decays(plan: Plan, rates: GroupRates) -> tuple[float, float]:
    """(body, head) coupled decay: each group's L2 penalty (decay / 2) ||w||^2 on kernel and bias, whose gradient
    is decay * w, as ``torch.optim``'s coupled ``weight_decay`` and the oracle add it; (0, 0) for decoupled."""
    if plan.optimizer.decay != "coupled":
        return 0.0, 0.0
    return float(rates.body_decay), float(rates.head_decay)


def group_optimizers(plan: Plan, rates: GroupRates):
    """(body, head) optimizers at the groups' rates, with the decay when it is decoupled (coupled decay is the
    loss's L2 penalty, :func:`coupled_decays`); no body optimizer for a frozen body."""
    from .common import make_optimizer

    opt = plan.optimizer
    coupled = opt.decay == "coupled"
    body_opt = make_optimizer(plan.replace(lr=rates.body_lr, optimizer=opt.replace(
        weight_decay=0.0 if coupled else rates.body_decay))) if rates.body_lr > 0 else None
    head_opt = make_optimizer(plan.replace(lr=rates.head_lr, optimizer=opt.replace(
        weight_decay=0.0 if coupled else rates.head_decay)))
    return body_opt, head_opt


def group_variables(body, dense, body_opt, head_opt) -> tuple[list, list]:
    """The body's and the head's trainable variables, each group's optimizer built on them (no body
    variables when the body is frozen)."""
    body_vars = [v for layer in body for v in layer.trainable_variables] if body_opt is not None else []
    head_vars = list(dense.trainable_variables)
    if body_vars:
        body_opt.build(body_vars)
    head_opt.build(head_vars)
    return body_vars, head_vars


def set_initial(body, dense, body_init, head_init: Weights, dt: str) -> None:
    """The plan's body weights and the run's head weights into the Keras layers."""
    for layer, (k, bias) in zip(body, body_init):
        layer.set_weights([np.asarray(k, dtype=dt), np.asarray(bias, dtype=dt)])
    dense.set_weights([head_init.kernel.astype(dt), head_init.bias.astype(dt)])


def arrays(head: str, data, dt: str):
    """(X, Y, X_val, Y_val) in the run's dtype, Y as the head's targets."""
    from .common import keras_targets

    return (data.X_train.astype(dt, copy=False), keras_targets(head, data.y_train, dt),
            data.X_val.astype(dt, copy=False), keras_targets(head, data.y_val, dt))


def jax_step(model, loss_fn, body_opt, head_opt, body_vars, head_vars, head: str, decays=(0.0, 0.0),
             track: bool = False):
    """The training step to jit: ``(tv, ntv, bov, hov, xs, y, w) -> (loss, correct, row, tv, ntv, bov, hov)``,
    ``xs`` the model's inputs and ``row`` the head's parameters after the step (``track``; else 0).

    ``tv``/``ntv`` are the model's (non-)trainable values, ``bov``/``hov`` the body's and the head's optimizer
    variables; the body's optimizer is applied only when ``body_vars`` is not empty (a frozen body).
    ``decays`` are the groups' coupled decays (:func:`coupled_decays`): their L2 penalties join the loss that
    is differentiated, not the loss that is recorded (as Keras's ``fit`` records the loss without
    ``model.losses``)."""
    import jax
    import jax.numpy as jnp

    from .common import head_row, hits

    order_of = {id(v): i for i, v in enumerate(model.trainable_variables)}
    ib, ih = [order_of[id(v)] for v in body_vars], [order_of[id(v)] for v in head_vars]
    penalties = [(decay / 2, idx) for decay, idx in zip(decays, (ib, ih)) if decay and idx]

    def loss_of(tv, ntv, xs, y, w):
        p, ntv = model.stateless_call(tv, ntv, xs if len(xs) > 1 else xs[0], training=True)
        loss = loss_fn(y, p, sample_weight=w)
        total = loss
        for half, idx in penalties:
            total = total + half * sum(jnp.sum(jnp.square(tv[i])) for i in idx)
        return total, (loss, p, ntv)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step(tv, ntv, bov, hov, xs, y, w=None):
        (_, (loss, p, ntv)), grads = grad_fn(tv, ntv, xs, y, w)
        tv = list(tv)
        if ib:
            new_b, bov = body_opt.stateless_apply(bov, [grads[i] for i in ib], [tv[i] for i in ib])
            for i, v in zip(ib, new_b):
                tv[i] = v
        new_h, hov = head_opt.stateless_apply(hov, [grads[i] for i in ih], [tv[i] for i in ih])
        for i, v in zip(ih, new_h):
            tv[i] = v
        row = head_row(head, *(tv[i] for i in ih)) if track else jnp.zeros(())
        return loss, jnp.sum(hits(head, y, p).astype("int32")), row, tv, ntv, bov, hov

    return step


class JaxState:
    """The values a from-scratch JAX loop carries between steps: ``[tv, ntv, bov, hov]``."""

    def __init__(self, model, values: list):
        self.model = model
        self.values = values

    @classmethod
    def of(cls, model, body_opt, head_opt) -> JaxState:
        return cls(model, [[v.value for v in model.trainable_variables],
                           [v.value for v in model.non_trainable_variables],
                           [v.value for v in body_opt.variables] if body_opt is not None else [],
                           [v.value for v in head_opt.variables]])

    def write_back(self) -> None:
        """The trained values into the model's variables."""
        for v, value in zip(self.model.trainable_variables, self.values[0]):
            v.assign(value)


def row_weights(plan: Plan, data, dt: str) -> np.ndarray | None:
    """Each training row's class weight in the run's dtype (Keras weighs a row's loss by it and divides the
    sum by the batch size, as ``fit``'s ``class_weight=`` would), or None without class weights."""
    sw = plan.sample_weights(data.y_train)
    return None if sw is None else np.asarray(sw, dtype=dt)


def scaled_masks(plan: Plan, epoch: int, n: int, width: int, dt: str) -> np.ndarray:
    """The epoch's masks of the network's Dropout layer as ``scale`` or 0 (ones without dropout)."""
    drawn = plan.epoch_masks(epoch, n, width)
    if drawn is None:
        return np.ones((n, width), dt)
    return (drawn * np.asarray(plan.mask_scale, dtype=dt)).astype(dt)


def val_figures(loss_fn, head: str, pv, Yv, y_val) -> tuple[float, float]:
    """(val_loss, val_accuracy) from the network's probabilities on the validation set."""
    from keras import ops

    pv = np.asarray(ops.convert_to_numpy(pv))
    right = (pv.argmax(1) == y_val) if head == SOFTMAX else ((pv[:, 0] > 0.5) == (y_val == 1))
    return float(ops.convert_to_numpy(loss_fn(Yv, pv))), float(np.mean(right))


def network_trajectory(name: str, net, head, plan, rates, n, losses, correct, val_loss, val_acc, dense, body, device):
    from keras import ops

    from .._base import batch_sizes

    kernel, bias = (ops.convert_to_numpy(v) for v in dense.weights)
    meta = {"backend": name, "head": head, "body": net.body, "device": device, "dtype": plan.dtype,
            "lr": plan.lr, "optimizer": plan.optimizer.label, "rates": rates.__dict__}
    traj = Trajectory.from_steps(np.concatenate(losses), np.concatenate(correct), batch_sizes(plan, n),
                                 plan.steps_per_epoch(n), val_loss, val_acc, Weights(kernel, bias), meta)
    traj.body = [tuple(ops.convert_to_numpy(v) for v in layer.weights) for layer in body]
    return traj
