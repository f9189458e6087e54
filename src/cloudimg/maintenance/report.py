"""Helpers shared by the maintenance commands: opening the catalog, durations, progress."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from cloudimg.blobstore import FilesystemBlobStore
from cloudimg.catalog import Catalog, create_engine, upgrade_database
from cloudimg.config import Settings

__all__ = ["Progress", "ProgressMeter", "open_catalog", "parse_duration"]

Progress = Callable[[int, int], None]
"""Called now and then with (work done, total work), in bytes."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds, or a number with ``s``, ``m``, ``h`` or ``d``.

    Raises:
        ValueError: when ``text`` is not such a duration.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (seconds, or e.g. 30s, 10m, 2h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@asynccontextmanager
async def open_catalog(settings: Settings) -> AsyncIterator[Catalog]:
    """The catalog and blob store of ``settings``, with the schema migrated (as serve does)."""
    settings.data_root.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade_database, settings.resolved_database_url)
    blobs = FilesystemBlobStore(settings.data_root)
    blobs.ensure_layout()
    engine = create_engine(settings.resolved_database_url)
    try:
        yield Catalog(engine, blobs)
    finally:
        await engine.dispose()


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
