"""The soak test (``tandem bench soak``, ``make soak``): mixed traffic for many minutes, memory and latency over time.

Modules: :mod:`~eval.soak.traffic` (the request mix and what counts as right),
:mod:`~eval.soak.monitor` (RSS and file descriptors of the process tree), :mod:`~eval.soak.run`
(the stack, capacity, the open-loop soak) and :mod:`~eval.soak.report` (figures, targets, plot).
"""

from eval.soak.report import summarise, write_report
from eval.soak.run import SoakConfig, run_soak

__all__ = ["SoakConfig", "run_soak", "summarise", "write_report"]
