"""Keras 3 on PyTorch and on JAX (``keras-torch``, ``keras-jax``), each in its own process.

Keras picks its backend once per process (``KERAS_BACKEND``), and this process
may already hold Keras on TensorFlow, so these backends run a worker process
(``python -m equivtest.backends.keras.worker``) with the variable set before
Keras is imported, talking over a socket pair.  The worker trains with Keras's one training function
(:func:`.network.train_network`: ``fit`` on PyTorch, the from-scratch step on JAX) on NumPy inputs (rows
in the plan's order; a head's masks applied to its features, a body's as a second input).  CPU only for now.

Requests and results (datasets, plans, weights, trajectories) travel pickled
through a pipe; an epoch ``callback`` is called after the run, epoch by epoch.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection

import numpy as np

from ...heads import Weights
from ...plan import tf32_requested
from .._base import BaseBackend

KERAS_BACKENDS = {"keras-torch": "torch", "keras-jax": "jax", "keras": "tensorflow"}
#: the niceness of a worker started ahead of need (:meth:`Backend.start`)
BACKGROUND_NICE = 10


def worker_env(keras_backend: str, n: int, environ) -> dict:
    """Environment of a Keras worker that sees ``n`` host devices (set before its framework starts)."""
    env = {"EQUIVTEST_HOST_DEVICES": str(n)}
    if keras_backend == "jax":
        flags = f"{environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        env.update({"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"})
    return env



class Backend(BaseBackend):
    """A proxy: every call runs in the worker process for ``keras_backend``.

    ``host_devices=N`` starts a worker that sees N host devices for Keras's data
    parallelism (:mod:`.parallel`): N logical CPUs on TensorFlow, N XLA host
    devices (and float64) on JAX.
    """

    framework = "keras"  # float64 not claimed: fed float64, Keras on torch/JAX trains at float32 precision here

    def __init__(self, name: str = "keras-torch", *, host_devices: int = 0):
        self.name = name
        self.keras_backend = KERAS_BACKENDS[name]
        self.host_devices = int(host_devices)
        self._conn = None
        self._proc = None
        self._info = None

    def _env(self) -> dict:
        env = {**os.environ, "KERAS_BACKEND": self.keras_backend}
        if self.host_devices:
            env.update(worker_env(self.keras_backend, self.host_devices, os.environ))
        return env

    # -- the worker ---------------------------------------------------------------
    def _running(self) -> bool:
        return self._proc is not None and self._conn is not None and self._proc.poll() is None

    def start(self, *, background: bool = False) -> None:
        """Start the worker process if it is not running; returns at once (its framework loads meanwhile).

        ``background``: started ahead of need (:func:`equivtest.parallel.prestart`), the worker runs at nice 10
        for its whole life: while it loads its framework, the caller's own work gets the CPU first; once the
        caller waits on it, an otherwise idle CPU is its alone."""
        if self._running():
            return
        self.close()  # a worker that died or was asked to stop: reap it and close its connection first
        parent, child = socket.socketpair()
        env = self._env()
        # the framework's start-up logging stays out of the user's terminal unless EQUIVTEST_VERBOSE (the CLI's
        # --verbose); errors travel back over the connection either way, with their messages
        verbose = os.environ.get("EQUIVTEST_VERBOSE", "") not in ("", "0")
        if not verbose:
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "equivtest.backends.keras.worker", str(child.fileno()),
             *([str(BACKGROUND_NICE)] if background else [])],
            pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL,
            stderr=None if verbose else subprocess.DEVNULL,
        )
        child.close()
        self._conn = Connection(parent.detach())
        atexit.register(self.close)

    def _call(self, *request):
        self.start()
        try:
            self._conn.send(request)
            ok, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"backend '{self.name}': its worker process stopped ({exc})") from None
        if not ok:
            kind, message = value
            from ...errors import NonFiniteLoss

            if kind == "NonFiniteLoss":  # its message already names the backend, the head and the step
                import re

                step = re.search(r"step (\d+)", message)
                raise NonFiniteLoss(message, int(step.group(1)) if step else None)
            prefix = "" if message.startswith(f"backend '{self.name}'") else f"backend '{self.name}': "
            from ...errors import InputError

            raise {"NotImplementedError": NotImplementedError, "ValueError": ValueError,
                   "InputError": InputError}.get(kind, RuntimeError)(prefix + message)
        return value

    def stop(self) -> None:
        """Ask the worker to exit without waiting (:meth:`close` waits); its connection is closed either way."""
        if self._conn is None:
            return
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._conn.send(None)
            except OSError:
                self._proc.kill()
        self._conn.close()
        self._conn = None

    def close(self):
        """Stop the worker and wait for it (killed after 10 s)."""
        self.stop()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    # -- the interface ------------------------------------------------------------
    def version(self) -> str:
        if self._info is None:
            self._info = self._call("info")
        return self._info["version"]

    def devices(self) -> list[str]:
        return ["cpu"]

    def tf32(self) -> bool:
        """The worker's TF32 state (off unless EQUIVTEST_TF32 asks), as it set it at start."""
        if self._info is None:
            self._info = self._call("info")
        return self._info["tf32"]

    def count_params(self, head: str, d: int) -> int:
        return self._call("count_params", head, int(d))

    def predict_proba(self, weights: Weights, X, *, device="cpu", dtype="float32") -> np.ndarray:
        self.resolve_device(device)
        return self._call("predict_proba", weights, np.asarray(X), dtype)

    def count_network_params(self, network, head: str) -> int:
        return self._call("count_network_params", network, head)

    def train_network(self, network, head, body_init, head_init, plan, data, *, rates, device="cpu"):
        device = self.resolve_device(device)
        traj = self._call("train_network", network, head, body_init, head_init, plan, _portable_data(data), rates)
        traj.meta["device"] = device
        return traj

    def train_parallel(self, head, init, plan, data, *, weighted=True):
        """The head trained data-parallel over this worker's host devices (:func:`.parallel.train`)."""
        return self._call("train_parallel", head, init, plan, _portable_data(data), weighted)

    def train_network_parallel(self, network, head, body_init, head_init, plan, data, *, rates, weighted=True):
        return self._call("train_network_parallel", network, head, body_init, head_init, plan,
                          _portable_data(data), rates, weighted)

    def train(self, head, init, plan, data, *, device="cpu", masks="plan", callback=None, record_history=False):
        self._check_train_args(head, init, plan, data, masks)
        device = self.resolve_device(device)
        traj = self._call("train", head, init, plan, _portable_data(data), masks, record_history)
        traj.meta.update(self._meta(head, plan, data, device, masks))
        if callback is not None:
            for e in range(traj.epochs):
                callback(e, traj.logs(e))
        return traj


def _portable_data(data):
    """Only what training needs crosses the pipe (the split is computed here, once)."""
    from types import SimpleNamespace

    return SimpleNamespace(X_train=data.X_train, y_train=data.y_train, X_val=data.X_val, y_val=data.y_val,
                           source=data.source)


# ------------------------------------------------------------------------------ worker side
def _serve(conn) -> None:
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the parent handles it and stops the worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("EQUIVTEST_HOST_DEVICES"):
        from .parallel import configure_host_devices

        configure_host_devices()
    worker = _Worker()
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:  # nothing is left to write: skip the framework's teardown (seconds for TensorFlow)
            conn.close()
            os._exit(0)
        try:
            conn.send((True, getattr(worker, request[0])(*request[1:])))
        except Exception as exc:  # sent back and raised in the caller
            conn.send((False, (type(exc).__name__, str(exc))))


class _Worker:
    def __init__(self):
        import keras

        self.keras = keras
        self.name = {"tensorflow": "keras"}.get(keras.backend.backend(), f"keras-{keras.backend.backend()}")
        self._tf32 = self._set_tf32(tf32_requested())

    def _set_tf32(self, on: bool) -> bool:
        """TF32 off unless asked (EQUIVTEST_TF32): torch's float32 matmul precision, or JAX's default
        matmul precision (TF32 on recent GPUs unless set to "highest")."""
        if self.keras.backend.backend() == "jax":
            import jax

            jax.config.update("jax_default_matmul_precision", "tensorfloat32" if on else "highest")
        elif self.keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_tensor_float_32_execution(bool(on))
        else:
            from ..torch import set_torch_tf32

            set_torch_tf32(on)
        return bool(on)

    def info(self) -> dict:
        import importlib

        k = self.keras
        lib = importlib.import_module(k.backend.backend())
        return {"version": f"keras {k.__version__} / {k.backend.backend()} {lib.__version__}", "tf32": self._tf32}

    def count_network_params(self, network, head: str) -> int:
        from .network import count_params

        return count_params(network, head)

    def train_network(self, network, head, body_init, head_init, plan, data, rates):
        from .network import train_network

        return train_network(self, network, head, body_init, head_init, plan, data, rates)

    def train_parallel(self, head, init, plan, data, weighted):
        """The head data-parallel: the network with body ``none``, at the head's rate and decay."""
        from .network import train_head
        from .parallel import host_devices

        return train_head(self, head, init, plan, data, world=host_devices(), weighted=weighted)

    def train_network_parallel(self, network, head, body_init, head_init, plan, data, rates, weighted):
        from .network import train_network
        from .parallel import host_devices

        return train_network(self, network, head, body_init, head_init, plan, data, rates, world=host_devices(),
                             weighted=weighted)

    def count_params(self, head: str, d: int) -> int:
        from .network import head_model

        return int(head_model(head, d, "float32").count_params())

    def predict_proba(self, weights: Weights, X: np.ndarray, dtype: str) -> np.ndarray:
        from .common import floatx
        from .network import head_model

        with floatx(dtype):
            model = head_model(weights.head, weights.n_features, dtype)
            model.layers[-1].set_weights([weights.kernel.astype(dtype), weights.bias.astype(dtype)])
            p = model.predict(np.asarray(X, dtype=dtype), batch_size=4096, verbose=0)
        return p[:, 1] if weights.head == "softmax" else p[:, 0]

    def train(self, head, init, plan, data, masks, record_history):
        from .network import train_head

        return train_head(self, head, init, plan, data, masks=masks, record_history=record_history)


if __name__ == "__main__":  # the worker: python -m equivtest.backends.keras.worker FD [NICENESS]
    if len(sys.argv) > 2:
        os.nice(int(sys.argv[2]))
    _serve(Connection(int(sys.argv[1])))
