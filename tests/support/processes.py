"""Real ``tandem`` processes for crash tests: an isolated environment, and ``kill -9`` at a chosen point.

The point is observed, not planted: :func:`kill_at_progress` reads the progress bar the command
draws for a user (rich draws it into a pipe when ``TTY_COMPATIBLE``/``TTY_INTERACTIVE`` are set) and
sends SIGKILL once it shows ``at`` products done, so no test-only hook lives in the product code.

Example:
    >>> env = tandem_env(home, image_checkpoint=tower)  # doctest: +SKIP
    >>> index = tandem_command("index", "--limit", "96")
    >>> run = kill_at_progress(index, env, at=40, total=96, log=log)  # doctest: +SKIP
    >>> run.killed  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["KilledRun", "kill_at_progress", "plain", "report_figure", "tandem_command", "tandem_env"]

REPO = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


def report_figure(request: pytest.FixtureRequest, name: str, value: object) -> None:
    """Put a measured figure in the test's report (``user_properties``, what ``record_property`` fills) and print it.

    Not ``record_property`` itself: with ``--junitxml`` (xunit2) it warns, and warnings are errors here.
    """
    request.node.user_properties.append((name, value))
    print(f"{request.node.name}: {name} = {value}")


def tandem_command(*args: str) -> list[str]:
    """The ``tandem`` CLI as a fresh interpreter runs it (the console script is this module's entry point)."""
    return [sys.executable, "-m", "api.cli.main", *args]


def tandem_env(home: Path, *, image_checkpoint: Path, **settings: str) -> dict[str, str]:
    """This process's environment without its ``TANDEM_*`` settings, pointed at ``home``, offline.

    ``settings`` are more ``TANDEM_*`` variables without the prefix (``API__KEYS="k"``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update(
        {
            "TANDEM_HOME": str(home),
            "TANDEM_ENCODERS__IMAGE_CHECKPOINT": str(image_checkpoint),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"TANDEM_{k}": v for k, v in settings.items()})
    return env


@dataclass(frozen=True, slots=True)
class KilledRun:
    """How a run ended: killed at ``seen`` products done, or finished by itself first (``killed`` False)."""

    killed: bool
    seen: int
    returncode: int
    output: str


def kill_at_progress(
    argv: Sequence[str], env: Mapping[str, str], *, at: int, total: int, log: Path, guard_s: float = 300.0
) -> KilledRun:
    """Run ``argv`` and SIGKILL it as soon as its progress bar shows at least ``at`` of ``total`` done.

    ``guard_s`` only stops a hung process from stalling the suite; it is not a measurement.
    """
    draw = {**env, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "160"}
    proc = subprocess.Popen(
        list(argv), cwd=REPO, env=draw, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    progress = re.compile(rf"(\d+)/{total}\b")
    chunks: list[bytes] = []
    tail = ""  # the newest frames: the bar is redrawn in place, so the last count shown is near the end
    seen, killed = -1, False
    deadline = time.monotonic() + guard_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{argv} hung: {plain(b''.join(chunks).decode(errors='replace'))[-2000:]}")
            if not sel.select(timeout=1.0):
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break  # it exited before reaching the point
            chunks.append(data)
            tail = (tail + data.decode(errors="replace"))[-4096:]
            seen = max([seen, *(int(n) for n in progress.findall(plain(tail)))])
            if seen >= at:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        proc.wait()
        rest = proc.stdout.read()
        proc.stdout.close()
    output = plain(b"".join([*chunks, rest]).decode(errors="replace"))
    log.write_text(output, encoding="utf-8")
    return KilledRun(killed=killed and proc.returncode == -signal.SIGKILL, seen=seen, returncode=proc.returncode,
                     output=output)  # fmt: skip
