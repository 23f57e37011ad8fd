"""What every backend shares: the public interface, device names, the epoch loop's data.

Every ``backends/<name>.py`` defines ``class Backend(BaseBackend)`` with the same
public names.  Devices are named as the plugin and CLI name them: ``cpu``,
``cuda`` / ``cuda:N``, ``mps``; a backend maps them to its own (``/GPU:N``).
"""

from __future__ import annotations

import numpy as np

from ..data import Dataset
from ..devices import Device
from ..errors import InputError, NonFiniteLoss
from ..heads import UNITS, Weights, check_head
from ..plan import Plan
from ..trajectory import Trajectory, epoch_figures

#: where a run's dropout masks come from: the plan's shared bits, or the framework's own Dropout layer
MASK_SOURCES = ("plan", "native")


class DeviceUnavailable(InputError):
    """A device that was asked for and is not there (a usage error, never a skip)."""


class BaseBackend:
    #: registry name, framework distribution, what it can do
    name = "base"
    framework = "none"

    # -- capabilities: declared once, in the registry (``equivtest.backends.REGISTRY``) ------
    @property
    def capabilities(self):
        from . import info

        return info(self.name)

    @property
    def supports_float64(self) -> bool:
        return self.capabilities.float64

    @property
    def epsilon_convention(self) -> str:
        """Where Adam's epsilon enters: "torch" (after bias correction) or "keras" (before)."""
        return self.capabilities.epsilon_convention

    # -- identity -----------------------------------------------------------------
    def version(self) -> str:
        raise NotImplementedError(f"backend '{self.name}' does not implement version()")

    def devices(self) -> list[str]:
        """The devices this backend can use here, canonical names (``cpu``, ``cuda:0``)."""
        return ["cpu"]

    def tf32(self) -> bool | None:
        """Whether TF32 matmuls are enabled for this backend's GPU work (None: not applicable)."""
        return None

    def environment(self) -> dict:
        return {"backend": self.name, "framework": self.framework, "version": self.version(),
                "devices": self.devices(), "tf32": self.tf32()}

    def resolve_device(self, device: str = "cpu") -> str:
        """``cuda`` -> ``cuda:0``; raise :class:`DeviceUnavailable` if it is not here."""
        parsed = Device.parse(device)
        have = self.devices()
        if parsed.kind == "auto":
            return next((d for d in have if d != "cpu"), "cpu")
        dev = parsed.canonical
        if dev not in have:
            raise DeviceUnavailable(
                f"device '{device}' is not available to backend '{self.name}' "
                f"({self.framework} {self.version()} sees: {', '.join(have)})"
            )
        return dev

    # -- the interface ------------------------------------------------------------
    def count_params(self, head: str, d: int) -> int:
        """The parameter count as the framework itself counts it."""
        raise NotImplementedError(f"backend '{self.name}' does not implement count_params()")

    def predict_proba(self, weights: Weights, X: np.ndarray, *, device: str = "cpu",
                      dtype: str = "float32") -> np.ndarray:
        """p(y = 1 | x) from a model of the head ``weights`` describes (no dropout)."""
        raise NotImplementedError(f"backend '{self.name}' does not implement predict_proba()")

    def train(self, head: str, init: Weights, plan: Plan, data: Dataset, *, device: str = "cpu",
              masks: str = "plan", callback=None, record_history: bool = False) -> Trajectory:
        """Train ``head`` from ``init`` under ``plan`` on ``data.X_train``; evaluate on ``X_val``.

        ``masks="plan"`` multiplies in the plan's dropout masks (shared by every
        backend); ``masks="native"`` uses the framework's own Dropout layer,
        seeded from ``plan.seed`` and ``plan.mask_stream`` (the seed's setting).
        ``callback(epoch, logs)``, if given, is called after each epoch with
        ``logs = {"loss", "accuracy", "val_loss", "val_accuracy"}``.
        ``record_history`` keeps the parameters after every step, in sigmoid
        coordinates (``Trajectory.history``), for locating where two runs split.
        """
        raise NotImplementedError(f"backend '{self.name}' does not implement train()")

    def count_network_params(self, network, head: str) -> int:
        """A whole network's parameter count as the framework itself counts it."""
        raise NotImplementedError(f"backend '{self.name}' does not build whole networks yet")

    def train_network(self, network, head: str, body_init, head_init: Weights, plan: Plan, data: Dataset, *,
                      rates, device: str = "cpu") -> Trajectory:
        """Train a whole network (``equivtest.networks``): body from ``body_init`` (canonical layers),
        head from ``head_init``, per-group learning rates and decays ``rates``; the plan's masks at
        every Dropout layer.  ``Trajectory.body`` holds the trained body.  A backend gives its
        network loop as :meth:`network_loop`; this passes it the resolved device."""
        from . import refusal

        declared = refusal(self.name, plan, network=True)
        if declared:  # before anything trains: an option this framework's network loop does not take
            from ..errors import InputError

            raise InputError(declared)
        loop = self.network_loop()
        return loop(self, network, head, body_init, head_init, plan, data, rates, self.resolve_device(device))

    def network_loop(self):
        """The framework's ``train_network(backend, network, head, body_init, head_init, plan, data, rates,
        device)`` (its ``network`` module's)."""
        raise NotImplementedError(f"backend '{self.name}' does not train whole networks yet")

    # -- shared helpers -----------------------------------------------------------
    def _check_train_args(self, head: str, init: Weights, plan: Plan, data: Dataset, masks: str) -> None:
        check_head(head)
        if masks not in MASK_SOURCES:
            raise InputError(f"masks must be one of {', '.join(MASK_SOURCES)}, got {masks!r}")
        if init.kernel.shape != (data.n_features, UNITS[head]):
            raise ValueError(
                f"initial weights for a {head} head on {data.n_features} features must have kernel "
                f"({data.n_features}, {UNITS[head]}), got {init.kernel.shape}"
            )
        from . import refusal

        declared = refusal(self.name, plan)  # what the registry declares this backend does not offer: one place
        if declared:
            raise NotImplementedError(declared)

    def _meta(self, head: str, plan: Plan, data: Dataset, device: str, masks: str) -> dict:
        return {
            "backend": self.name, "framework": self.framework, "version": self.version(), "head": head,
            "device": device, "dtype": plan.dtype, "lr": plan.lr, "optimizer": plan.optimizer.label,
            "masks": masks, "features": data.source, "plan": plan.to_dict(),
        }


def step_hook(callback):
    """The per-step hook of a training ``callback``: ``callback.step(epoch, step, steps)`` with ``step`` counted
    from 1 (as Keras prints steps), or None.  A plain function is an epoch callback only."""
    return getattr(callback, "step", None)


def shard_bounds(s: int, t: int, world_size: int) -> list[tuple[int, int]]:
    """The contiguous (start, stop) of each rank's shard of batch rows s..t (``numpy.array_split``)."""
    sizes = [len(a) for a in np.array_split(np.arange(s, t), world_size)]
    out, start = [], s
    for k in sizes:
        out.append((start, start + k))
        start += k
    return out


def epoch_logs(losses, correct, sizes, val_loss, val_accuracy) -> dict:
    """One epoch's Keras-style figures from its steps' losses, correct counts and batch sizes."""
    loss, acc = epoch_figures(losses, correct, sizes, len(sizes))
    return {"loss": float(loss[0]), "accuracy": float(acc[0]), "val_loss": float(val_loss),
            "val_accuracy": float(val_accuracy)}


def batch_sizes(plan: Plan, n: int) -> np.ndarray:
    """Each step's batch size over the whole run."""
    one = np.asarray([b - a for a, b in plan.batch_bounds(n)], dtype=np.int64)
    return np.tile(one, plan.epochs)


def all_finite(*arrays) -> bool:
    """Whether every value of every array is finite."""
    return all(bool(np.isfinite(np.asarray(a)).all()) for a in arrays)


def check_finite(backend: str, head: str, losses, first_step: int, params_finite: bool = True) -> None:
    """Raise :class:`NonFiniteLoss` at the first non-finite step loss, or if the parameters are not finite.

    ``losses`` are the steps ``first_step, first_step + 1, ...`` of a run (an
    epoch, or one step); ``params_finite`` says whether every weight after the
    last of them is finite (each backend checks its own tensors where they live).
    """
    losses = np.asarray(losses, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        k = first_step + int(bad[0])
        raise NonFiniteLoss(f"non-finite loss at step {k + 1} ({backend}, {head})", k)  # text counts from 1
    if not params_finite:
        k = first_step + len(losses) - 1
        raise NonFiniteLoss(f"non-finite weight after step {k + 1} ({backend}, {head})", k)
