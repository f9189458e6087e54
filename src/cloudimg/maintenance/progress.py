"""Progress of the long maintenance commands (fsck checksums, import): bytes done of total."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Progress", "ProgressMeter"]

Progress = Callable[[int, int], None]
"""Called now and then with (work done, total work), in bytes."""


@dataclass
class ProgressMeter:
    """Counts bytes from worker threads; reports to ``callback`` every ``interval`` seconds."""

    callback: Progress | None
    total: int
    interval: float = 2.0
    done: int = 0
    _last: float = field(default_factory=time.monotonic)

    def add(self, count: int) -> None:
        """Count ``count`` more bytes done (callable from any thread)."""
        self.done += count
        now = time.monotonic()
        if self.callback is not None and now - self._last >= self.interval:
            self._last = now
            self.callback(self.done, self.total)

    def finish(self) -> None:
        """Report the final figure."""
        if self.callback is not None:
            self.callback(self.done, self.total)
