"""Resumable staging on the file system: a staging file that outlives a request.

A resumable staging file is named by a key the caller chose (32 hex digits) and grows
over several requests, on any replica and across restarts. The caller keeps where it
stands (its durable length) and drives each step itself, under the file's lock:

1. ``lock = await store.lock_resumable(key)``: the file, created if missing, locked
   (``flock``; a second request of the same key waits here); ``lock.length`` is its
   length now;
2. the caller looks up the length it recorded, under that lock, so it cannot move
   meanwhile; then either ``writer = await lock.resume(offset)`` (bytes past ``offset``,
   of a request that never finished, are cut off), or ``lock.release()`` when the
   caller's record is gone or longer than the file (gc took the bytes);
3. ``durable = await lock.pause()`` makes the writer's bytes durable and gives their
   length; the caller records it and ``lock.release(keep=recorded)`` lets the file go.
   ``keep``: the next resume here at that length goes on from the hashes computed so
   far instead of reading the bytes again. A finished writer's file goes with its
   ``StagedBlob`` instead (``claim_staging`` takes it again later).

Nothing here knows who resumes the file or why (an upload protocol of a caller does);
gc removes such a file, like any staging file, once it is left alone past its grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from cloudimg.blobstore.staging import (
    FilesystemStagingWriter,
    StageCosts,
    _cut,
    _hash_prefix,
    _HashState,
)

__all__ = ["FilesystemResumable"]


class FilesystemResumable:
    """A resumable staging file, locked by this request until :meth:`release`."""

    def __init__(
        self,
        key: str,
        path: Path,
        fd: int,
        length: int,
        paused: dict[str, _HashState],
        costs: StageCosts | None,
    ) -> None:
        self._key = key
        self._path = path
        self._fd = fd
        self._paused = paused
        self._costs = costs
        self._writer: FilesystemStagingWriter | None = None
        self._state: _HashState | None = None
        self.length = length
        """The file's length when it was locked."""

    async def resume(self, offset: int) -> FilesystemStagingWriter:
        """The file's writer at ``offset`` (at most :attr:`length`): bytes past it are cut
        off; the hashes go on from where this process paused it at that length, or are
        computed again from the file."""
        try:
            state = self._paused.pop(self._key, None)
            if state is None or state.size != offset:
                state = await asyncio.to_thread(_hash_prefix, self._fd, offset)
            await asyncio.to_thread(_cut, self._fd, offset)
        except BaseException:
            self._close()
            raise
        self._writer = FilesystemStagingWriter(self._path, self._fd, None, state, self._costs)
        return self._writer

    async def pause(self) -> int:
        """Make the resumed writer's bytes durable (the file stays locked); their length."""
        assert self._writer is not None, "resumed first"
        self._state = await self._writer.sync()
        return self._state.size

    def release(self, *, keep: bool = False) -> None:
        """Let the file go for a later resume; ``keep``: the caller recorded the length
        :meth:`pause` gave, so its hashes are kept for the next resume here. A file
        never resumed that is empty (made by this lock) is removed: no debris."""
        if self._writer is not None:
            if keep and self._state is not None:
                self._paused[self._key] = self._state
            self._writer.release()
            return
        if self._fd >= 0 and self.length == 0:
            self._path.unlink(missing_ok=True)
        self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
