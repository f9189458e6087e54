"""The staging writer: an upload streamed into a staging file and hashed as it streams.

The event loop hands the writer an upload's bytes; it gathers them into batches and a
:class:`Pipeline` runs each stage of the work (the file write, blake3, sha256, the
inspector's tap) on a thread of its own, every stage taking each batch in order, so
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

The writer holds its staging file's exclusive ``flock`` (``_StagingLock``) from its
creation until the bytes are placed or discarded (see ``cloudimg.blobstore.filesystem``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from cloudimg.blobstore.base import StageCosts, StagedBlob, Tap
from cloudimg.errors import InsufficientStorageError

__all__ = [
    "HEADROOM_BYTES",
    "FilesystemStagingWriter",
    "HashingWriter",
    "Pipeline",
    "StageCosts",
    "Work",
]

HEADROOM_BYTES = 8 * 1024 * 1024
"""Free space uploads leave on the data volume, so a SQLite catalog there can still
commit the deletes that free space (see ``cloudimg.catalog.database.keep_room``)."""
# Writes are batched to this size and handed to the pipeline's threads, so the event
# loop never waits on the disk or the hash, and a thread hop is paid per MiB, not per
# packet. At most _BATCHES_IN_FLIGHT of them wait for the slowest stage (memory stays flat).
_WRITE_BATCH = 4 * 1024 * 1024
_BATCHES_IN_FLIGHT = 3
_IOV_MAX: int = os.sysconf("SC_IOV_MAX")
_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READ_BLOCK = 16 * 1024 * 1024

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


def _free_bytes(st: os.statvfs_result) -> int:
    return st.f_bavail * st.f_frsize


class _StagingLock:
    """An open descriptor of a staging file holding the exclusive ``flock`` on it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _cut(fd: int, offset: int) -> None:
    os.ftruncate(fd, offset)
    os.lseek(fd, offset, os.SEEK_SET)


def _hash_prefix(fd: int, size: int) -> _HashState:
    """Hashes of the first ``size`` bytes of ``fd`` (a resumed upload read again)."""
    state = _HashState(0, blake3.blake3(max_threads=blake3.blake3.AUTO), hashlib.sha256())
    while state.size < size:
        piece = os.pread(fd, min(_READ_BLOCK, size - state.size), state.size)
        if not piece:
            raise OSError(errno.EIO, "a resumed upload's file is shorter than recorded")
        state.blake3.update(piece)
        state.sha256.update(piece)
        state.size += len(piece)
    return state


@dataclass
class _HashState:
    """Hashes of the first ``size`` bytes of a staging file, to go on from."""

    size: int
    blake3: Any
    sha256: Any


def _each(take: Callable[[memoryview], object]) -> Work:
    """A stage's work: ``take`` each piece of a batch in turn."""

    def work(pieces: Sequence[bytes]) -> None:
        for piece in pieces:
            take(memoryview(piece))

    return work


def _write_all(fd: int, pieces: Sequence[bytes]) -> None:
    """Write ``pieces`` in order, as few ``writev`` calls as the kernel allows."""
    views = [memoryview(piece) for piece in pieces]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + _IOV_MAX])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:  # a short write ended inside this piece
            views[first] = views[first][written:]


class HashingWriter:
    """Gathers an upload's bytes into batches and runs each through a :class:`Pipeline`:
    the backend's own ``_write`` (where the bytes go), blake3, sha256 and the tap, one
    thread per stage (started at the first batch, ended by ``_drain``). ``costs`` is
    told each stage's CPU seconds and bytes, and the event loop's as ``receive``.

    A backend's writer (the file system's below, the object store's in
    ``cloudimg.blobstore.s3``) adds what its medium needs: ``_write``, making the bytes
    durable, and the ``StagedBlob`` it hands out.
    """

    def __init__(
        self,
        tap: Tap | None = None,
        resumed: _HashState | None = None,
        costs: StageCosts | None = None,
    ) -> None:
        self._tap = tap
        self._costs = costs
        if resumed is None:
            # One thread: the blake3 stage has a thread of its own, single-threaded blake3
            # (~5 GB/s) outruns sha256, and the stage's thread_time() then counts all of it.
            resumed = _HashState(0, blake3.blake3(), hashlib.sha256())
        self._size = resumed.size
        self._blake3 = resumed.blake3
        self._sha256 = resumed.sha256
        # The batch being gathered: the body's own pieces, kept rather than copied.
        self._pieces: list[bytes] = []
        self._gathered = 0
        self._pipeline: Pipeline | None = None
        # The event loop's share: its thread's CPU time while this writer takes bytes.
        self._loop_cpu = time.thread_time()
        self._received = 0

    @property
    def size(self) -> int:
        return self._size + self._gathered

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        # bytes cannot change, so the event loop keeps a reference instead of copying
        # each piece of the body into a batch; anything else may be reused by its owner.
        piece = data if isinstance(data, bytes) else bytes(data)
        if piece:
            self._pieces.append(piece)
            self._gathered += len(piece)
        if self._gathered >= _WRITE_BATCH:
            await self._flush_buffer()

    def _hash_state(self) -> _HashState:
        """The hashes of what was drained so far, copied (to go on from later)."""
        return _HashState(self._size, self._blake3.copy(), self._sha256.copy())

    async def _flush_buffer(self) -> None:
        if not self._pieces:
            return
        pieces, size = self._pieces, self._gathered
        self._pieces, self._gathered = [], 0
        self._size += size
        if self._pipeline is None:
            self._pipeline = Pipeline(self._stages(), _BATCHES_IN_FLIGHT, self._costs)
        await self._pipeline.put(pieces, size)

    async def _drain(self) -> None:
        """Every byte given so far written and hashed; the pipeline's threads ended."""
        await self._flush_buffer()
        await self._end_pipeline()
        if self._costs is not None:
            cpu, self._loop_cpu = time.thread_time() - self._loop_cpu, time.thread_time()
            self._costs("receive", cpu, self._size - self._received)
            self._received = self._size

    async def _end_pipeline(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            await pipeline.close()

    def _stages(self) -> list[tuple[str, Work]]:
        stages: list[tuple[str, Work]] = [
            ("write", self._write),
            ("blake3", _each(self._blake3.update)),
            ("sha256", _each(self._sha256.update)),
        ]
        if self._tap is not None:
            stages.append(("inspect", _each(self._tap)))
        return stages

    def _write(self, pieces: Sequence[bytes]) -> None:
        """On the write stage's thread: put ``pieces`` (in order) where the bytes go."""
        raise NotImplementedError


class FilesystemStagingWriter(HashingWriter):
    """Streams an upload into a staging file while computing blake3 and sha256.

    The event loop gathers the bytes into batches; each batch is written, hashed with
    blake3 and with sha256, and shown to the tap by a :class:`Pipeline` of one thread
    per stage (started at the first batch, ended by ``sync``, ``finish`` or
    ``abort``). ``costs`` is told each stage's CPU seconds and bytes, and the event
    loop's as ``receive``.

    The file stays open (and locked) after ``finish``: the lock goes with the
    ``StagedBlob`` and ends when the blob is placed or discarded.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        tap: Tap | None = None,
        resumed: _HashState | None = None,
        costs: StageCosts | None = None,
    ) -> None:
        super().__init__(tap, resumed, costs)
        self.path = path
        self._fd = fd
        self._lock = _StagingLock(fd)
        self._closed = False

    async def finish(self) -> StagedBlob:
        await self._drain()
        await asyncio.to_thread(self._sync)
        return StagedBlob(
            blake3=self._blake3.hexdigest(),
            sha256=self._sha256.hexdigest(),
            size=self._size,
            key=str(self.path),
            lease=self._lock,
        )

    async def sync(self) -> _HashState:
        """Make what was written durable (the file stays); the hash state so far."""
        await self._drain()
        await asyncio.to_thread(self._sync)
        return self._hash_state()

    def release(self) -> None:
        """Let the file go (kept, unlocked) for a later resume."""
        self._close()

    async def abort(self) -> None:
        # The upload is failing anyway; a write error of the last batches changes nothing.
        with contextlib.suppress(Exception):
            await self._end_pipeline()
        if not self._closed:
            self.path.unlink(missing_ok=True)
        self._close()

    def _write(self, pieces: Sequence[bytes]) -> None:
        try:
            size = sum(len(piece) for piece in pieces)
            if _free_bytes(os.fstatvfs(self._fd)) < size + HEADROOM_BYTES:
                raise OSError(errno.ENOSPC, "the headroom is reached")
            _write_all(self._fd, pieces)
        except OSError as exc:
            if exc.errno in _FULL_DISK_ERRNOS:
                raise InsufficientStorageError("the data volume is full") from None
            raise

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            self._close()
            if exc.errno in _FULL_DISK_ERRNOS:
                raise InsufficientStorageError("the data volume is full") from None
            raise

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._lock.release()
