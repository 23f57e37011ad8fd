"""A device name, parsed once: its kind, its index, and each framework's spelling.

Names as the plugin and the command take them: ``cpu``, ``cuda`` / ``cuda:N``
(``gpu`` is read as ``cuda``), ``mps``, ``auto`` (the first accelerator a backend
sees, else the CPU).  Every other module asks a :class:`Device` instead of
splitting strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

KINDS = ("cpu", "cuda", "mps", "auto")
#: the kinds that are accelerators (asking for one that is absent is a usage error, never a skip)
ACCELERATORS = ("cuda", "mps")


@dataclass(frozen=True)
class Device:
    kind: str
    index: int | None = None

    @classmethod
    def parse(cls, spec) -> Device:
        """``"cuda:1"`` -> Device("cuda", 1); an unknown name is an :class:`InputError` listing the valid ones."""
        if isinstance(spec, Device):
            return spec
        raw = str(spec if spec is not None else "cpu").strip()
        name = raw.lower() or "cpu"
        kind, _, idx = name.partition(":")
        kind = "cuda" if kind == "gpu" else kind
        if kind not in KINDS or (idx and (kind != "cuda" or not idx.isdigit())):
            raise InputError(f"unknown device {raw!r}; valid names: {', '.join(KINDS)} (or cuda:N)")
        return cls(kind, int(idx) if idx else None)

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def is_accelerator(self) -> bool:
        return self.kind in ACCELERATORS

    @property
    def canonical(self) -> str:
        """The name a backend reports and resolves to: ``cuda`` means ``cuda:0``."""
        return "cuda:0" if self.kind == "cuda" and self.index is None else str(self)

    @property
    def tensorflow(self) -> str:
        """TensorFlow's spelling: ``/CPU:0`` or ``/GPU:N``."""
        return "/CPU:0" if self.kind == "cpu" else f"/GPU:{self.index or 0}"


def parse_devices(spec) -> list[Device]:
    """``"cpu,cuda"`` -> [Device("cpu"), Device("cuda")], without repeats; nothing given: the CPU."""
    out: list[Device] = []
    for part in str(spec or "").split(","):
        if part.strip():
            dev = Device.parse(part)
            if dev not in out:
                out.append(dev)
    return out or [Device("cpu")]
