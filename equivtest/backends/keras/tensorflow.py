"""The Keras 3 backend on TensorFlow: the heads as Keras users write them, trained by ``Model.fit``.

``Dense(2, activation="softmax")`` with ``categorical_crossentropy`` and
``Dense(1, activation="sigmoid")`` with ``binary_crossentropy``; Keras optimizers.
Training is Keras's one function, :func:`.network.train_network` (the head is the
network with body ``none``); this backend gives it, on one worker, a cached built
model (its tf.functions stay traced) and a ``tf.data`` input pipeline over host
variables: the plan's dropout masks are applied by it (``x * keep * scale`` for each
batch of the head, see ``_epoch_dataset``), so Keras trains on the same masked rows
as every other backend; ``masks="native"`` uses ``keras.layers.Dropout`` with a seed
instead.  Each epoch is one ``fit`` call (one execution of all its steps) over the
rows in the plan's order; a metric (``common.StepFigures``) stores each step's batch
loss and correct count, from the same forward pass the loss used.  Devices ``/CPU:0``
and ``/GPU:N`` (named ``cpu`` and ``cuda:N`` here); TF32 is off unless asked for.
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
from .common import keras_targets  # noqa: E402
from .network import head_model  # noqa: E402

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
        return int(head_model(head, int(d), "float32").count_params())

    def predict_proba(self, weights: Weights, X, *, device="cpu", dtype="float32") -> np.ndarray:
        device = self.resolve_device(device)
        with tf.device(self.tf_device(device)):
            key = ("predict", weights.head, weights.n_features, dtype, device)
            # built once: a new model would trace its predict function again
            model = self._cache.get_or_make(key, lambda: head_model(weights.head, weights.n_features, dtype))
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
        from .network import train_head

        self._check_train_args(head, init, plan, data, masks)
        device = self.resolve_device(device)
        traj = train_head(self, head, init, plan, data, device, masks=masks, callback=callback,
                          record_history=record_history)
        traj.meta = self._meta(head, plan, data, device, masks)
        return traj

    # -- what Keras's training function (network.train_network) takes from this backend on one worker ----------
    def cached(self, key, make):
        """A built model for this configuration (``key``), made once and reused: its tf.functions stay traced."""
        return self._cache.get_or_make((*key, tf.config.experimental.tensor_float_32_execution_enabled()), make)

    def keras_pipeline(self, net, head: str, plan: Plan, data, drop: str | None, scaled: bool) -> _Pipeline:
        """One worker's epochs through a cached ``tf.data`` pipeline over host variables."""
        return _Pipeline(self, net, head, plan, data, drop)

    def _epoch_buffers(self, n: int, d: int, with_masks: bool):
        """Host variables for an epoch's order and masks, reused (assigned) every epoch."""
        key = (n, d, with_masks)
        if key not in self._buffers:
            with tf.device("/CPU:0"):
                order = tf.Variable(tf.zeros(n, dtype=tf.int64), trainable=False)
                keep = tf.Variable(tf.zeros((n, d), dtype=tf.bool), trainable=False) if with_masks else None
            self._buffers = {key: (order, keep)}  # one shape at a time: masks are n*d bytes
        return self._buffers[key]

    def _epoch_dataset(self, X, Y, order, keep, scale: float, batch_size: int, steps: int, W=None,
                       mask_input: bool = False):
        """``_epoch_dataset``, built (traced) once per set of variables: each epoch assigns new
        values to ``order`` and ``keep`` and iterates it afresh.  Keyed by the variables' ids,
        which cannot be reused while the cached pipeline holds the variables."""
        key = ("epoch", id(X), id(Y), id(order), id(keep), id(W), scale, batch_size, steps, mask_input)
        return self._datasets.get_or_make(
            key, lambda: _epoch_dataset(X, Y, order, keep, scale, batch_size, steps, W, mask_input))

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

    def _row_weights(self, plan: Plan, data):
        """Each training row's class weight (``network.row_weights``) as a host tf.Variable, kept for reuse, or
        None without class weights."""
        from .network import row_weights

        if plan.class_weight is None:
            return None

        def make():
            with tf.device("/CPU:0"):
                return data.y_train, tf.Variable(row_weights(plan, data, plan.dtype), trainable=False)

        return self._tensors.get_or_make(("weights", id(data.y_train), plan.class_weight, plan.dtype), make)[1]


class _Pipeline:
    """One worker's epochs on TensorFlow: the rows (and their masks and sample weights) of each epoch gathered
    by a cached ``tf.data`` pipeline from host variables; each epoch assigns its order and masks."""

    def __init__(self, be: Backend, net, head: str, plan: Plan, data, drop: str | None):
        dt = plan.dtype
        self.plan, self.n, self.width = plan, len(data.y_train), net.dropout_widths[0]
        X, Y = be._tensor(data.X_train, dt), be._tensor(data.y_train, dt, head)
        val = be._tensor(data.X_val, dt), be._tensor(data.y_val, dt, head)
        self.val = be._datasets.get_or_make(("val", *map(id, val)), lambda: tf.data.Dataset.from_tensors(val))
        self.order, self.keep = be._epoch_buffers(self.n, self.width, drop == "plan")
        self.dataset = be._epoch_dataset(X, Y, self.order, self.keep, plan.mask_scale, plan.batch_size,
                                         plan.steps_per_epoch(self.n), be._row_weights(plan, data),
                                         mask_input=drop == "plan" and net.body != "none")

    def fit_args(self, epoch: int) -> dict:
        self.order.assign(self.plan.batch_order(epoch, self.n))
        if self.keep is not None:
            self.keep.assign(self.plan.epoch_masks(epoch, self.n, self.width))
        return dict(x=self.dataset)

    def val_args(self) -> dict:
        return dict(x=self.val)


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


def _epoch_dataset(X, Y, order, keep, scale: float, batch_size: int, steps: int, W=None, mask_input: bool = False):
    """The epoch's batches in the plan's order, with its masks, gathered by tf.data.

    For the head alone a batch is ``(x * keep) * scale``, bit for bit ``(x * scale) * keep``: the plan's
    inverted dropout, done here so the model is the head alone and the training thread runs no elementwise
    pass over the batch; for a body (``mask_input``) it is ``(x, keep * scale)``, the masks the model's
    second input.  With ``W`` (each row's sample weight) a batch also carries its rows' weights.  tf.data runs
    on a private pool of one thread, beside the training step rather than in its way.
    """
    n = int(order.shape[0])

    def batch(s):
        start = s * batch_size
        stop = tf.minimum(start + batch_size, n)
        idx = order[start:stop]
        x = tf.gather(X, idx)
        if keep is not None:
            kept = tf.cast(keep[start:stop], x.dtype)
            scale_ = tf.constant(scale, x.dtype)  # cast() would round via float32
            x = (x, kept * scale_) if mask_input else x * kept * scale_
        out = (x, tf.gather(Y, idx))
        return out if W is None else (*out, tf.gather(W, idx))

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    return tf.data.Dataset.range(steps).map(batch).prefetch(2).with_options(options)
