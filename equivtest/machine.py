"""What a figure was measured on: framework versions, CPU, BLAS and thread counts (imports no framework)."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def versions(backend: str) -> dict[str, str]:
    """Installed versions of the distributions behind ``backend`` (as its registry entry declares them),
    read without importing them."""
    from .backends import REGISTRY

    out = {}
    dists = REGISTRY[backend].distributions if backend in REGISTRY else (backend,)
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas() -> list[str]:
    """NumPy's BLAS as threadpoolctl sees it (library, kernel set, threads), when threadpoolctl is there."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return []
    return [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}"
            for i in threadpool_info() if i.get("user_api") == "blas"]


def machine_info(backends=()) -> dict:
    """The machine and software that produce a figure, for baselines and reports."""
    vers = versions("numpy")
    for b in backends:
        vers.update(versions(b))
    return {
        "versions": vers, "python": platform.python_version(), "machine": platform.machine(),
        "cpu": cpu_model(), "cores": os.cpu_count(), "blas": blas(),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "NPY_DISABLE_CPU_FEATURES", "ATEN_CPU_CAPABILITY")},
    }
