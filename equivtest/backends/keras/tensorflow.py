"""The Keras 3 backend on TensorFlow: the heads as Keras users write them, trained by ``Model.fit``.

``Dense(2, activation="softmax")`` with ``categorical_crossentropy`` and
``Dense(1, activation="sigmoid")`` with ``binary_crossentropy``; Keras optimizers.
The plan's dropout masks are applied by the input pipeline (``x * keep * scale``
for each batch, see ``_epoch_dataset``), so Keras trains on the same masked rows
as every other backend; ``masks="native"`` uses ``keras.layers.Dropout`` with a
seed instead.  Each epoch
is one ``fit`` call over the rows in the plan's order with ``shuffle=False``;
a metric (``StepRecorder``) stores each step's batch loss and correct count, from
the same forward pass the loss used.  Devices ``/CPU:0`` and ``/GPU:N`` (named
``cpu`` and ``cuda:N`` here); TF32 is off unless asked for.
"""

from __future__ import annotations

import os
from collections import OrderedDict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402

from . import quiet_native_stderr  # noqa: E402


@contextlib.contextmanager
def _keras_backend(name: str):
    """``KERAS_BACKEND=name`` while Keras is imported (it reads it once), then the user's value again."""
    before = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = name
    try:
        yield
    finally:
        if before is None:
            del os.environ["KERAS_BACKEND"]
        else:
            os.environ["KERAS_BACKEND"] = before


with quiet_native_stderr(), _keras_backend("tensorflow"):  # 'keras' means Keras on TensorFlow here
    import keras  # noqa: E402
    import tensorflow as tf  # noqa: E402
import numpy as np  # noqa: E402

from ...devices import Device  # noqa: E402
from ...heads import SOFTMAX, Weights  # noqa: E402
from ...plan import Plan, tf32_requested  # noqa: E402
from ...trajectory import Trajectory  # noqa: E402
from .._base import BaseBackend  # noqa: E402
from .common import (  # noqa: E402
    Compiled,
    build,
    floatx,
    keras_targets,
    plain_model,
    train_epochs,
)

if keras.backend.backend() != "tensorflow":  # pragma: no cover - keras imported earlier elsewhere
    raise ImportError(
        f"backend 'keras' needs Keras on TensorFlow, but Keras was already imported with "
        f"KERAS_BACKEND={keras.backend.backend()!r} in this process"
    )


tf.get_logger().setLevel("ERROR")  # a new model per run retraces by design


class Backend(BaseBackend):
    name = "keras"
    framework = "tensorflow"  # Keras adds Adam's epsilon before bias correction: epsilon_convention "keras"

    def __init__(self):
        self._cache = _LRU(16)  # compiled models: their tf.functions stay traced
        self._tensors = _LRU(12)  # host variables of the runs' arrays
        self._buffers: dict = {}
        self._datasets = _LRU(4)  # tf.data pipelines: each holds the variables it reads alive
        self.set_tf32(tf32_requested())

    def version(self) -> str:
        return f"keras {keras.__version__} / tensorflow {tf.__version__}"

    def devices(self) -> list[str]:
        gpus = tf.config.list_logical_devices("GPU")
        return ["cpu"] + [f"cuda:{i}" for i in range(len(gpus))]

    def set_tf32(self, on: bool) -> None:
        tf.config.experimental.enable_tensor_float_32_execution(bool(on))

    def tf32(self) -> bool:
        return bool(tf.config.experimental.tensor_float_32_execution_enabled())

    @staticmethod
    def tf_device(device: str) -> str:
        return Device.parse(device).tensorflow

    # -- models -------------------------------------------------------------------
    def count_params(self, head: str, d: int) -> int:
        return int(plain_model(head, int(d), "float32").count_params())

    def predict_proba(self, weights: Weights, X, *, device="cpu", dtype="float32") -> np.ndarray:
        device = self.resolve_device(device)
        with tf.device(self.tf_device(device)):
            key = ("predict", weights.head, weights.n_features, dtype, device)
            # built once: a new model would trace its predict function again
            model = self._cache.get_or_make(key, lambda: plain_model(weights.head, weights.n_features, dtype))
            model.layers[-1].set_weights([weights.kernel.astype(dtype), weights.bias.astype(dtype)])
            p = model.predict(np.asarray(X, dtype=dtype), batch_size=4096, verbose=0)
        return p[:, 1] if weights.head == SOFTMAX else p[:, 0]

    # -- training -----------------------------------------------------------------
    def count_network_params(self, network, head: str) -> int:
        from .network import count_params

        return count_params(network, head)

    def network_loop(self):
        from .network import train_network

        return train_network

    def train(self, head, init, plan: Plan, data, *, device="cpu", masks="plan", callback=None,
              record_history=False) -> Trajectory:
        self._check_train_args(head, init, plan, data, masks)
        device = self.resolve_device(device)
        with floatx(plan.dtype), tf.device(self.tf_device(device)):
            return self._train(head, init, plan, data, device, masks, callback, record_history)

    def _train(self, head, init, plan: Plan, data, device, masks, callback, record_history=False) -> Trajectory:
        dt = plan.dtype
        n, d = data.X_train.shape
        steps = plan.steps_per_epoch(n)
        use_plan_masks = masks == "plan" and plan.dropout > 0
        c = self._compiled(head, d, plan, masks, steps, record_history)
        Xt = self._tensor(data.X_train, dt)
        Yt = self._tensor(data.y_train, dt, head)
        val = self._tensor(data.X_val, dt), self._tensor(data.y_val, dt, head)
        val_ds = self._datasets.get_or_make(("val", *map(id, val)), lambda: tf.data.Dataset.from_tensors(val))
        class_weight = None if plan.class_weight is None else dict(enumerate(plan.class_weight))
        order, keep = self._epoch_buffers(n, d, use_plan_masks)
        epoch_data = self._epoch_dataset(Xt, Yt, order, keep, plan.mask_scale, plan.batch_size, steps)

        def fit_epoch(epoch):
            order.assign(plan.batch_order(epoch, n))
            if keep is not None:
                keep.assign(plan.epoch_masks(epoch, n, d))
            c.model.fit(epoch_data, epochs=1, verbose=0, shuffle=False, class_weight=class_weight)

        traj = train_epochs(self.name, c, head, init, plan, n, fit_epoch,
                            lambda: c.evaluator.evaluate(val_ds, verbose=0, return_dict=True),
                            callback, record_history)
        traj.meta = self._meta(head, plan, data, device, masks)
        return traj

    def _compiled(self, head: str, d: int, plan: Plan, masks: str, steps: int, record_history: bool = False
                  ) -> Compiled:
        """A compiled model for this configuration, built once and reused (its tf.functions stay traced).

        Runs with the framework's own Dropout are built afresh: their RNG state belongs to the run.
        """
        # every plan field shapes the model except those a run sets itself (lr is reset, class weights go
        # to fit, the seed and mask stream pick masks, epochs count fits): a new field is in the key by default
        shape = plan.replace(lr=1.0, seed=0, mask_stream=0, epochs=1, class_weight=None)
        key = (head, d, masks, steps, record_history, shape, tf.config.experimental.tensor_float_32_execution_enabled())

        def make():
            return build(head, d, plan, masks, steps, record_history, steps_per_execution=steps, masks_in_model=False)

        if masks == "native" and plan.dropout > 0:
            return make()
        return self._cache.get_or_make(key, make)

    def _epoch_buffers(self, n: int, d: int, with_masks: bool):
        """Host variables for an epoch's order and masks, reused (assigned) every epoch."""
        key = (n, d, with_masks)
        if key not in self._buffers:
            with tf.device("/CPU:0"):
                order = tf.Variable(tf.zeros(n, dtype=tf.int64), trainable=False)
                keep = tf.Variable(tf.zeros((n, d), dtype=tf.bool), trainable=False) if with_masks else None
            self._buffers = {key: (order, keep)}  # one shape at a time: masks are n*d bytes
        return self._buffers[key]

    def _epoch_dataset(self, X, Y, order, keep, scale: float, batch_size: int, steps: int):
        """``_epoch_dataset``, built (traced) once per set of variables: each epoch assigns new
        values to ``order`` and ``keep`` and iterates it afresh.  Keyed by the variables' ids,
        which cannot be reused while the cached pipeline holds the variables."""
        key = ("epoch", id(X), id(Y), id(order), id(keep), scale, batch_size, steps)
        return self._datasets.get_or_make(key, lambda: _epoch_dataset(X, Y, order, keep, scale, batch_size, steps))

    def _tensor(self, array: np.ndarray, dtype: str, head: str | None = None):
        """``array`` (features, or labels as targets for ``head``) as a host tf.Variable, kept for reuse.

        The input pipeline (tf.data) reads batches from it; a variable is captured
        by handle, so building an epoch's dataset copies nothing.  Keyed by the
        array's identity; the cache holds the array itself so the identity cannot
        be reused while the entry lives.
        """
        def make():
            value = keras_targets(head, array, dtype) if head else array.astype(dtype, copy=False)
            with tf.device("/CPU:0"):
                return array, tf.Variable(value, trainable=False)

        return self._tensors.get_or_make((id(array), dtype, head), make)[1]


class _LRU:
    """A small least-recently-used cache."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get_or_make(self, key, make):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = make()
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


def _epoch_dataset(X, Y, order, keep, scale: float, batch_size: int, steps: int):
    """The epoch's batches in the plan's order, with its masks applied, gathered by tf.data.

    A batch is ``(x * keep) * scale``, bit for bit ``(x * scale) * keep``: the
    plan's inverted dropout, done here so the model is the head alone and the
    training thread runs no elementwise pass over the batch.  tf.data runs on a
    private pool of one thread, beside the training step rather than in its way.
    """
    n = int(order.shape[0])

    def batch(s):
        start = s * batch_size
        stop = tf.minimum(start + batch_size, n)
        idx = order[start:stop]
        x = tf.gather(X, idx)
        if keep is not None:
            x = x * tf.cast(keep[start:stop], x.dtype) * tf.constant(scale, x.dtype)  # cast() would round via float32
        return x, tf.gather(Y, idx)

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    return tf.data.Dataset.range(steps).map(batch).prefetch(2).with_options(options)
