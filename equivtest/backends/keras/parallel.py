"""Keras's own data parallelism, in a worker process that sees N host devices.

* Keras on TensorFlow: ``tf.distribute.MirroredStrategy`` over N logical CPU
  devices (``tf.config.set_logical_device_configuration``, set before the
  runtime starts).  ``fit`` splits each batch over the replicas; each replica's
  compiled loss is its shard's mean, which Keras scales by 1/N before the
  optimizer sums the replicas' gradients: the mean of the shard means.  Equal
  shards give the global batch mean; unequal ones (a last batch that does not
  divide by N) weight a small shard's samples more.  ``weighted=True`` compiles
  the loss with ``reduction="sum"`` and gives every row the sample weight
  1 / (its global batch's size), so the replicas' summed gradients are the
  gradient of the global batch mean whatever the split.
* Keras on JAX: ``keras.distribution.DataParallel`` over N host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, float64 with
  ``JAX_ENABLE_X64``).  Variables are replicated and each batch is sharded over
  the devices' mesh; the step is one program that XLA partitions (GSPMD), so the
  loss is the global batch mean by construction and there are no per-replica
  losses to weight.  JAX needs every batch to divide by N.

The worker process is :mod:`.worker`'s, started with ``EQUIVTEST_HOST_DEVICES``
(and, for JAX, the XLA flags) in its environment; :mod:`equivtest.parallel`
starts it.  Both engines record each step's summed per-sample loss and correct
count in a metric whose variables Keras keeps per replica and sums when read
(``synchronization="on_read"``, ``aggregation="sum"``), so the recorded figures
are the global batch's whichever way the batch was split.
"""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np
from keras import ops

from ...heads import Weights
from ...plan import Plan
from ...trajectory import Trajectory
from . import network as kn
from .common import (
    PlanDropout,
    dense_layer,
    floatx,
    hits,
    keras_loss,
    keras_targets,
    make_optimizer,
    plain_model,
)

HOST_DEVICES_ENV = "EQUIVTEST_HOST_DEVICES"


def host_devices() -> int:
    """How many host devices this worker was started with (0: not a data-parallel worker)."""
    return int(os.environ.get(HOST_DEVICES_ENV, "0") or 0)


def configure_host_devices() -> None:
    """On TensorFlow, split the CPU into N logical devices (before the runtime starts; JAX reads XLA_FLAGS)."""
    n = host_devices()
    if n and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


_ENGINES: dict = {}


def _engine(world: int):
    """The strategy (TensorFlow) or distribution (JAX) over ``world`` host devices, made once per size:
    a model built under one MirroredStrategy must train under that same object."""
    if world not in _ENGINES:
        kind = keras.backend.backend()
        if kind == "tensorflow":
            import tensorflow as tf

            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            _check_devices(len(devices), world)
            _ENGINES[world] = tf.distribute.MirroredStrategy(devices[:world])
        elif kind == "jax":
            devices = keras.distribution.list_devices("cpu")
            _check_devices(len(devices), world)
            _ENGINES[world] = keras.distribution.DataParallel(devices=devices[:world])
        else:
            raise NotImplementedError(f"Keras on {kind} has no data-parallel distribution")
    return _ENGINES[world]


@contextlib.contextmanager
def distributed(world: int):
    """The scope in which Keras builds and trains data-parallel over ``world`` host devices."""
    with _engine(world).scope():
        yield


def _check_devices(have: int, world: int) -> None:
    if have < world:
        raise RuntimeError(f"the worker sees {have} host devices, {world} were asked for "
                           f"(was {HOST_DEVICES_ENV} or XLA_FLAGS set before the framework started?)")


class ShardRecorder(keras.metrics.Metric):
    """Each step's sum of per-sample losses and count of correct predictions.

    Its variables are Keras metric variables (kept per replica, summed when
    read), so under a strategy each replica adds its shard's figures and the
    read gives the global batch's; the caller divides by the batch sizes.
    """

    def __init__(self, head: str, capacity: int, dtype: str, per_sample: keras.losses.Loss,
                 name: str = "shard_recorder"):
        super().__init__(name=name, dtype=dtype)
        self.head = head
        self.per_sample = per_sample  # reduction=None: summed here (an empty shard sums to 0)
        self.values = self.add_variable(shape=(capacity,), initializer="zeros", dtype=dtype, name="values")
        self.right = self.add_variable(shape=(capacity,), initializer="zeros", dtype="int32", name="right")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="int32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        total = ops.sum(self.per_sample(y_true, y_pred))
        hit = hits(self.head, y_true, y_pred)
        count = self.count.value  # this replica's copy, in replica context
        i = ops.reshape(count, (1,))
        self.values.assign(ops.slice_update(self.values.value, i, ops.reshape(ops.cast(total, self.dtype), (1,))))
        self.right.assign(ops.slice_update(self.right.value, i, ops.reshape(ops.cast(ops.sum(ops.cast(hit, "int32")), "int32"), (1,))))
        self.count.assign(count + 1)

    def result(self):
        return ops.cast(self.count.value, self.dtype)

    def reset_state(self):
        self.count.assign(0)

    def read(self, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean loss, correct count) of each of the epoch's steps."""
        k = len(sizes)
        sums = np.asarray(ops.convert_to_numpy(self.values), dtype=np.float64)[:k]
        return sums / sizes, np.asarray(ops.convert_to_numpy(self.right))[:k]


def _refuse(plan: Plan, name: str) -> None:
    """What the registry declares this engine does not offer (the parent refuses it first, in one line)."""
    from .. import refusal

    declared = refusal(name, plan, world_size=2)
    if declared:
        raise NotImplementedError(declared)


def _row_weights(plan: Plan, n: int) -> np.ndarray:
    """1 / (the global batch's size) for every row of an epoch, in the plan's dtype."""
    sizes = [t - s for s, t in plan.batch_bounds(n)]
    return np.concatenate([np.full(k, 1.0 / k) for k in sizes]).astype(plan.dtype)


def train(name: str, head: str, init: Weights, plan: Plan, data, world: int, weighted: bool = True) -> Trajectory:
    """The head trained by ``Model.fit`` under Keras's distribution over ``world`` host devices."""
    from .._base import all_finite, batch_sizes, check_finite

    _refuse(plan, name)
    kind = keras.backend.backend()
    dt = plan.dtype
    X, y = data.X_train.astype(dt, copy=False), data.y_train
    n, d = X.shape
    steps, sizes = plan.steps_per_epoch(n), batch_sizes(plan, n)
    masked = plan.dropout > 0
    sums = kind == "tensorflow" and weighted  # JAX's loss is already the global mean
    Y, Xv, Yv = keras_targets(head, y, dt), data.X_val.astype(dt, copy=False), keras_targets(head, data.y_val, dt)
    weights = _row_weights(plan, n) if sums else None
    losses, correct, val_loss, val_acc = [], [], [], []
    with floatx(dt):
        with distributed(world):
            dense = dense_layer(head, dt, plan)
            x_in = keras.Input((d,), dtype=dt, name="features")
            if masked:
                m_in = keras.Input((d,), dtype=dt, name="keep_mask")  # 0/1: a strategy cannot average booleans
                model = keras.Model([x_in, m_in], dense(PlanDropout(plan.mask_scale, dtype=dt)(x_in, m_in)))
            else:
                model = keras.Model(x_in, dense(x_in))
            recorder = ShardRecorder(head, steps, dt, keras_loss(head, plan, reduction=None))
            model.compile(optimizer=make_optimizer(plan), loss=keras_loss(head, plan, "sum" if sums else
                                                                      "sum_over_batch_size"),
                          metrics=[recorder], jit_compile=False)
            evaluator = plain_model(head, d, dt, dense)
            dense.set_weights([init.kernel.astype(dt), init.bias.astype(dt)])
        for epoch in range(plan.epochs):
            order = plan.batch_order(epoch, n)
            inputs = [X[order], plan.epoch_masks(epoch, n, d).astype(dt)] if masked else X[order]
            with distributed(world):  # JAX reads the distribution when fit runs
                model.fit(inputs, Y[order], sample_weight=weights, batch_size=plan.batch_size, epochs=1,
                          shuffle=False, verbose=0)
            step_loss, step_right = recorder.read(sizes[:steps])
            losses.append(step_loss)
            correct.append(step_right)
            check_finite(name, head, step_loss, epoch * steps,
                         all_finite(*(ops.convert_to_numpy(v) for v in dense.weights)))
            # outside any strategy, whose scope would scale a Keras loss by 1/N
            vl, va = kn.val_figures(keras_loss(head, plan), head, evaluator(Xv, training=False), Yv, data.y_val)
            val_loss.append(vl)
            val_acc.append(va)
    kernel, bias = (np.asarray(ops.convert_to_numpy(v)) for v in dense.weights)
    meta = {"backend": name, "head": head, "dtype": plan.dtype, "lr": plan.lr, "optimizer": plan.optimizer.label,
            "device": "cpu", **_meta(name, world, weighted and kind != "jax")}
    return Trajectory.from_steps(np.concatenate(losses), np.concatenate(correct), sizes, steps, val_loss, val_acc,
                                 Weights(kernel, bias), meta)


def _meta(name: str, world: int, weighted: bool) -> dict:
    from .. import info

    return {"world_size": world, "weighted": weighted, "engine": info(name).data_parallel}


# ------------------------------------------------------------------------------ whole networks
def train_network(name: str, net, head: str, body_init, head_init: Weights, plan: Plan, data, rates, world: int,
                  weighted: bool = True) -> Trajectory:
    """A whole network, one optimizer per parameter group, data-parallel over ``world`` host devices.

    TensorFlow: the two-optimizer ``train_step`` of :mod:`.network` run by
    ``fit`` under the strategy (each optimizer all-reduces its group's
    gradients).  JAX: the from-scratch loop with each batch placed by the
    distribution's data layout, so the jitted step runs sharded.
    """
    from .._base import all_finite, batch_sizes, check_finite

    _refuse(plan, name)
    kind = keras.backend.backend()
    dt = plan.dtype
    decays = kn.coupled_decays(plan, rates)
    n = len(data.y_train)
    steps, sizes, width = plan.steps_per_epoch(n), batch_sizes(plan, n), net.dropout_widths[0]
    X, Y, Xv, Yv, ones_v = kn.arrays(net, head, data, dt)
    sums = kind == "tensorflow" and weighted
    weights = _row_weights(plan, n) if sums else None
    losses, correct, val_loss, val_acc = [], [], [], []
    with floatx(dt):
        with distributed(world):
            body_opt, head_opt = kn.group_optimizers(plan, rates)
            # coupled decay: TensorFlow's step adds the layers' L2 regularizers, JAX's step the same penalties
            regs = [keras.regularizers.L2(decay / 2) if decay and kind == "tensorflow" else None for decay in decays]
            inputs, body, dense, out = kn.build(net, head, dt, *regs)
            body_vars, head_vars = kn.group_variables(body, dense, body_opt, head_opt)
            loss_fn = keras_loss(head, plan, "sum" if sums else "sum_over_batch_size")
            if kind == "tensorflow":
                recorder = ShardRecorder(head, steps, dt, keras_loss(head, plan, reduction=None))
                model = _tf_two_groups(inputs, out, loss_fn, recorder, body_opt, head_opt, body_vars, head_vars)
            else:
                model = keras.Model(inputs, out)
            kn.set_initial(body, dense, body_init, head_init, dt)
            if kind == "jax":
                run_epoch = _jax_epoch(model, loss_fn, body_opt, head_opt, body_vars, head_vars, head, decays)
        for epoch in range(plan.epochs):
            order = plan.batch_order(epoch, n)
            masks = kn.scaled_masks(plan, epoch, n, width, dt)
            with distributed(world):
                if kind == "tensorflow":
                    recorder.reset_state()  # not a compiled metric: fit does not reset it
                    model.fit([X[order], masks], Y[order], sample_weight=weights, batch_size=plan.batch_size,
                              epochs=1, shuffle=False, verbose=0)
                    step_loss, step_right = recorder.read(sizes[:steps])
                else:
                    step_loss, step_right = run_epoch(plan.batch_bounds(n), X[order], masks, Y[order])
            losses.append(step_loss)
            correct.append(step_right)
            check_finite(name, head, step_loss, epoch * steps,
                         all_finite(*(ops.convert_to_numpy(v) for v in model.trainable_variables)))
            vl, va = kn.val_figures(keras_loss(head, plan), head, model([Xv, ones_v], training=False), Yv, data.y_val)
            val_loss.append(vl)
            val_acc.append(va)
    traj = kn.network_trajectory(name, net, head, plan, rates, n, losses, correct, val_loss, val_acc, dense, body, "cpu")
    traj.meta.update(_meta(name, world, weighted and kind != "jax"))
    return traj


def _tf_two_groups(inputs, out, loss_fn, recorder, body_opt, head_opt, body_vars, head_vars) -> keras.Model:
    """``fit`` with one optimizer per group under a strategy: each replica's loss (its shard's mean scaled by
    1/N, or its weighted sum), each optimizer all-reducing its gradients, the recorder adding the shard's figures."""
    import tensorflow as tf

    class TwoGroups(keras.Model):
        def train_step(self, batch):
            x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
            with tf.GradientTape() as tape:
                p = self(x, training=True)
                loss = loss_fn(y, p, sample_weight=sw)
                total = loss
                if self.losses:  # the L2 penalties of coupled decay, once over the replicas (their gradients add)
                    replicas = tf.distribute.get_strategy().num_replicas_in_sync
                    total = loss + tf.add_n(self.losses) / tf.cast(replicas, loss.dtype)
            grads = tape.gradient(total, body_vars + head_vars)
            if body_vars:
                body_opt.apply(grads[: len(body_vars)], body_vars)
            head_opt.apply(grads[len(body_vars):], head_vars)
            recorder.update_state(y, p)
            return {"loss": loss}

    model = TwoGroups(inputs, out)
    model.compile(jit_compile=False)
    return model


def _jax_epoch(model, loss_fn, body_opt, head_opt, body_vars, head_vars, head: str, decays=(0.0, 0.0)):
    """One epoch of the from-scratch JAX loop with each batch placed by the distribution's data layout:
    returns each step's (global batch mean) loss and correct count."""
    import jax

    step = jax.jit(kn.jax_step(model, loss_fn, body_opt, head_opt, body_vars, head_vars, head, decays))
    state = kn.JaxState.of(model, body_opt if body_vars else None, head_opt)

    def run_epoch(bounds, X, masks, Y):
        dist = keras.distribution.distribution()
        losses, rights = [], []
        for s, t in bounds:
            batch = [jax.device_put(a[s:t], dist.get_data_layout(a[s:t].shape).backend_layout)
                     for a in (X, masks, Y)]
            loss, right, *state.values = step(*state.values, *batch)
            losses.append(loss)
            rights.append(right)
        state.write_back()
        return np.asarray(jax.device_get(losses), dtype=np.float64), np.asarray(jax.device_get(rights))

    return run_epoch
