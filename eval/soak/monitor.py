"""Resident memory and open file descriptors of a process tree, sampled in a thread while the soak runs.

Example:
    >>> with ProcessMonitor([service.pid], every_s=5.0) as monitor:  # doctest: +SKIP
    ...     run_traffic()
    >>> monitor.samples[-1].rss_mb  # doctest: +SKIP
    {'api': 812.4, 'worker': 640.1}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

import psutil

__all__ = ["ProcessMonitor", "TreeSample"]


@dataclass(frozen=True)
class TreeSample:
    """One sample: seconds since the monitor started, and per named process its RSS (MB) and open fds."""

    t_s: float
    rss_mb: dict[str, float] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)

    @property
    def total_rss_mb(self) -> float:
        return sum(self.rss_mb.values())


def _name(proc: psutil.Process, roots: Mapping[int, str]) -> str:
    if proc.pid in roots:
        return roots[proc.pid]
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return f"pid {proc.pid}"
    # The embedded LLM worker is `tandem worker …` (python -m api.cli.main worker): name it so a plot reads.
    return "llm worker" if " worker " in f"{cmd} " else f"child {proc.pid}"


def sample_tree(roots: Mapping[int, str], t_s: float) -> TreeSample:
    """RSS and fds of every root process and its descendants (gone processes are left out)."""
    rss: dict[str, float] = {}
    fds: dict[str, int] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            try:
                name = _name(p, roots)
                rss[name] = rss.get(name, 0.0) + p.memory_info().rss / 2**20
                fds[name] = fds.get(name, 0) + p.num_fds()
            except psutil.Error:
                continue
    return TreeSample(round(t_s, 1), {k: round(v, 1) for k, v in rss.items()}, fds)


class ProcessMonitor:
    """Samples :func:`sample_tree` every ``every_s`` seconds until it is closed."""

    def __init__(
        self, roots: Mapping[int, str], *, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.roots = dict(roots)
        self.every_s = every_s
        self.clock = clock
        self.samples: list[TreeSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-monitor", daemon=True)
        self._t0 = clock()

    def _run(self) -> None:
        while True:
            self.samples.append(sample_tree(self.roots, self.clock() - self._t0))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> ProcessMonitor:
        self._t0 = self.clock()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
