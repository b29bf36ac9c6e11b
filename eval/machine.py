"""What a benchmark ran on: CPU, cores, RAM, library versions, GPU and the load when it started.

Example:
    >>> sorted(machine_info())[:3]  # doctest: +SKIP
    ['cpu', 'gpu', 'load_average_1_5_15m']
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import numpy as np
import psutil

__all__ = ["machine_info"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """What the benchmark ran on: CPU, cores, RAM, versions, GPU (``"none"`` without CUDA), and the load average.

    Importing torch to ask for CUDA costs a few seconds the first time in a process.
    """
    gpu = "none"
    try:
        import torch  # noqa: PLC0415 - lazy: torch costs seconds of start-up; only this path needs it

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        gpu = "none"
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count() or 0,
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "qdrant_edge_py": _version("qdrant-edge-py"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "gpu": gpu,
        # Other work on the machine skews every timing: the load when the benchmark started.
        "load_average_1_5_15m": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
