"""Keras 3, on each of its frameworks: one package, the same module names as the other backends.

- :mod:`.tensorflow`: the ``keras`` backend, Keras on TensorFlow in this process;
- :mod:`.worker`: ``keras-torch`` and ``keras-jax``, Keras on PyTorch / JAX in a worker process of its own
  (Keras fixes its framework once per process), and the data-parallel workers;
- :mod:`.network`: Keras's one training function, for the head (body ``none``) and whole networks, on one
  worker or N; :mod:`.parallel`: MirroredStrategy and keras.distribution;
- :mod:`.common`: losses, optimizers and the step figures shared by all.

Importing this package imports no framework.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_native_stderr():
    """Mute what TensorFlow's C++ side prints while it loads (absl's pre-init oneDNN notice,
    which ignores TF_CPP_MIN_LOG_LEVEL); Python errors are raised after stderr is back."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to mute
        yield
        return
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


