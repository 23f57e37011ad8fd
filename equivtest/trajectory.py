"""``Trajectory``: what one training run produced, in a framework-free form.

Per step: the training loss of that step's batch (before the update, with that
step's dropout mask).  Per epoch: training loss as Keras reports it (mean of the
epoch's batch losses weighted by batch size), training accuracy over the epoch's
batches (with dropout, before each update, as Keras counts it), and ``val_loss``
and ``val_accuracy`` evaluated after the epoch without dropout.  Final weights
in canonical layout.  Saved as ``.npz`` (arrays + JSON metadata) or ``.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .heads import Weights

ARRAYS = ("step_loss", "epoch_loss", "epoch_accuracy", "val_loss", "val_accuracy")


def epoch_figures(step_loss, step_correct, batch_sizes, steps_per_epoch: int):
    """(epoch_loss, epoch_accuracy): batch losses weighted by batch size (as Keras reports), correct / seen."""
    sl = np.asarray(step_loss, dtype=np.float64).reshape(-1, steps_per_epoch)
    bs = np.asarray(batch_sizes, dtype=np.float64).reshape(-1, steps_per_epoch)
    cr = np.asarray(step_correct, dtype=np.float64).reshape(-1, steps_per_epoch)
    return (sl * bs).sum(axis=1) / bs.sum(axis=1), cr.sum(axis=1) / bs.sum(axis=1)


@dataclass(eq=False)
class Trajectory:
    step_loss: np.ndarray
    epoch_loss: np.ndarray
    epoch_accuracy: np.ndarray
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    weights: Weights
    meta: dict = field(default_factory=dict)
    #: optional (steps, d + 1): after each step, the parameters in sigmoid coordinates
    #: (beta = w1 - w0 and c = b1 - b0 for a softmax head), so two heads compare directly
    history: np.ndarray | None = None
    #: a whole network's body weights after training, [(kernel, bias), ...] canonical (None: head only)
    body: list | None = None

    def __post_init__(self):
        for name in ARRAYS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if self.history is not None:
            self.history = np.asarray(self.history, dtype=np.float64)

    @property
    def label(self) -> str:
        m = self.meta
        parts = [m.get("backend"), m.get("head"), m.get("device"), m.get("optimizer")]
        lr = m.get("lr")
        s = "-".join(str(p) for p in parts if p)
        return f"{s}@{lr:g}" if lr is not None else (s or "trajectory")

    @property
    def epochs(self) -> int:
        return len(self.epoch_loss)

    @classmethod
    def from_steps(cls, step_loss, step_correct, batch_sizes, steps_per_epoch, val_loss, val_accuracy,
                   weights: Weights, meta: dict, history=None) -> Trajectory:
        """Build per-epoch figures from per-step ones (one definition for every backend)."""
        epoch_loss, epoch_acc = epoch_figures(step_loss, step_correct, batch_sizes, steps_per_epoch)
        return cls(step_loss, epoch_loss, epoch_acc, val_loss, val_accuracy, weights, meta, history)

    def logs(self, epoch: int) -> dict:
        """One epoch's Keras-style figures, as an epoch callback receives them."""
        return {"loss": float(self.epoch_loss[epoch]), "accuracy": float(self.epoch_accuracy[epoch]),
                "val_loss": float(self.val_loss[epoch]), "val_accuracy": float(self.val_accuracy[epoch])}

    # -- serialisation -----------------------------------------------------------
    def to_dict(self, weights: bool = True) -> dict:
        d = {name: getattr(self, name).tolist() for name in ARRAYS}
        d["meta"] = self.meta
        if weights:
            d["weights"] = self.weights.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Trajectory:
        return cls(*(d[name] for name in ARRAYS), weights=Weights.from_dict(d["weights"]), meta=d.get("meta", {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``.npz`` (exact arrays) or ``.json`` (by the suffix)."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=1))
        else:
            extra = {} if self.history is None else {"history": self.history}
            np.savez(path, **{n: getattr(self, n) for n in ARRAYS}, kernel=self.weights.kernel,
                     bias=self.weights.bias, meta=np.asarray(json.dumps(self.meta)), **extra)
            if path.suffix != ".npz":
                path = path.with_name(path.name + ".npz")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trajectory:
        path = Path(path)
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        with np.load(path, allow_pickle=False) as z:
            return cls(*(z[n] for n in ARRAYS), weights=Weights(z["kernel"], z["bias"]),
                       meta=json.loads(str(z["meta"])), history=z["history"] if "history" in z else None)
