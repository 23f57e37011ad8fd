"""``Plan``: everything that decides a training run and is not a framework.

A plan draws the per-epoch batch order and the per-step dropout masks once, with
NumPy, so every backend sees the same ones; equivalence can then be checked to
float precision.  Draws are keyed by ``(seed, stream, epoch)`` with counter-free
seeding (``numpy.random.SeedSequence``), so any epoch can be drawn on its own, in
any order, bit for bit the same, and only one epoch's masks ever exist at once.

Masks come from an SFC64 generator: one random bit per unit at rate 0.5 (the
seed's), otherwise a byte (or two) compared with a threshold, so the keep
probability is exact for dropout rates that are multiples of 1/256 (0.25,
0.1015625, ...) and quantised to 1/65536 for any other rate.  Kept units
are scaled by ``1 / (1 - rate)`` (inverted dropout, as Keras and PyTorch do).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import heads as _heads
from . import rand
from .errors import InputError
from .masks import EpochMasks

DTYPES = ("float32", "float64")

#: the environment variable that turns TF32 matmuls on for GPU runs (off unless it says 1/true/yes/on)
ENV_TF32 = "EQUIVTEST_TF32"


def tf32_requested() -> bool:
    """Whether ``EQUIVTEST_TF32`` asks for TF32 matmuls (every backend reads it here)."""
    import os

    return os.environ.get(ENV_TF32, "0").strip().lower() in ("1", "true", "yes", "on")

# stream ids keep the plan's independent random draws apart
_ORDER, _MASK, _INIT = 1, 2, 3


@dataclass(frozen=True)
class Optimizer:
    """An optimizer spec every backend can build.

    ``name``: ``"sgd"`` (``momentum``, ``nesterov``), ``"adam"`` / ``"adamw"``
    (``beta_1``, ``beta_2``), ``"rmsprop"`` (``rho``), ``"adagrad"``
    (``initial_accumulator``); ``epsilon`` for the adaptive ones.  Defaults are
    Keras's (epsilon 1e-7, rho 0.9, initial accumulator 0.1).

    ``weight_decay`` with ``decay="coupled"``: L2, ``wd * w`` added to every
    gradient (PyTorch's ``weight_decay=``; in Keras an L2 regularizer of
    ``wd / 2`` on kernel and bias).  ``decay="decoupled"``: ``w -= lr * wd * w``
    before each update (AdamW; Keras's optimizer ``weight_decay=``).  ``adamw`` is
    always decoupled.  Each framework's epsilon placement is its own (see
    ``equivtest.backends.numpy``).
    """

    name: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    rho: float = 0.9
    initial_accumulator: float = 0.1
    epsilon: float = 1e-7
    weight_decay: float = 0.0
    decay: str = "coupled"

    NAMES = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
    #: the short names ``parse`` accepts, each a complete spec
    PRESETS = ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad", "adamw")
    DECAYS = ("coupled", "decoupled")

    def __post_init__(self):
        if self.name not in self.NAMES:
            raise InputError(f"optimizer name {self.name!r} is not one of {', '.join(self.NAMES)} (the presets "
                             f"{', '.join(p for p in self.PRESETS if p not in self.NAMES)} are Optimizer.parse's)")
        if not 0.0 <= self.momentum < 1.0:
            raise InputError(f"optimizer momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0.0:
            raise InputError("optimizer nesterov=True needs momentum > 0")
        if self.decay not in self.DECAYS:
            raise InputError(f"weight decay must be one of {', '.join(self.DECAYS)}, got {self.decay!r}")
        if self.name == "adamw" and self.decay != "decoupled":
            raise InputError("adamw's weight decay is decoupled by definition (decay='decoupled')")
        if not (self.weight_decay >= 0 and np.isfinite(self.weight_decay)):
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay}")

    @classmethod
    def parse(cls, spec: str | Optimizer) -> Optimizer:
        """sgd, momentum (0.9), nesterov (0.9), adam, rmsprop, adagrad, adamw (decoupled decay 0.004)."""
        if isinstance(spec, Optimizer):
            return spec
        key = str(spec).strip().lower()
        presets = {
            "sgd": dict(name="sgd"), "momentum": dict(name="sgd", momentum=0.9),
            "nesterov": dict(name="sgd", momentum=0.9, nesterov=True), "adam": dict(name="adam"),
            "rmsprop": dict(name="rmsprop"), "adagrad": dict(name="adagrad"),
            "adamw": dict(name="adamw", weight_decay=0.004, decay="decoupled"),
        }
        if key not in presets:
            raise InputError(f"unknown optimizer {spec!r}; expected one of {', '.join(cls.PRESETS)}")
        return cls(**presets[key])

    def replace(self, **changes) -> Optimizer:
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """Short name for test ids and tables: sgd, momentum, nesterov, adam, rmsprop, adagrad, adamw."""
        if self.name == "sgd":
            base = "nesterov" if self.nesterov else ("momentum" if self.momentum else "sgd")
        else:
            base = self.name
        if self.weight_decay and self.name != "adamw":
            base += f"+{'l2' if self.decay == 'coupled' else 'wd'}"
        return base

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    """Epochs, batch size, learning rate, optimizer, dropout rate, seed and dtype.

    The plan does not depend on the head or the learning rate: a softmax run and
    a sigmoid run at twice the rate share batch orders and masks when they share
    ``seed`` and ``mask_stream`` (set ``mask_stream`` apart for independent masks).
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Optimizer = field(default_factory=Optimizer)
    dropout: float = 0.5
    seed: int = 20180520
    dtype: str = "float32"
    mask_stream: int = 0
    #: targets become y (1 - e) + e / 2 for both heads (Keras's and PyTorch's definition with K = 2)
    label_smoothing: float = 0.0
    #: (w0, w1): each sample's loss weighted by its class's weight, mean over the batch size (Keras's
    #: ``class_weight`` and ``sum_over_batch_size``); None: unweighted
    class_weight: tuple[float, float] | None = None
    #: "crossentropy" or "focal": the frameworks' focal losses, (1 - p_t)^gamma weighting of -log p_t
    loss: str = "crossentropy"
    focal_gamma: float = 2.0
    #: focal alpha *as each head's shipped loss reads it*: the sigmoid head's binary focal loss
    #: balances classes (alpha for y = 1, 1 - alpha for y = 0; Keras apply_class_balancing=True,
    #: torchvision alpha >= 0); the softmax head's categorical focal loss multiplies every class
    #: by alpha (Keras CategoricalFocalCrossentropy).  None: no alpha (Keras binary's default;
    #: categorical alpha = 1).
    focal_alpha: float | None = None
    #: mixed precision: None (off) or "bfloat16": the frameworks' own autocast (torch ``autocast``,
    #: Keras's ``mixed_bfloat16`` policy) computes the head in bfloat16 on float32 weights
    autocast: str | None = None

    AUTOCASTS = (None, "bfloat16")

    def __post_init__(self):
        if isinstance(self.optimizer, str):
            object.__setattr__(self, "optimizer", Optimizer.parse(self.optimizer))
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise InputError(f"epochs must be a positive integer, got {self.epochs}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {self.batch_size}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise InputError(f"learning rate must be a positive number, got {self.lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout rate must be in [0, 1), got {self.dropout}")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InputError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.loss not in ("crossentropy", "focal"):
            raise InputError(f"loss must be 'crossentropy' or 'focal', got {self.loss!r}")
        if self.loss == "focal" and self.label_smoothing:
            raise InputError("focal loss with label smoothing is not supported")
        if not self.focal_gamma >= 0:
            raise InputError(f"focal gamma must be >= 0, got {self.focal_gamma}")
        if self.autocast not in self.AUTOCASTS:
            raise InputError(f"autocast must be None or 'bfloat16', got {self.autocast!r}")
        if self.autocast and self.dtype != "float32":
            raise InputError(f"autocast {self.autocast} needs float32 weights, got dtype {self.dtype}")
        if self.focal_alpha is not None and not 0.0 <= self.focal_alpha <= 1.0:
            raise InputError(f"focal alpha must be in [0, 1], got {self.focal_alpha}")
        if self.class_weight is not None:
            cw = tuple(float(w) for w in self.class_weight)
            if len(cw) != 2 or min(cw) < 0 or not all(np.isfinite(cw)):
                raise InputError(f"class weights must be two non-negative numbers, got {self.class_weight}")
            object.__setattr__(self, "class_weight", cw)

    def targets(self, y: np.ndarray) -> np.ndarray:
        """p(y = 1) targets after label smoothing: y (1 - e) + e / 2 (float64)."""
        e = self.label_smoothing
        return y.astype(np.float64) * (1.0 - e) + e / 2.0

    def sample_weights(self, y: np.ndarray) -> np.ndarray | None:
        """Per-sample loss weights from ``class_weight`` (None when unweighted)."""
        if self.class_weight is None:
            return None
        return np.asarray(self.class_weight, dtype=np.float64)[y]

    def focal_weights(self, head: str, y: np.ndarray) -> np.ndarray:
        """Per-sample focal alpha factor for ``head`` (see ``focal_alpha``)."""
        a = self.focal_alpha
        if a is None:
            return np.ones(len(y))
        if head == "sigmoid":
            return np.where(y == 1, a, 1.0 - a)
        return np.full(len(y), a, dtype=np.float64)
    # -- derived ------------------------------------------------------------------
    def replace(self, **changes) -> Plan:
        return dataclasses.replace(self, **changes)

    @property
    def native_seed(self) -> int:
        """The seed a framework's own RNG gets for ``masks="native"`` (its own Dropout layer).

        ``seed`` and ``mask_stream`` folded into one non-negative int32 (every Keras
        backend wants one): ``(seed * 1_000_003 + mask_stream) mod (2**31 - 1)``.
        1_000_003 is a prime above any mask stream in use, so different streams of
        one seed get different seeds.  The NumPy oracle, which has no Dropout layer
        of its own, draws its "native" masks from the plan's stream ``native_seed``.
        """
        return (self.seed * 1_000_003 + self.mask_stream) % (2**31 - 1)

    @property
    def mask_scale(self) -> float:
        """Inverted dropout: kept units are multiplied by 1 / (1 - rate)."""
        return 1.0 / (1.0 - self.dropout)

    def steps_per_epoch(self, n: int) -> int:
        """ceil(n / batch_size): a last partial batch is kept, as Keras does."""
        return -(-int(n) // self.batch_size)

    def batch_bounds(self, n: int) -> list[tuple[int, int]]:
        """(start, stop) of each step's rows within an epoch's order."""
        bs = self.batch_size
        return [(s, min(s + bs, n)) for s in range(0, n, bs)]

    # -- draws --------------------------------------------------------------------
    def _stream(self, stream: int, *key: int) -> np.random.PCG64:
        return rand.generator(self.seed, stream, *key)

    def batch_order(self, epoch: int, n: int) -> np.ndarray:
        """The permutation of the n training rows used in ``epoch`` (0-based), the same bits everywhere."""
        self._check_epoch(epoch)
        return rand.permutation(self._stream(_ORDER, epoch), n)

    def epoch_masks(self, epoch: int, n: int, d: int, layer: int = 0) -> np.ndarray | None:
        """Keep-masks (n, d) bool for ``epoch``, row k for the k-th sample in its order.

        ``None`` when the plan has no dropout.  Step s uses rows
        ``batch_bounds(n)[s]``.  About n*d bytes; only one epoch is drawn at a time.
        ``masks_for(epoch, n, d).rows(s, t)`` gives the same rows without
        unpacking the whole epoch.
        """
        stream = self.masks_for(epoch, n, d, layer)
        return None if stream is None else stream.rows(0, int(n))

    def masks_for(self, epoch: int, n: int, d: int, layer: int = 0) -> EpochMasks | None:
        """The epoch's masks as raw random bits, unpacked by row range (``None`` without dropout).

        ``layer`` numbers a network's Dropout layers (0: the first, the head's in the seed's
        network); each has its own stream, so every framework sees the same masks in every layer.
        """
        self._check_epoch(epoch)
        if self.dropout == 0.0:
            return None
        key = [self.seed, _MASK, self.mask_stream, epoch] + ([layer] if layer else [])
        g = np.random.SFC64(np.random.SeedSequence(key))
        return EpochMasks(g, int(n), int(d), 1.0 - self.dropout)

    def body_weights(self, network, stream: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """Glorot-uniform (kernel, bias) for each body layer of ``network`` (canonical layout, float64).

        Drawn from the seed, one stream per layer, so both heads' networks and every
        framework start from the same body; ``stream`` separates an independent body
        (a whole network from its own random init).
        """
        from .networks import glorot_uniform

        base = 100 + 1000 * int(stream)
        return [glorot_uniform(layer, self._stream(_INIT, base + i)) for i, layer in enumerate(network.layers)]

    def initial_weights(self, head: str, d: int, stream: int = 0) -> _heads.Weights:
        """Keras-style Glorot-uniform initial weights for ``head``, drawn from the seed.

        ``stream`` separates independent draws (e.g. a sigmoid's own random init).
        """
        bg = self._stream(_INIT, _heads.UNITS[_heads.check_head(head)], stream)
        return _heads.glorot_uniform(head, d, bg, dtype=np.float64)

    def _check_epoch(self, epoch: int) -> None:
        if not 0 <= epoch < self.epochs:
            raise IndexError(f"epoch {epoch} outside the plan's 0..{self.epochs - 1}")

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optimizer"] = self.optimizer.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        d = dict(d)
        d["optimizer"] = Optimizer(**d["optimizer"])
        if d.get("class_weight") is not None:
            d["class_weight"] = tuple(d["class_weight"])
        return cls(**d)
