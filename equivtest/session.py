"""What the plugin and the CLI decide once per run: backends, devices, features.

Parsing and validation live here so that ``plugin.py`` holds hooks and fixtures
only.  Nothing here imports a framework unless a non-CPU device was asked for
(checking that a GPU is really there needs the framework).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import backends as _registry
from .devices import Device
from .devices import parse_devices as _parse_devices
from .errors import InputError

#: the suite's default features: a small surrogate, fast on 2 cores
DEFAULT_TEST_FEATURES = "synthetic:2000x128"

ENV_BACKEND = "EQUIVTEST_BACKEND"
ENV_DEVICE = "EQUIVTEST_DEVICE"
ENV_FEATURES = "EQUIVTEST_FEATURES"


def parse_devices(spec: str | None) -> list[str]:
    """``"cpu,cuda"`` -> ``["cpu", "cuda"]``: the names of :func:`equivtest.devices.parse_devices`."""
    return [str(d) for d in _parse_devices(spec)]


def framework_version(name: str) -> str:
    """The installed version of a backend's framework, read without importing it."""
    from .machine import versions

    return " / ".join(f"{dist} {v}" for dist, v in versions(name).items()) or "not installed"


@dataclass
class Selection:
    """The backends, devices and features of one pytest session or CLI run."""

    backends: list[str]
    explicit_backends: bool
    devices: list[str]
    explicit_devices: bool
    features: str
    explicit_features: bool
    missing: dict[str, str] = field(default_factory=dict)  # unnamed backends not installed -> reason
    _dataset: object = None

    @classmethod
    def from_options(cls, backend: str | None, device: str | None, features: str | None) -> Selection:
        """Validate options (or their environment variables); raise InputError on a usage error."""
        backend = backend if backend is not None else os.environ.get(ENV_BACKEND) or None
        device = device if device is not None else os.environ.get(ENV_DEVICE) or None
        features = features if features is not None else os.environ.get(ENV_FEATURES) or None
        names = _registry.parse_names(backend)
        explicit = backend is not None and str(backend).strip() not in ("", "all")
        missing = {}
        for name in names:
            ok, reason = _registry.available(name)
            if not ok:
                if explicit:
                    raise InputError(reason)
                missing[name] = reason
        sel = cls(
            backends=names, explicit_backends=explicit, devices=parse_devices(device),
            explicit_devices=device is not None, features=features or DEFAULT_TEST_FEATURES,
            explicit_features=features is not None, missing=missing,
        )
        return sel

    @property
    def installed(self) -> list[str]:
        return [n for n in self.backends if n not in self.missing]

    def check_devices(self) -> None:
        """Every explicitly asked-for accelerator must be seen by every installed backend able to use it.

        Imports the frameworks concerned (only when a non-CPU device was named).
        """
        wanted = [d for d in self.devices if Device.parse(d).is_accelerator]
        for dev in wanted:
            kind = Device.parse(dev).kind
            able = [n for n in self.installed if kind in _registry.info(n).device_kinds]
            if not able:
                raise InputError(
                    f"device '{dev}' was asked for, but none of the selected backends "
                    f"({', '.join(self.installed) or 'none'}) can use a {kind} device"
                )
            for name in able:
                be = _registry.get(name)
                be.resolve_device(dev)  # raises DeviceUnavailable (an InputError) if absent

    def device_skip_reason(self, backend: str, device: str) -> str | None:
        kind = Device.parse(device).kind
        kinds = _registry.info(backend).device_kinds
        if kind != "auto" and kind not in kinds:
            return f"backend '{backend}' cannot use a {kind} device (it runs on: {', '.join(kinds)})"
        return None

    def dataset(self):
        """The features, loaded once (bad files raise the foundation's FeatureError)."""
        if self._dataset is None:
            from .sources import load_features

            self._dataset = load_features(self.features)
        return self._dataset

    @staticmethod
    def _devices_of(name: str) -> str:
        """The devices a backend sees if it is already loaded, else what it can use (imports nothing)."""
        loaded = _registry.loaded(name)
        if loaded is not None:
            return ", ".join(loaded.devices())
        kinds = _registry.info(name).device_kinds
        return "cpu" + (f"; can use {', '.join(k for k in kinds if k != 'cpu')} (probed with --device)"
                        if len(kinds) > 1 else " only")

    def header_lines(self) -> list[str]:
        from .plan import ENV_TF32, tf32_requested

        lines = []
        parts = []
        for name in self.backends:
            if name in self.missing:
                parts.append(f"{name} (not installed: pip install 'equivtest[{_registry.info(name).extra}]')")
            else:
                parts.append(f"{name} ({framework_version(name)}; devices: {self._devices_of(name)})")
        lines.append("equivtest backends: " + ", ".join(parts))
        f32_only = [n for n in self.installed if not _registry.info(n).float64]
        dtypes = "float32, float64" + (f" ({', '.join(f32_only)}: float32 only)" if f32_only else "")
        lines.append(
            f"equivtest devices: {', '.join(self.devices)}; dtypes {dtypes}; "
            f"TF32 {'on' if tf32_requested() else 'off'} ({ENV_TF32})"
        )
        feat = self.features
        if self._dataset is not None:
            feat = self._dataset.summary()
        lines.append(f"equivtest features: {feat}")
        env = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("EQUIVTEST_"))
        if env:
            lines.append("equivtest environment: " + " ".join(env))
        return lines
