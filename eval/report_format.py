"""Shared pieces of the markdown reports in ``eval/reports/``.

Example:
    >>> machine_line({"cpu": "Xeon", "logical_cores": 2, "ram_gb": 23.5, "gpu": "none"})
    'Machine: Xeon, 2 cores, 23.5 GB RAM, GPU: none.'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["machine_line"]


def machine_line(machine: Mapping[str, Any] | None = None) -> str:
    """One line that says what a report's figures were measured on (read from this machine by default)."""
    if machine is None:
        from eval.bench_retrieval import machine_info

        machine = machine_info()
    return (f"Machine: {machine.get('cpu', '?')}, {machine.get('logical_cores', '?')} cores, "
            f"{machine.get('ram_gb', '?')} GB RAM, GPU: {machine.get('gpu') or 'none'}.")  # fmt: skip
