"""Progress of long work (maintenance, transfers): work done of total, per named task.

The maintenance functions and the client count; how progress is shown (a bar on a terminal, plain
lines in a CronJob's log, nothing) is the caller's business (``cloudimg.cli.progress``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["Progress", "ProgressMeter", "Unit"]

Unit = Literal["bytes", "items"]
"""What a task counts: bytes read or written, or things (files, blobs, tags) handled."""


class Progress(Protocol):
    """Told now and then how far ``task`` is: ``done`` of ``total`` ``unit``."""

    def __call__(self, task: str, done: int, total: int, unit: Unit) -> None: ...


@dataclass
class ProgressMeter:
    """Counts work from worker threads and reports it at most every ``interval`` seconds.

    The interval only keeps the callback's cost off hot loops (a hash loop calls ``add``
    per 4 MiB); how often a person sees a figure is the display's choice.
    """

    callback: Progress | None
    total: int
    task: str
    unit: Unit = "bytes"
    interval: float = 0.1
    done: int = 0
    _last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.callback is not None:
            self.callback(self.task, 0, self.total, self.unit)  # the task shows from the start

    def add(self, count: int = 1) -> None:
        """Count ``count`` more done (callable from any thread)."""
        self.done += count
        now = time.monotonic()
        if self.callback is not None and now - self._last >= self.interval:
            self._last = now
            self.callback(self.task, self.done, self.total, self.unit)

    def finish(self) -> None:
        """Report the final figure."""
        if self.callback is not None:
            self.callback(self.task, self.done, self.total, self.unit)
