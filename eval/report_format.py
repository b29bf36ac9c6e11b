"""Shared pieces of the markdown reports in ``eval/reports/``: numbers, tables, verdicts, the machine line.

Every report formats a missing figure as ``–``, builds its tables with :func:`table` and marks
each target with :func:`verdict`, so the reports read alike and a change of style is made once.

Example:
    >>> machine_line({"cpu": "Xeon", "logical_cores": 2, "ram_gb": 23.5, "gpu": "none"})
    'Machine: Xeon, 2 cores, 23.5 GB RAM, GPU: none.'
    >>> fmt(1234.5), fmt(1200.0, whole=True), fmt(None), fmt(3), fmt(True)
    ('1,234.5', '1,200', '–', '3', 'yes')
    >>> table(["a", "b"], [["x", 1.25]], "lr")
    ['| a | b |', '| --- | ---: |', '| x | 1.2 |', '']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eval.machine import machine_info

__all__ = ["fmt", "machine_line", "table", "verdict"]


def fmt(value: Any, digits: int = 1, *, whole: bool = False) -> str:
    """A figure for a report: ``–`` when missing, yes/no, thousands separators, ``digits`` decimals for a float.

    ``whole``: a float that is a whole number of at least 1,000 loses its decimals (``1,200``, not
    ``1,200.0``), for columns where such a figure is a count.
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if whole and value.is_integer() and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    return str(value)


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    align: str = "",
    *,
    cell: Callable[[Any], str] = fmt,
    blank: bool = True,
    tight_rule: bool = False,
) -> list[str]:
    """A markdown table as lines: ``align`` has one letter per column (``r`` right, anything else left).

    ``cell`` formats each cell (:func:`fmt` by default); ``blank`` ends the table with an empty
    line; ``tight_rule`` writes the rule as ``|---|---|`` rather than ``| --- | --- |``.
    """
    marks = [("---:" if (align[i : i + 1] or "l") == "r" else "---") for i in range(len(header))]
    rule = "|" + "|".join(marks) + "|" if tight_rule else "| " + " | ".join(marks) + " |"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""] if blank else lines


def verdict(passed: bool | None, *, bold: bool = True) -> str:
    """A target's result: ``PASS``, ``MISS`` (bold by default) or ``n/a`` when it could not be measured."""
    if passed is None:
        return "n/a"
    word = "PASS" if passed else "MISS"
    return f"**{word}**" if bold else word


def machine_line(machine: Mapping[str, Any] | None = None) -> str:
    """One line that says what a report's figures were measured on (read from this machine by default)."""
    if machine is None:
        machine = machine_info()
    return (f"Machine: {machine.get('cpu', '?')}, {machine.get('logical_cores', '?')} cores, "
            f"{machine.get('ram_gb', '?')} GB RAM, GPU: {machine.get('gpu') or 'none'}.")  # fmt: skip
