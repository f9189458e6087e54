"""Blob store on a POSIX file system (the data volume).

Layout under the data root::

    blobs/blake3/<first 2 hex>/<remaining 62 hex>   read-only blob files
    staging/<random>.part                           uploads in progress
    trash/<blake3 hex>.<random>                     blobs whose last reference went
    quarantine/<blake3 hex>.<random>                blobs whose bytes failed a check

Staging and trash sit on the same file system as the blobs, so moving a file
between them is a rename: atomic, and no byte is copied twice.

An upload holds an exclusive ``flock`` on its staging file from creation until the
file is placed or discarded, so garbage collection (which only takes files it can
lock) never removes the staging file of an upload that is still running.

This module is the store: its layout, placing, opening (the blob reader, whose
descriptor keeps the bytes readable after the file is deleted, so a download goes on
from it even when a delete frees the blob meanwhile), trash and the resumable uploads.
The staging writer and its hashing pipeline are in ``staging.py``, and what only
maintenance asks (listings, checksums, a legacy link) in ``maintenance.py``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from cloudimg.blobstore import maintenance
from cloudimg.blobstore.base import (
    PlaceOutcome,
    StagedBlob,
    StagingRemoval,
    StoredFile,
    Tap,
)
from cloudimg.blobstore.resumable import FilesystemResumable
from cloudimg.blobstore.staging import (
    HEADROOM_BYTES,
    FilesystemStagingWriter,
    StageCosts,
    _free_bytes,
    _HashState,
    _StagingLock,
)

__all__ = [
    "HEADROOM_BYTES",
    "STAGING_SUFFIX",
    "FilesystemBlobReader",
    "FilesystemBlobStore",
    "FilesystemStagingWriter",
]

STAGING_SUFFIX = ".part"
_SESSION = re.compile(r"[0-9a-f]{32}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


_NO_WAIT: int = getattr(os, "RWF_NOWAIT", 0)


class FilesystemBlobReader:
    """A blob file open for reading; the descriptor keeps the bytes even if it is deleted."""

    __slots__ = ("_fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def fileno(self) -> int | None:
        return self._fd if self._fd >= 0 else None

    def read_nowait(self, size: int, offset: int) -> bytes | None:
        buffer = bytearray(size)
        try:
            length = os.preadv(self._fd, [buffer], offset, _NO_WAIT)
        except OSError:  # EAGAIN: not cached; EOPNOTSUPP: a file system without RWF_NOWAIT
            return None
        return bytes(memoryview(buffer)[:length])

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class FilesystemBlobStore:
    """The blob store on the data root."""

    def __init__(self, data_root: Path) -> None:
        self._paused: dict[str, _HashState] = {}
        """Hash states of resumable uploads this process paused, by session id: a session
        resumed here goes on without reading its bytes again."""
        self.root = data_root
        self.stage_costs: StageCosts | None = None
        """Told the CPU seconds and bytes of each stage of every staging writer (the
        server's ``/metrics``: see :mod:`cloudimg.blobstore.staging`)."""
        self.blobs_dir = data_root / "blobs" / "blake3"
        self.staging_dir = data_root / "staging"
        self.trash_dir = data_root / "trash"
        self.quarantine_dir = data_root / "quarantine"

    @property
    def directories(self) -> tuple[Path, ...]:
        """The directories the store writes into (quarantine/ is made when first needed)."""
        return (self.blobs_dir, self.staging_dir, self.trash_dir)

    def ensure_layout(self) -> None:
        """Create the directories (idempotent)."""
        for directory in self.directories:
            directory.mkdir(parents=True, exist_ok=True)

    async def check(self) -> None:
        """Nothing to reach: the CLI checks the data root itself, naming its owner."""

    def blob_path(self, blake3_hex: str) -> Path:
        return self.blobs_dir / blake3_hex[:2] / blake3_hex[2:]

    async def open_staging(self, tap: Tap | None = None) -> FilesystemStagingWriter:
        path, fd = await asyncio.to_thread(self._new_staging, None)
        return FilesystemStagingWriter(path, fd, tap, costs=self.stage_costs)

    def _new_staging(self, source: Path | None) -> tuple[Path, int]:
        """Create a staging file (a new one, or a second name of ``source``) and lock it.

        gc may lock and remove a staging file between its creation and our lock; then
        the name no longer names our file, and we start again with another name.
        """
        while True:
            path = self.staging_dir / f"{secrets.token_hex(16)}{STAGING_SUFFIX}"
            if source is None:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            else:
                os.link(source, path)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while a gc looks at the new file
            if _names_file(path, fd):
                return path, fd
            os.close(fd)

    # -- resumable staging (cloudimg.blobstore.resumable) ------------------------

    def _session_path(self, session: str) -> Path:
        if not _SESSION.fullmatch(session):
            raise ValueError("not a session id")
        return self.staging_dir / f"{session}{STAGING_SUFFIX}"

    async def lock_resumable(self, key: str) -> FilesystemResumable:
        """The resumable staging file ``key``, created if missing and locked: the steps
        the caller drives from there are :mod:`cloudimg.blobstore.resumable`'s."""
        path = self._session_path(key)
        fd = await asyncio.to_thread(self._lock_session, path)
        try:
            length = (await asyncio.to_thread(os.fstat, fd)).st_size
        except BaseException:
            os.close(fd)
            raise
        return FilesystemResumable(key, path, fd, length, self._paused, self.stage_costs)

    def _lock_session(self, path: Path) -> int:
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another request of it writes
            if _names_file(path, fd):
                return fd
            os.close(fd)  # gc removed it meanwhile: a new, empty file

    async def claim_staging(
        self, session: str, blake3_hex: str, sha256_hex: str, size: int
    ) -> StagedBlob | None:
        """The finished upload ``session`` (its digests as recorded when it finished) as
        staged bytes, locked for a commit; None when gc reclaimed it."""
        path = self._session_path(session)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        if not _names_file(path, fd) or os.fstat(fd).st_size != size:
            os.close(fd)
            return None
        return StagedBlob(blake3_hex, sha256_hex, size, str(path), _StagingLock(fd))

    async def open_staged(self, staged: StagedBlob) -> FilesystemBlobReader:
        """A reader of staged bytes (to inspect or unpack them before they are committed)."""
        path = self._in_area(staged.key, self.staging_dir)
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        return FilesystemBlobReader(fd, staged.size)

    async def drop_session(self, session: str) -> None:
        """Remove resumable staging file ``session`` (cancelled, or found abandoned)."""
        self._paused.pop(session, None)
        await asyncio.to_thread(self._session_path(session).unlink, True)

    async def stage_link(self, source: Path) -> StagedBlob:
        return await asyncio.to_thread(self._stage_link, source)

    def _stage_link(self, source: Path) -> StagedBlob:
        return maintenance.stage_in_place(*self._new_staging(source))

    def _in_area(self, key: str, *areas: Path) -> Path:
        """The file a key names, refusing keys outside ``areas`` (they are not ours)."""
        path = Path(key)
        if path.parent not in areas:
            raise ValueError(f"not a key of this store's {'/'.join(a.name for a in areas)}")
        return path

    async def place(self, staged: StagedBlob, *, displace: bool = False) -> PlaceOutcome:
        path = self._in_area(staged.key, self.staging_dir)
        try:
            return await asyncio.to_thread(self._place, path, staged.blake3, displace)
        finally:
            if staged.lease is not None and not path.exists():
                staged.lease.release()

    def _place(self, path: Path, blake3_hex: str, displace: bool) -> PlaceOutcome:
        try:
            os.chmod(path, 0o444)
        except FileNotFoundError:
            return "gone"  # placed by an earlier attempt (or discarded): keep what is there
        if displace:
            self._quarantine(blake3_hex, None)
        return "placed" if self._link_into_tree(path, blake3_hex) else "present"

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
        path = self._in_area(staged.key, self.staging_dir)
        await asyncio.to_thread(path.unlink, True)
        if staged.lease is not None:
            staged.lease.release()

    async def open(self, blake3_hex: str) -> FilesystemBlobReader | None:
        return await asyncio.to_thread(self._open, blake3_hex)

    def _open(self, blake3_hex: str) -> FilesystemBlobReader | None:
        try:
            fd = os.open(self.blob_path(blake3_hex), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return FilesystemBlobReader(fd, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise

    async def size_of(self, blake3_hex: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.blob_path(blake3_hex).stat)).st_size
        except FileNotFoundError:
            return None

    async def download_url(self, blake3_hex: str, expires_in: int) -> str | None:
        return None  # the data volume has no address of its own: the server sends the bytes

    async def free_space(self) -> int | None:
        st = await asyncio.to_thread(os.statvfs, self.staging_dir)
        return max(0, _free_bytes(st) - HEADROOM_BYTES)

    async def probe_writable(self) -> None:
        await asyncio.to_thread(self._probe_writable)

    def _probe_writable(self) -> None:
        # Not a ``.part`` name, so nobody takes it for an upload; a crash leaves debris gc removes.
        path = self.staging_dir / f"probe-{secrets.token_hex(8)}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)

    async def move_to_trash(self, blake3_hex: str) -> str | None:
        trash = self.trash_dir / f"{blake3_hex}.{secrets.token_hex(8)}"
        try:
            await asyncio.to_thread(os.rename, self.blob_path(blake3_hex), trash)
        except FileNotFoundError:
            return None
        return str(trash)

    trash_copies = False  # a rename: the catalog moves blobs to trash under its lock

    async def copy_to_trash(self, blake3_hex: str) -> str | None:
        trash = self.trash_dir / f"{blake3_hex}.{secrets.token_hex(8)}"
        try:
            await asyncio.to_thread(os.link, self.blob_path(blake3_hex), trash)
        except FileNotFoundError:
            return None
        return str(trash)

    async def forget(self, blake3_hex: str) -> None:
        await asyncio.to_thread(self.blob_path(blake3_hex).unlink, True)

    async def list_trash(self) -> list[StoredFile]:
        return await asyncio.to_thread(
            maintenance.list_area, self.trash_dir, maintenance.TRASH_NAME
        )

    async def restore_from_trash(self, key: str, blake3_hex: str) -> bool:
        path = self._in_area(key, self.trash_dir, self.quarantine_dir)
        try:
            return await asyncio.to_thread(self._link_into_tree, path, blake3_hex)
        except FileNotFoundError:
            return False  # restored (or purged) by someone else meanwhile

    async def purge(self, key: str) -> None:
        path = self._in_area(key, self.trash_dir)
        await asyncio.to_thread(path.unlink, True)

    # -- maintenance (the listings and hashing: cloudimg.blobstore.maintenance) ----

    async def list_blobs(self) -> list[StoredFile]:
        return await asyncio.to_thread(maintenance.list_blobs, self.blobs_dir)

    async def list_staging(self) -> list[StoredFile]:
        return await asyncio.to_thread(maintenance.list_area, self.staging_dir, None)

    async def staged_sessions(self) -> set[str]:
        entries = await self.list_staging()
        return {
            entry.name.removesuffix(STAGING_SUFFIX)
            for entry in entries
            if entry.name.endswith(STAGING_SUFFIX)
        }

    async def remove_stale_staging(
        self, key: str, cutoff: float, *, dry_run: bool = False
    ) -> StagingRemoval:
        path = self._in_area(key, self.staging_dir)
        return await asyncio.to_thread(self._remove_stale_staging, path, cutoff, dry_run)

    def _remove_stale_staging(self, path: Path, cutoff: float, dry_run: bool) -> StagingRemoval:
        # gc's side of the staging lock whose upload side is _new_staging: kept beside it.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return "gone"
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "in-use"  # an upload (or another gc) holds it
            if not _names_file(path, fd):
                return "gone"
            if os.fstat(fd).st_mtime > cutoff:
                return "young"
            if not dry_run:
                path.unlink(missing_ok=True)
            return "removed"
        finally:
            os.close(fd)

    async def checksum(
        self, blake3_hex: str, on_bytes: Callable[[int], None] | None = None
    ) -> tuple[str, int] | None:
        path = self.blob_path(blake3_hex)
        return await asyncio.to_thread(maintenance.checksum, path, on_bytes)

    async def quarantine(self, blake3_hex: str, version: int | None = None) -> str | None:
        return await asyncio.to_thread(self._quarantine, blake3_hex, version)

    def _quarantine(self, blake3_hex: str, version: int | None) -> str | None:
        """``version`` is the inode the caller found bad; a file placed since is kept."""
        source = self.blob_path(blake3_hex)
        try:
            if version is not None and source.stat().st_ino != version:
                return None
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            target = self.quarantine_dir / f"{blake3_hex}.{secrets.token_hex(8)}"
            os.rename(source, target)
        except FileNotFoundError:
            return None
        _fsync_dir(source.parent)
        return str(target)
