"""Keras pieces that run on any Keras 3 backend (only ``keras`` and ``keras.ops``).

Shared by Keras's training function (:mod:`.network`), the TensorFlow adapter (:mod:`.tensorflow`) and
the process-isolated Keras-on-PyTorch / Keras-on-JAX adapters (:mod:`.worker`).  The
importer decides ``KERAS_BACKEND`` before importing this module.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import ops

from ...heads import SOFTMAX
from ...plan import Plan


def hits(head: str, y_true, y_pred):
    """Which predictions are right, from probabilities and one-hot / 0-1 targets, as Keras tensors."""
    if head == SOFTMAX:
        return ops.equal(ops.argmax(y_pred, axis=-1), ops.argmax(y_true, axis=-1))
    return ops.equal(ops.cast(y_pred[:, 0] > 0.5, "int32"), ops.cast(y_true[:, 0] > 0.5, "int32"))


def head_row(head: str, kernel, bias):
    """The head's parameters in sigmoid coordinates, one row: ``[w1 - w0, b1 - b0]`` for softmax,
    ``[w, b]`` for sigmoid (what ``Trajectory.history`` keeps after every step)."""
    if head == SOFTMAX:
        return ops.concatenate([kernel[:, 1] - kernel[:, 0], ops.reshape(bias[1] - bias[0], (1,))])
    return ops.concatenate([kernel[:, 0], bias])


class StepFigures(keras.metrics.Metric):
    """Each step's loss figure and number of correct predictions, written by a ``train_step`` (:meth:`record`),
    and with ``track`` (the head's Dense layer) the head's parameters after each step.

    Metric variables: under a strategy Keras keeps them per replica and sums them when read
    (``synchronization="on_read"``, ``aggregation="sum"``), so figures each replica records for its shard
    read as the global batch's.  ``fit`` does not reset an uncompiled metric: the caller does, each epoch.
    """

    def __init__(self, capacity: int, dtype: str, name: str = "step_figures", track=None, head: str | None = None):
        super().__init__(name=name, dtype=dtype)
        self.values = self.add_variable(shape=(capacity,), initializer="zeros", dtype=dtype, name="values")
        self.right = self.add_variable(shape=(capacity,), initializer="zeros", dtype="int32", name="right")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="int32", name="count")
        self.track, self.head = track, head
        if track is not None:
            d = track.kernel.shape[0]
            self.history = self.add_variable(shape=(capacity, d + 1), initializer="zeros", dtype=dtype,
                                             name="history")

    def record(self, value, right) -> None:
        count = self.count.value  # .value: the backend tensor (this replica's copy, in replica context)
        i = ops.reshape(count, (1,))
        self.values.assign(ops.slice_update(self.values.value, i, ops.reshape(ops.cast(value, self.dtype), (1,))))
        self.right.assign(ops.slice_update(self.right.value, i, ops.reshape(ops.cast(right, "int32"), (1,))))
        if self.track is not None:  # recorded after the step's update
            row = head_row(self.head, self.track.kernel.value, self.track.bias.value)
            start = ops.pad(i, [[0, 1]])  # (step, 0)
            self.history.assign(ops.slice_update(self.history.value, start, ops.cast(row[None, :], self.dtype)))
        self.count.assign(count + 1)

    def update_state(self, *args, **kwargs):
        raise TypeError("StepFigures is written by record(value, right)")

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

    def rows(self, k: int) -> np.ndarray | None:
        """The head's parameters after each of the first ``k`` steps, or None without ``track``."""
        return None if self.track is None else ops.convert_to_numpy(self.history)[:k]


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


def optimizer_state(opt) -> list:
    """The optimizer's variables' values as NumPy arrays: taken right after it is built, they are its
    fresh state (step 0, each slot at its initializer: zeros, or Adagrad's initial accumulator)."""
    return [ops.convert_to_numpy(v) for v in opt.variables]


def reset_optimizer(opt, lr: float, fresh: list) -> None:
    """Fresh optimizer state for a new run on a built model: every variable back to ``fresh``
    (:func:`optimizer_state` right after building), then the run's lr."""
    for v, value in zip(opt.variables, fresh, strict=True):
        v.assign(value)
    lr_var = getattr(opt, "_learning_rate", None)
    if lr_var is not None and hasattr(lr_var, "assign"):
        lr_var.assign(lr)
    if ops.convert_to_numpy(opt.learning_rate) != np.asarray(lr, dtype=opt.learning_rate.dtype):
        raise RuntimeError("could not set the optimizer's learning rate on a built model")


@contextlib.contextmanager
def floatx(dtype: str):
    """Losses, metrics and the optimizer's learning rate in the plan's dtype, for one run."""
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)
