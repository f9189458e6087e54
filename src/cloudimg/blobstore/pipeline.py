"""The staging writer's pipeline: each stage of an upload's work on a thread of its own.

The event loop hands over batches of an upload's bytes; every stage (the file write,
blake3, sha256, the inspector's tap) takes each batch in order on its own thread, so
on a node with many cores the upload runs at the speed of its slowest stage instead of
the sum of all of them (sha256, ~2 GB/s on one core, is the slowest). At most
``depth`` batches are in flight: ``put`` waits (without blocking the event loop) for
the slowest stage, so memory stays flat whatever the upload's size.

Each stage counts the CPU time of its own thread (``time.thread_time``) and the bytes
it took; at ``close`` they go to a :data:`StageCosts` sink (the server's
``/metrics``), from which the ceiling of the upload on a node with more cores follows
by arithmetic: bytes per second of a stage = bytes / CPU seconds.

The first error of a stage fails the pipeline: the other stages skip the batches
still queued, and ``put`` or ``close`` raise it on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Pipeline", "StageCosts", "Work"]

StageCosts = Callable[[str, float, int], None]
"""Told, for one stage, the CPU seconds its thread spent and the bytes it took."""

Work = Callable[[Sequence[bytes]], None]
"""What a stage does with one batch (its pieces, in order), on its own thread."""


@dataclass(slots=True)
class _Batch:
    pieces: Sequence[bytes]
    size: int
    left: int
    """Stages that have not finished with it yet."""


class _Stage:
    """One thread working through its queue of batches."""

    def __init__(self, name: str, work: Work, pipeline: Pipeline) -> None:
        self.name = name
        self.cpu = 0.0
        self.bytes = 0
        self._work = work
        self._pipeline = pipeline
        # Unbounded here: the pipeline's semaphore bounds the batches in flight.
        self.queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"upload-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self._pipeline.error is None:
                started = time.thread_time()
                try:
                    self._work(batch.pieces)
                except BaseException as exc:  # handed to the event loop, not lost
                    self._pipeline.fail(exc)
                self.cpu += time.thread_time() - started
                self.bytes += batch.size
            self._pipeline.done(batch)


class Pipeline:
    """Batches of one upload through ``stages``, at most ``depth`` of them in flight."""

    def __init__(
        self, stages: Sequence[tuple[str, Work]], depth: int, costs: StageCosts | None = None
    ) -> None:
        self.error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Semaphore(depth)
        self._lock = threading.Lock()
        self._costs = costs
        self._stages = [_Stage(name, work, self) for name, work in stages]

    async def put(self, pieces: Sequence[bytes], size: int) -> None:
        """Hand a batch of ``size`` bytes in ``pieces`` to every stage; waits while
        ``depth`` batches are in flight. Raises the error of a stage that failed."""
        self._raise()
        await self._room.acquire()
        batch = _Batch(pieces, size, len(self._stages))
        for stage in self._stages:
            stage.queue.put(batch)

    async def close(self) -> None:
        """Let every stage finish its batches and end; report their costs. Raises the
        error of a stage that failed."""
        for stage in self._stages:
            stage.queue.put(None)
        await asyncio.to_thread(self._join)
        if self._costs is not None:
            for stage in self._stages:
                self._costs(stage.name, stage.cpu, stage.bytes)
        self._raise()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc

    def done(self, batch: _Batch) -> None:
        """On a stage's thread: that stage is finished with ``batch``."""
        with self._lock:
            batch.left -= 1
            last = batch.left == 0
        if last:  # every stage is done with it: room for the next one
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                self._loop.call_soon_threadsafe(self._room.release)

    def _join(self) -> None:
        for stage in self._stages:
            stage.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
