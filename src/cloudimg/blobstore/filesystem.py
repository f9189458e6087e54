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
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from cloudimg.blobstore.base import (
    PlaceOutcome,
    StagedBlob,
    StagingRemoval,
    StoredFile,
    Tap,
)
from cloudimg.blobstore.pipeline import Pipeline, StageCosts, Work
from cloudimg.errors import InsufficientStorageError

if TYPE_CHECKING:
    from cloudimg.blobstore.resumable import FilesystemResumable

__all__ = [
    "HEADROOM_BYTES",
    "STAGING_SUFFIX",
    "FilesystemBlobReader",
    "FilesystemBlobStore",
    "FilesystemStagingWriter",
]

STAGING_SUFFIX = ".part"
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
_HEX2 = re.compile(r"[0-9a-f]{2}")
_HEX62 = re.compile(r"[0-9a-f]{62}")
_SESSION = re.compile(r"[0-9a-f]{32}")
_TRASH_NAME = re.compile(r"([0-9a-f]{64})\.[0-9a-f]+")
_NO_WAIT: int = getattr(os, "RWF_NOWAIT", 0)


def _free_bytes(st: os.statvfs_result) -> int:
    return st.f_bavail * st.f_frsize


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


class _StagingLock:
    """An open descriptor of a staging file holding the exclusive ``flock`` on it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _stored(path: Path, digest: str | None) -> StoredFile | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return StoredFile(str(path), path.name, st.st_size, st.st_mtime, st.st_ino, digest)


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


def _hash_fd(fd: int, on_bytes: Callable[[int], None] | None = None) -> tuple[str, str, int]:
    """blake3, sha256 and size of what ``fd`` reads, in large reads."""
    b3 = blake3.blake3(max_threads=blake3.blake3.AUTO)
    sha = hashlib.sha256()
    size = 0
    buffer = bytearray(_READ_BLOCK)
    view = memoryview(buffer)
    while n := os.readv(fd, [buffer]):
        b3.update(view[:n])
        sha.update(view[:n])
        size += n
        if on_bytes is not None:
            on_bytes(n)
    return b3.hexdigest(), sha.hexdigest(), size


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


class FilesystemStagingWriter:
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
        self.path = path
        self._fd = fd
        self._tap = tap
        self._costs = costs
        self._lock = _StagingLock(fd)
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
        self._closed = False
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
        return _HashState(self._size, self._blake3.copy(), self._sha256.copy())

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


class FilesystemBlobStore:
    """The blob store on the data root."""

    def __init__(self, data_root: Path) -> None:
        self._paused: dict[str, _HashState] = {}
        """Hash states of resumable uploads this process paused, by session id: a session
        resumed here goes on without reading its bytes again."""
        self.root = data_root
        self.stage_costs: StageCosts | None = None
        """Told the CPU seconds and bytes of each stage of every staging writer (the
        server's ``/metrics``: see :mod:`cloudimg.blobstore.pipeline`)."""
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
        # Imported here: that module builds on this one's staging writer.
        from cloudimg.blobstore.resumable import FilesystemResumable

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
        path, fd = self._new_staging(source)
        lock = _StagingLock(fd)
        try:
            b3, sha, size = _hash_fd(fd)
            os.fsync(fd)
        except BaseException:
            path.unlink(missing_ok=True)
            lock.release()
            raise
        return StagedBlob(blake3=b3, sha256=sha, size=size, key=str(path), lease=lock)

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

    async def list_trash(self) -> list[StoredFile]:
        return await asyncio.to_thread(self._list_area, self.trash_dir, _TRASH_NAME)

    async def restore_from_trash(self, key: str, blake3_hex: str) -> bool:
        path = self._in_area(key, self.trash_dir, self.quarantine_dir)
        try:
            return await asyncio.to_thread(self._link_into_tree, path, blake3_hex)
        except FileNotFoundError:
            return False  # restored (or purged) by someone else meanwhile

    async def purge(self, key: str) -> None:
        path = self._in_area(key, self.trash_dir)
        await asyncio.to_thread(path.unlink, True)

    # -- maintenance -------------------------------------------------------------

    async def list_blobs(self) -> list[StoredFile]:
        return await asyncio.to_thread(self._list_blobs)

    def _list_blobs(self) -> list[StoredFile]:
        found: list[StoredFile] = []
        if not self.blobs_dir.is_dir():
            return found
        for fan in sorted(self.blobs_dir.iterdir()):
            if not fan.is_dir() or fan.is_symlink() or not _HEX2.fullmatch(fan.name):
                entry = _stored(fan, None)
                found += [entry] if entry else []
                continue
            for path in sorted(fan.iterdir()):
                looks_like_blob = bool(_HEX62.fullmatch(path.name)) and path.is_file()
                entry = _stored(path, fan.name + path.name if looks_like_blob else None)
                found += [entry] if entry else []
        return found

    async def list_staging(self) -> list[StoredFile]:
        return await asyncio.to_thread(self._list_area, self.staging_dir, None)

    def _list_area(self, directory: Path, pattern: re.Pattern[str] | None) -> list[StoredFile]:
        found: list[StoredFile] = []
        if not directory.is_dir():
            return found
        for path in sorted(directory.iterdir()):
            match = pattern.fullmatch(path.name) if pattern else None
            entry = _stored(path, match.group(1) if match else None)
            found += [entry] if entry else []
        return found

    async def remove_stale_staging(
        self, key: str, cutoff: float, *, dry_run: bool = False
    ) -> StagingRemoval:
        path = self._in_area(key, self.staging_dir)
        return await asyncio.to_thread(self._remove_stale_staging, path, cutoff, dry_run)

    def _remove_stale_staging(self, path: Path, cutoff: float, dry_run: bool) -> StagingRemoval:
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
        return await asyncio.to_thread(self._checksum, blake3_hex, on_bytes)

    def _checksum(
        self, blake3_hex: str, on_bytes: Callable[[int], None] | None
    ) -> tuple[str, int] | None:
        try:
            fd = os.open(self.blob_path(blake3_hex), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            digest, _sha256, _size = _hash_fd(fd, on_bytes)
            return digest, os.fstat(fd).st_ino
        finally:
            os.close(fd)

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
