"""Keras pieces that run on any Keras 3 backend (only ``keras`` and ``keras.ops``).

Shared by the TensorFlow adapter (``backends/keras.py``) and the process-isolated
Keras-on-PyTorch / Keras-on-JAX adapters (``backends/keras/worker.py``).  The
importer decides ``KERAS_BACKEND`` before importing this module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from ...heads import SOFTMAX, UNITS
from ...plan import Plan


class PlanDropout(keras.layers.Layer):
    """Inverted dropout with a mask given as an input: ``x * scale`` where kept, else 0.

    The mask is boolean, or 0/1 in a float dtype (a strategy's ``fit`` averages its
    first batch's inputs across replicas, which it cannot do for booleans).
    """

    def __init__(self, scale: float, **kw):
        super().__init__(**kw)
        self.scale = float(scale)

    def call(self, x, mask):
        scale = ops.convert_to_tensor(self.scale, dtype=x.dtype)  # ops.cast would round via float32
        keep = mask if mask.dtype == "bool" else ops.not_equal(mask, 0)
        return ops.where(keep, x * scale, ops.zeros_like(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def hits(head: str, y_true, y_pred):
    """Which predictions are right, from probabilities and one-hot / 0-1 targets, as Keras tensors."""
    if head == SOFTMAX:
        return ops.equal(ops.argmax(y_pred, axis=-1), ops.argmax(y_true, axis=-1))
    return ops.equal(ops.cast(y_pred[:, 0] > 0.5, "int32"), ops.cast(y_true[:, 0] > 0.5, "int32"))


class StepFigures(keras.metrics.Metric):
    """Each step's loss figure and number of correct predictions, written by a ``train_step`` (:meth:`record`).

    Metric variables: under a strategy Keras keeps them per replica and sums them when read
    (``synchronization="on_read"``, ``aggregation="sum"``), so figures each replica records for its shard
    read as the global batch's.  ``fit`` does not reset an uncompiled metric: the caller does, each epoch.
    """

    def __init__(self, capacity: int, dtype: str, name: str = "step_figures"):
        super().__init__(name=name, dtype=dtype)
        self.values = self.add_variable(shape=(capacity,), initializer="zeros", dtype=dtype, name="values")
        self.right = self.add_variable(shape=(capacity,), initializer="zeros", dtype="int32", name="right")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="int32", name="count")

    def record(self, value, right) -> None:
        count = self.count.value  # .value: the backend tensor (this replica's copy, in replica context)
        i = ops.reshape(count, (1,))
        self.values.assign(ops.slice_update(self.values.value, i, ops.reshape(ops.cast(value, self.dtype), (1,))))
        self.right.assign(ops.slice_update(self.right.value, i, ops.reshape(ops.cast(right, "int32"), (1,))))
        self.count.assign(count + 1)

    def update_state(self, *args, **kwargs):
        raise TypeError("StepFigures is written by record(value, right)")  # StepRecorder: a compiled metric

    def result(self):
        return ops.cast(self.count.value, self.dtype)

    def reset_state(self):
        self.count.assign(0)

    def read(self, k: int, divide_by: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(loss figure, correct count) of the first ``k`` steps since the reset (the count itself reads as the
        replicas' sum); the figures divided by ``divide_by`` (the batch sizes, when replicas recorded sums)."""
        values = ops.convert_to_numpy(self.values)[:k]
        if divide_by is not None:
            values = np.asarray(values, dtype=np.float64) / divide_by[:k]
        return values, np.asarray(ops.convert_to_numpy(self.right))[:k]


class StepRecorder(StepFigures):
    """A compiled (weighted) metric: each training step's mean batch loss and number of correct predictions.

    Keras's own ``loss`` log is a running mean; this keeps the per-step values.
    ``reset_state`` (called by ``fit`` at each epoch start) rewinds the counter.
    """

    def __init__(self, head: str, capacity: int, dtype: str, loss: keras.losses.Loss, track=None,
                 name: str = "step_recorder"):
        super().__init__(capacity, dtype, name=name)
        self.head = head
        self.loss = loss
        self.track = track  # a Dense layer whose weights (after the step's update) are kept, or None
        if track is not None:
            d = track.kernel.shape[0]
            self.history = self.add_variable(shape=(capacity, d + 1), initializer="zeros", dtype=dtype,
                                             name="history")

    def update_state(self, y_true, y_pred, sample_weight=None):
        loss = self.loss(y_true, y_pred, sample_weight=sample_weight)  # the compiled loss: same value
        if self.track is not None:  # metrics run after the optimizer's update in Keras's train_step
            k, b = self.track.kernel.value, self.track.bias.value
            if self.head == SOFTMAX:
                row = ops.concatenate([k[:, 1] - k[:, 0], ops.reshape(b[1] - b[0], (1,))])
            else:
                row = ops.concatenate([k[:, 0], b])
            start = ops.pad(ops.reshape(self.count.value, (1,)), [[0, 1]])  # (step, 0)
            self.history.assign(ops.slice_update(self.history.value, start, ops.cast(row[None, :], self.dtype)))
        self.record(loss, ops.sum(ops.cast(hits(self.head, y_true, y_pred), "int32")))


def keras_loss(head: str, plan: Plan, reduction: str | None = "sum_over_batch_size") -> keras.losses.Loss:
    """The Keras loss object a user compiles with, for ``plan``'s loss (``reduction`` as Keras names it)."""
    label_smoothing = plan.label_smoothing
    r = {"reduction": reduction}
    if plan.loss == "focal":
        a = plan.focal_alpha
        if head == SOFTMAX:  # alpha multiplies every class
            return keras.losses.CategoricalFocalCrossentropy(alpha=1.0 if a is None else a, gamma=plan.focal_gamma,
                                                             **r)
        return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=a is not None,
                                                    alpha=0.25 if a is None else a, gamma=plan.focal_gamma, **r)
    if head == SOFTMAX:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, **r)
    return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, **r)


def keras_targets(head: str, y: np.ndarray, dtype: str) -> np.ndarray:
    if head == SOFTMAX:
        return np.eye(2, dtype=dtype)[y]
    return y.astype(dtype)[:, None]


def dense_layer(head: str, dtype: str, plan: Plan | None = None) -> keras.layers.Dense:
    act = "softmax" if head == SOFTMAX else "sigmoid"
    reg = {}
    if plan is not None and plan.optimizer.weight_decay and plan.optimizer.decay == "coupled":
        # coupled decay wd * w in the gradient = an L2 penalty (wd / 2) ||w||^2 on kernel and bias
        l2 = plan.optimizer.weight_decay / 2
        reg = {"kernel_regularizer": keras.regularizers.L2(l2), "bias_regularizer": keras.regularizers.L2(l2)}
    if plan is not None and plan.autocast == "bfloat16":
        dtype = "mixed_bfloat16"  # Keras's mixed precision: bfloat16 compute, float32 variables
    return keras.layers.Dense(UNITS[head], activation=act, dtype=dtype, name=f"{head}_head", **reg)


def plain_model(head: str, d: int, dtype: str, dense=None) -> keras.Model:
    x = keras.Input((d,), dtype=dtype, name="features")
    dense = dense or dense_layer(head, dtype)
    return keras.Model(x, dense(x), name=f"{head}_eval")


def make_optimizer(plan: Plan):
    s = plan.optimizer
    wd = s.weight_decay if s.weight_decay and s.decay == "decoupled" else None  # coupled: regularizers
    if s.name == "sgd":
        return keras.optimizers.SGD(learning_rate=plan.lr, momentum=s.momentum, nesterov=s.nesterov,
                                    weight_decay=wd)
    if s.name in ("adam", "adamw"):
        cls = keras.optimizers.AdamW if s.name == "adamw" else keras.optimizers.Adam
        kw = {"weight_decay": wd} if wd is not None or s.name == "adam" else {}
        return cls(learning_rate=plan.lr, beta_1=s.beta_1, beta_2=s.beta_2, epsilon=s.epsilon, **kw)
    if s.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=plan.lr, rho=s.rho, epsilon=s.epsilon, weight_decay=wd)
    if s.name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=plan.lr, epsilon=s.epsilon, weight_decay=wd,
                                        initial_accumulator_value=s.initial_accumulator)
    raise NotImplementedError(f"backend 'keras' has no optimizer {s.name!r}")


def reset_optimizer(opt, lr: float) -> None:
    """Fresh optimizer state for a new run on a cached model: step 0, zero slots, the run's lr."""
    for v in opt.variables:
        if v is opt.iterations:
            v.assign(0)
        elif v is getattr(opt, "_learning_rate", None):
            v.assign(lr)
        else:
            v.assign(ops.zeros(v.shape, dtype=v.dtype))
    if ops.convert_to_numpy(opt.learning_rate) != np.asarray(lr, dtype=opt.learning_rate.dtype):
        raise RuntimeError("could not set the optimizer's learning rate on a cached model")



@dataclass
class Compiled:
    model: keras.Model
    dense: keras.layers.Dense
    recorder: StepRecorder
    evaluator: keras.Model


def build(head: str, d: int, plan: Plan, masks: str, steps: int, record_history: bool = False,
          steps_per_execution: int = 1, masks_in_model: bool = True) -> Compiled:
    """The training model, its recorder and evaluator.

    The plan's masks are a second model input (``PlanDropout``), or, with
    ``masks_in_model=False``, applied by the caller's input pipeline to the
    features the model receives; ``masks="native"`` uses Keras's Dropout.
    """
    dt = plan.dtype
    dense = dense_layer(head, dt, plan)
    x_in = keras.Input((d,), dtype=dt, name="features")
    if masks == "plan" and plan.dropout > 0 and masks_in_model:
        m_in = keras.Input((d,), dtype="bool", name="keep_mask")
        model = keras.Model([x_in, m_in], dense(PlanDropout(plan.mask_scale, dtype=dt)(x_in, m_in)))
    elif masks == "native" and plan.dropout > 0:
        drop = keras.layers.Dropout(plan.dropout, seed=plan.native_seed, dtype=dt)
        model = keras.Model(x_in, dense(drop(x_in)))
    else:
        model = keras.Model(x_in, dense(x_in))
    loss = keras_loss(head, plan)
    recorder = StepRecorder(head, steps, dt, loss, track=dense if record_history else None)
    # a weighted metric: it receives the same sample weights (class_weight) as the loss
    model.compile(optimizer=make_optimizer(plan), loss=loss, weighted_metrics=[recorder],
                  steps_per_execution=steps_per_execution, jit_compile=False)
    evaluator = plain_model(head, d, dt, dense)
    # val_loss is the data loss: a metric, since evaluate()'s "loss" adds the L2 penalties
    data_loss = keras.metrics.MeanMetricWrapper(keras_loss(head, plan), name="data_loss")
    evaluator.compile(loss=keras_loss(head, plan), metrics=["accuracy", data_loss], jit_compile=False)
    return Compiled(model, dense, recorder, evaluator)


@contextlib.contextmanager
def floatx(dtype: str):
    """Losses, metrics and the optimizer's learning rate in the plan's dtype, for one run."""
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def train_epochs(backend: str, c: Compiled, head: str, init, plan: Plan, n: int, fit_epoch, evaluate,
                 callback=None, record_history: bool = False):
    """The Keras epoch loop every Keras backend runs: returns a :class:`~equivtest.trajectory.Trajectory`.

    ``fit_epoch(epoch)`` runs ``Model.fit`` for one epoch on that epoch's plan
    order and masks (each backend feeds them its own way: a cached tf.data
    pipeline in-process, NumPy arrays in a worker); ``evaluate()`` returns the
    evaluator's dict.  The recorder's per-step losses, correct counts and
    (optionally) parameters are read after each epoch, a non-finite loss or
    weight stops the run, and ``callback(epoch, logs)`` gets Keras-style figures.
    """
    from ...heads import Weights
    from ...trajectory import Trajectory
    from .._base import all_finite, batch_sizes, check_finite, epoch_logs

    dt = plan.dtype
    steps = plan.steps_per_epoch(n)
    sizes = batch_sizes(plan, n)
    c.dense.set_weights([init.kernel.astype(dt), init.bias.astype(dt)])
    reset_optimizer(c.model.optimizer, plan.lr)
    losses, correct, history, val_loss, val_acc = [], [], [], [], []
    for epoch in range(plan.epochs):
        fit_epoch(epoch)
        losses.append(ops.convert_to_numpy(c.recorder.values))
        correct.append(ops.convert_to_numpy(c.recorder.right))
        check_finite(backend, head, losses[-1], epoch * steps,
                     all_finite(*(ops.convert_to_numpy(v) for v in c.dense.weights)))
        if record_history:
            history.append(ops.convert_to_numpy(c.recorder.history))
        ev = evaluate()
        val_loss.append(ev["data_loss"])
        val_acc.append(ev["accuracy"] if "accuracy" in ev else ev["compile_metrics"])
        if callback is not None:
            callback(epoch, epoch_logs(losses[-1], correct[-1], sizes[:steps], val_loss[-1], val_acc[-1]))
    kernel, bias = (ops.convert_to_numpy(v) for v in c.dense.weights)
    return Trajectory.from_steps(
        np.concatenate(losses), np.concatenate(correct), sizes, steps, val_loss, val_acc,
        Weights(kernel, bias), {}, history=np.concatenate(history) if record_history else None,
    )
