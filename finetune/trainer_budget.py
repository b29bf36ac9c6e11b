"""A transformers ``TrainerCallback`` that stops at a wall-time budget, reports progress and keeps the losses.

Example:
    >>> budget = TimeBudget(budget_s=600, total_steps=1000, progress=lambda stage, done, total: None)
    >>> Trainer(..., callbacks=[budget])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

__all__ = ["TimeBudget"]


class TimeBudget(TrainerCallback):
    """Stops training once ``budget_s`` seconds have passed (None: never); ``losses`` holds (step, loss) as logged."""

    def __init__(
        self,
        budget_s: float | None,
        total_steps: int,
        progress: Callable[[str, int, int], None],
        stage: str = "training",
    ) -> None:
        self.budget_s = budget_s
        self.total_steps = total_steps
        self.progress = progress
        self.stage = stage
        self.start = time.perf_counter()
        self.losses: list[tuple[int, float]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.start = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append((int(state.global_step), float(logs["loss"])))

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self.progress(self.stage, int(state.global_step), self.total_steps)
        if self.budget_s is not None and time.perf_counter() - self.start > self.budget_s:
            control.should_training_stop = True
            control.should_save = True  # a checkpoint where it stopped: the same command resumes from here
        return control

    @property
    def first_loss(self) -> float | None:
        return self.losses[0][1] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None
