"""Shared terminal output for the CLI: stdout/stderr consoles and the progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["CliError", "err", "out", "progress_bar", "report_issues", "shown_path", "staged_progress"]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A user-facing error of the CLI itself (bad option combination)."""


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )


def report_issues(label: str, issues: Sequence[object], *, limit: int = 20) -> None:
    """One stderr line per issue (the first ``limit``), then how many more there were."""
    for issue in issues[:limit]:
        err.print(f"{label}: {issue}", markup=False, highlight=False)
    if len(issues) > limit:
        err.print(f"... and {len(issues) - limit} more ({label})", markup=False, highlight=False)


@contextmanager
def staged_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, completed, total)`` callback drawing one bar per stage."""
    with progress_bar() as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, completed: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=completed, total=total)

        yield update


def shown_path(path: Path) -> str:
    """``path`` as a report shows it: relative to the working directory when inside it, so no machine path leaks.

    Example:
        >>> shown_path(Path.cwd() / "artifacts" / "tandem-ranker")
        'artifacts/tandem-ranker'
    """
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
