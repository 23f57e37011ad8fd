"""Keras's own data parallelism: the engine over N host devices of a worker process.

Training itself is :func:`.network.train_network`, the one Keras function, run
inside :func:`distributed`'s scope; a head is the network with body ``none``.

* Keras on TensorFlow: ``tf.distribute.MirroredStrategy`` over N logical CPU
  devices (``tf.config.set_logical_device_configuration``, set before the
  runtime starts).  ``fit`` splits each batch over the replicas; a mean loss is
  each replica's shard mean, scaled by 1/N before the optimizer sums the
  replicas' gradients: the mean of the shard means.  Equal shards give the
  global batch mean; unequal ones (a last batch that does not divide by N)
  weight a small shard's samples more.  ``weighted=True`` uses the loss with
  ``reduction="sum"`` and gives every row the sample weight 1 / (its global
  batch's size) (times its class weight), so the replicas' summed gradients are
  the gradient of the global batch mean whatever the split.
* Keras on JAX: ``keras.distribution.DataParallel`` over N host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, float64 with
  ``JAX_ENABLE_X64``).  Variables are replicated and each batch is sharded over
  the devices' mesh; the step is one program that XLA partitions (GSPMD), so the
  loss is the global batch mean by construction and there are no per-replica
  losses to weight.  JAX needs every batch to divide by N.

The worker process is :mod:`.worker`'s, started with ``EQUIVTEST_HOST_DEVICES``
(and, for JAX, the XLA flags) in its environment; :mod:`equivtest.parallel`
starts it.  On TensorFlow each replica records its shard's summed (weighted)
loss and correct count in metric variables that Keras sums when read
(``common.StepFigures``), so the figures are the global batch's whichever way
the batch was split.
"""

from __future__ import annotations

import contextlib
import os

import keras

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


def engine_meta(name: str, world: int, weighted: bool) -> dict:
    """What a data-parallel trajectory records about the run: world size, weighting and the engine."""
    from .. import info

    return {"world_size": world, "weighted": weighted, "engine": info(name).data_parallel}
