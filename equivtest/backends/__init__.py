"""The backend registry: lazy import, availability with a reason.

Nothing here imports a framework.  ``available(name)`` looks for the framework's
distribution with ``importlib.util.find_spec``; ``get(name)`` imports
``equivtest.backends.<module>`` only when asked.  Before TensorFlow loads in a
process, :func:`before_tensorflow` loads what must come first (torch, Triton).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from ..errors import BackendUnavailable, InputError


@dataclass(frozen=True)
class BackendInfo:
    """What a backend is and can do, declared once and read without importing its framework.

    The registry, the report header, the plugin's skips and the backend
    instances (``BaseBackend.supports_float64``, ``epsilon_convention``) all
    read this declaration.
    """

    name: str
    module: str
    requires: tuple[str, ...]  # top-level modules that must be importable
    extra: str | None  # the pip extra that installs them
    framework: str
    device_kinds: tuple[str, ...] = ("cpu",)  # which kinds of device it can ever use
    float64: bool = True  # trains at float64 precision when the plan says so
    #: where Adam's epsilon enters: "torch" (after bias correction) or "keras" (before)
    epsilon_convention: str = "torch"
    #: the distributions whose versions make its numbers (report header, baselines' .meta.json)
    distributions: tuple[str, ...] = ()
    #: runs in a worker process of its own (Keras fixes its backend once per process)
    worker_process: bool = False
    #: mixed-precision modes it offers (``Plan.autocast``); the NumPy oracle has none
    autocasts: tuple[str, ...] = ("bfloat16",)
    #: the framework's own data-parallel engine (:mod:`equivtest.parallel`), or None
    data_parallel: str | None = None
    #: plan options it does not offer, each with the reason: option -> reason (see :func:`refusal`)
    refuses: tuple[tuple[str, str], ...] = ()
    #: the same for its data-parallel engine (N > 1 workers)
    refuses_parallel: tuple[tuple[str, str], ...] = ()
    #: the same for whole networks (a body before the head)
    refuses_network: tuple[tuple[str, str], ...] = ()

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def unavailable_reason(self) -> str | None:
        miss = self.missing()
        if not miss:
            return None
        return (
            f"backend '{self.name}' needs {', '.join(miss)}, which is not installed: "
            f"pip install 'equivtest[{self.extra}]'"
        )


#: in the order runs and reports list them; what must load before TensorFlow: :func:`before_tensorflow`
REGISTRY: dict[str, BackendInfo] = {
    "numpy": BackendInfo("numpy", "equivtest.backends.numpy", ("numpy",), None, "numpy", ("cpu",),
                         distributions=("numpy",), autocasts=()),
    "torch": BackendInfo("torch", "equivtest.backends.torch", ("torch",), "torch", "torch", ("cpu", "cuda", "mps"),
                         distributions=("torch",), data_parallel="DistributedDataParallel (gloo)",
                         refuses=(("decoupled decay without AdamW",
                                   "torch.optim offers decoupled weight decay in AdamW only"),)),
    "keras": BackendInfo("keras", "equivtest.backends.keras.tensorflow", ("tensorflow", "keras"), "tensorflow", "tensorflow",
                         ("cpu", "cuda"), epsilon_convention="keras",
                         distributions=("keras", "tensorflow", "tensorflow-cpu"),
                         data_parallel="tf.distribute.MirroredStrategy"),
    # Keras 3 on other frameworks, each in a worker process of its own (opt-in: name them); fed float64
    # they train at float32 precision, so they do not claim it
    "keras-torch": BackendInfo("keras-torch", "equivtest.backends.keras.worker", ("keras", "torch"), "keras-torch",
                               "keras", float64=False, epsilon_convention="keras",
                               distributions=("keras", "torch"), worker_process=True),
    "keras-jax": BackendInfo("keras-jax", "equivtest.backends.keras.worker", ("keras", "jax"), "keras-jax",
                             "keras", float64=False, epsilon_convention="keras",
                             distributions=("keras", "jax", "jaxlib"), worker_process=True,
                             data_parallel="keras.distribution.DataParallel"),
}
NAMES = tuple(REGISTRY)
#: what "every installed backend" means when none is named; the process-isolated Keras ones are opt-in
DEFAULT_NAMES = ("numpy", "torch", "keras")

_loaded: dict = {}


def loaded(name: str):
    """The backend instance for ``name`` if this process already made one, else None (imports nothing)."""
    return _loaded.get(name)


def parse_names(spec: str | None) -> list[str]:
    """``"torch,keras"`` -> ``["torch", "keras"]`` in registry order; unknown names fail.

    Nothing named: numpy, torch, keras; ``"all"``: every registered backend.
    """
    if spec is None or not str(spec).strip():
        return list(DEFAULT_NAMES)
    if str(spec).strip() == "all":
        return list(NAMES)
    names = [s.strip().lower() for s in str(spec).split(",") if s.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise InputError(f"unknown backend {unknown[0]!r}; valid names: {', '.join(NAMES)}")
    return [n for n in NAMES if n in names]


def info(name: str) -> BackendInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; valid names: {', '.join(NAMES)}") from None


def available(name: str) -> tuple[bool, str | None]:
    """(True, None) or (False, reason naming the extra to install); imports nothing."""
    reason = info(name).unavailable_reason()
    return reason is None, reason


def plan_options(plan) -> list[str]:
    """The options of ``plan`` a backend may decline, named as the registry's ``refuses`` names them."""
    opt = plan.optimizer
    out = []
    if opt.weight_decay and opt.decay == "decoupled" and opt.name != "adamw":
        out.append("decoupled decay without AdamW")
    if plan.class_weight is not None:
        out.append("class weights")
    if plan.autocast:
        out.append("autocast")
    if plan.dtype == "float64":
        out.append("float64")
    return out


def refusal(name: str, plan, *, world_size: int = 1, network: bool = False) -> str | None:
    """One line naming the backend, the option and the reason, where the registry declares that ``name``
    does not offer an option ``plan`` uses (on ``world_size`` workers, for a whole network when ``network``);
    None where it is declared offered.

    This is the one place a test may turn into a skip: any other ``NotImplementedError`` is a failure."""
    bi = info(name)
    declared = dict(bi.refuses)
    if world_size > 1:
        declared.update(bi.refuses_parallel)
    if network:
        declared.update(bi.refuses_network)
    if not bi.float64:
        declared["float64"] = "it trains at float32 precision"
    if plan.autocast and plan.autocast not in bi.autocasts:
        declared.setdefault("autocast", f"it has no {plan.autocast} autocast")
    for option in plan_options(plan):
        if option in declared:
            where = f" on {world_size} workers" if world_size > 1 and option in dict(bi.refuses_parallel) else ""
            where += " for whole networks" if network and option in dict(bi.refuses_network) else ""
            return f"backend '{name}' does not offer {option}{where}: {declared[option]}"
    return None


def device_for(name: str, device: str) -> str:
    """``device`` if backend ``name`` can ever use its kind, else ``"cpu"`` (e.g. numpy with cuda)."""
    from ..devices import Device

    kind = Device.parse(device).kind
    return device if kind == "auto" or kind in info(name).device_kinds else "cpu"


def before_tensorflow() -> None:
    """Import, where installed, what must be loaded before TensorFlow in one process.

    * torch: TensorFlow first can break torch's OpenMP and protobuf set-up on some builds;
    * Triton (installed with CUDA builds of torch): its LLVM loaded after TensorFlow's crashes the
      process (a segmentation fault), and torch loads it lazily, on the first optimizer
      (``torch.optim`` imports ``torch._dynamo``), which can come after TensorFlow.

    Call it before anything that imports ``tensorflow`` or ``keras``; it imports nothing else, and a
    Triton that fails to import is left out, as torch leaves it out.
    """
    if REGISTRY["torch"].unavailable_reason() is None:
        importlib.import_module("torch")
    if importlib.util.find_spec("triton") is not None:
        try:
            importlib.import_module("triton")
        except ImportError:  # a Triton that does not load is one torch does without (as torch itself does)
            pass


def get(name: str):
    """The backend instance for ``name``, importing its framework on first use."""
    if name in _loaded:
        return _loaded[name]
    bi = info(name)
    reason = bi.unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)
    if bi.framework == "tensorflow":
        before_tensorflow()
    mod = importlib.import_module(bi.module)
    _loaded[name] = mod.Backend(name) if bi.worker_process else mod.Backend()
    return _loaded[name]


def load(names) -> list:
    """Instances for ``names``, imported in registry order (torch before keras)."""
    wanted = set(names)
    return [get(n) for n in NAMES if n in wanted]
