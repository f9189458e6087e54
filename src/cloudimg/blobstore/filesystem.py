"""Blob store on a POSIX file system (the data volume).

Layout under the data root::

    blobs/blake3/<first 2 hex>/<remaining 62 hex>   read-only blob files
    staging/<random>.part                           uploads in progress
    trash/<blake3 hex>.<random>                     blobs whose last reference went

Staging and trash sit on the same file system as the blobs, so moving a file
between them is a rename: atomic, and no byte is copied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
from pathlib import Path

import blake3

from cloudimg.blobstore.base import StagedBlob
from cloudimg.errors import InsufficientStorageError

__all__ = ["STAGING_SUFFIX", "FilesystemBlobStore", "FilesystemStagingWriter"]

STAGING_SUFFIX = ".part"
# Writes are batched to this size and handed to a worker thread, so the event loop
# never waits on the disk or the hash, and a thread hop is paid per MiB, not per packet.
_WRITE_BATCH = 4 * 1024 * 1024
_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemStagingWriter:
    """Streams an upload into a staging file while computing blake3 and sha256."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._blake3 = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        self._pending: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def size(self) -> int:
        return self._size + len(self._buffer)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= _WRITE_BATCH:
            await self._flush_buffer()

    async def finish(self) -> StagedBlob:
        await self._flush_buffer()
        await self._wait_pending()
        await asyncio.to_thread(self._sync_and_close)
        return StagedBlob(
            blake3=self._blake3.hexdigest(),
            sha256=self._sha256.hexdigest(),
            size=self._size,
            path=self.path,
        )

    async def abort(self) -> None:
        # The upload is failing anyway; a write error of the last batch changes nothing.
        with contextlib.suppress(Exception):
            await self._wait_pending()
        self._close()
        self.path.unlink(missing_ok=True)

    async def _flush_buffer(self) -> None:
        # One batch may be in the worker thread while the next one fills up.
        await self._wait_pending()
        if self._buffer:
            batch, self._buffer = self._buffer, bytearray()
            self._size += len(batch)
            self._pending = asyncio.ensure_future(asyncio.to_thread(self._write_and_hash, batch))

    async def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    def _write_and_hash(self, batch: bytearray) -> None:
        view = memoryview(batch)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            if exc.errno in _FULL_DISK_ERRNOS:
                raise InsufficientStorageError("the data volume is full") from None
            raise
        self._blake3.update(batch)
        self._sha256.update(batch)

    def _sync_and_close(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if exc.errno in _FULL_DISK_ERRNOS:
                raise InsufficientStorageError("the data volume is full") from None
            raise
        finally:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


class FilesystemBlobStore:
    """The blob store on the data root."""

    def __init__(self, data_root: Path) -> None:
        self.root = data_root
        self.blobs_dir = data_root / "blobs" / "blake3"
        self.staging_dir = data_root / "staging"
        self.trash_dir = data_root / "trash"

    def ensure_layout(self) -> None:
        """Create the directories (idempotent)."""
        for directory in (self.blobs_dir, self.staging_dir, self.trash_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def blob_path(self, blake3_hex: str) -> Path:
        return self.blobs_dir / blake3_hex[:2] / blake3_hex[2:]

    async def open_staging(self) -> FilesystemStagingWriter:
        path = self.staging_dir / f"{secrets.token_hex(16)}{STAGING_SUFFIX}"
        fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        return FilesystemStagingWriter(path, fd)

    async def place(self, staged: StagedBlob) -> bool:
        return await asyncio.to_thread(self._place, staged)

    def _place(self, staged: StagedBlob) -> bool:
        os.chmod(staged.path, 0o444)
        return self._link_into_tree(staged.path, staged.blake3)

    def _link_into_tree(self, source: Path, blake3_hex: str) -> bool:
        """Give ``source`` its blob name and drop the old name; False if the blob existed."""
        target = self.blob_path(blake3_hex)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # link() fails on an existing name, so an existing blob is never rewritten.
            os.link(source, target)
        except FileExistsError:
            source.unlink(missing_ok=True)
            return False
        source.unlink()
        _fsync_dir(target.parent)
        return True

    async def discard(self, staged: StagedBlob) -> None:
        await asyncio.to_thread(staged.path.unlink, True)

    async def size_of(self, blake3_hex: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.blob_path(blake3_hex).stat)).st_size
        except FileNotFoundError:
            return None

    async def move_to_trash(self, blake3_hex: str) -> Path | None:
        trash = self.trash_dir / f"{blake3_hex}.{secrets.token_hex(8)}"
        try:
            await asyncio.to_thread(os.rename, self.blob_path(blake3_hex), trash)
        except FileNotFoundError:
            return None
        return trash

    async def restore_from_trash(self, trash_path: Path, blake3_hex: str) -> None:
        await asyncio.to_thread(self._link_into_tree, trash_path, blake3_hex)

    async def purge(self, trash_path: Path) -> None:
        await asyncio.to_thread(trash_path.unlink, True)
