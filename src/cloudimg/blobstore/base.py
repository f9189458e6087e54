"""The blob store interfaces every backend implements (one contract test suite checks them).

Callers name blobs by digest and hold opaque handles (``StagedBlob``, ``StoredFile``
keys); where a backend keeps the bytes is its own business. ``BlobStore`` is what
serving needs; ``MaintenanceBlobStore`` adds what only ``cloudimg.maintenance`` uses;
``OpenedBlobStore`` is what ``open_registry`` hands out: all of it, plus the layout's
set-up and the staging writers' metrics sink, which the app and the CLI configure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

__all__ = [
    "BlobReader",
    "BlobStore",
    "BlobStoreUnavailableError",
    "MaintenanceBlobStore",
    "OpenedBlobStore",
    "PlaceOutcome",
    "ResumableStaging",
    "StageCosts",
    "StagedBlob",
    "StagingLease",
    "StagingRemoval",
    "StagingWriter",
    "StoredFile",
    "Tap",
]

Tap = Callable[[memoryview], None]
"""Called with each piece of an upload's bytes, in order, on a thread of the staging
writer's (so it may block and spend CPU without stalling the event loop). It must not
keep the view once it returns; what it raises fails the write."""


class BlobStoreUnavailableError(OSError):
    """The blob store did not answer, or refused, after its client's own retries (an
    object store down, unreachable or refusing the credentials): retrying later may help.
    Its ``strerror`` is one line for an operator, naming no secret."""


StageCosts = Callable[[str, float, int], None]
"""Told, for one stage of a staging writer, the CPU seconds its thread spent and the
bytes it took (the server's ``/metrics``: see :mod:`cloudimg.blobstore.staging`)."""

StagingRemoval = Literal["removed", "in-use", "young", "gone"]
"""What ``remove_stale_staging`` did with a staging file."""

PlaceOutcome = Literal["placed", "present", "gone"]
"""What ``place`` did: moved the staged bytes in; found the digest stored already (the
staged copy is dropped); or found the staged bytes gone (placed or discarded before)."""


class StagingLease(Protocol):
    """Holds a staging file for its upload (a lock) until it is placed or discarded."""

    def release(self) -> None:
        """Give the staging file up; safe to call more than once."""


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """Fully written, durable staged bytes and their digests."""

    blake3: str
    sha256: str
    size: int
    key: str = field(compare=False, repr=False)
    """The backend's own handle of the staged bytes; opaque to callers."""
    lease: StagingLease | None = field(default=None, compare=False, repr=False)
    """Released by ``place`` and ``discard``; while held, gc leaves the bytes alone."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """Something found in one of the store's areas (blobs, staging, trash)."""

    key: str
    """The backend's handle of this entry, given back to ``purge``, ``restore_from_trash``
    or ``remove_stale_staging``; also what reports show an operator to find it."""
    name: str
    """A short name, unique within its area."""
    size: int
    mtime: float
    """Modification time, seconds since the epoch."""
    version: int
    """Tells this copy from one stored later under the same digest (``quarantine``)."""
    digest: str | None
    """The blake3 hex its name gives (blobs, trash); None when the name is not a blob's."""


class BlobReader(Protocol):
    """An open stored blob: its bytes stay readable until ``close``, even if it is deleted."""

    @property
    def size(self) -> int:
        """Length of the blob in bytes."""

    def fileno(self) -> int | None:
        """An open file descriptor of the bytes (for zero-copy sending), or None."""

    def read_nowait(self, size: int, offset: int) -> bytes | None:
        """The bytes at ``offset`` when they can be had without waiting for a device
        (e.g. from the page cache), else None. Safe to call on the event loop."""

    def read(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end); blocks: call it on
        a thread. Thread-safe: reads may overlap."""

    def close(self) -> None:
        """Release the blob; safe to call more than once."""


class StagingWriter(Protocol):
    """Receives an upload's bytes in order, hashing them as they stream."""

    @property
    def size(self) -> int:
        """Bytes received so far."""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``. Raises ``InsufficientStorageError`` when the volume is full."""

    async def finish(self) -> StagedBlob:
        """Flush, make durable and return the digests; the bytes stay staged until placed."""

    async def abort(self) -> None:
        """Drop the staged bytes; safe to call more than once and after ``finish``."""


class ResumableStaging(Protocol):
    """A resumable staging file, locked: its bytes grow over several requests (and
    replicas, and restarts) while the caller records their durable length.

    The caller drives each step (``cloudimg.blobstore.resumable`` tells them): it asks
    its own record where the file stands, then ``resume`` at that length or
    ``release``; ``pause`` gives the durable length to record, then ``release``.
    """

    @property
    def length(self) -> int:
        """The file's length when it was locked."""

    async def resume(self, offset: int) -> StagingWriter:
        """The file's writer at ``offset`` (at most ``length``); bytes past it are cut off."""

    async def pause(self) -> int:
        """Make the resumed writer's bytes durable (the lock is kept); their length."""

    def release(self, *, keep: bool = False) -> None:
        """Let the file go for a later resume (``keep``: the length ``pause`` gave was
        recorded, so the hashes so far may be kept); a never-resumed empty file goes."""


class BlobStore(Protocol):
    """Blobs written once under their blake3 digest; existing digests are never rewritten.

    What serving needs: stage, place, discard, open, trash/restore/purge, free space, probe.
    """

    async def open_staging(self, tap: Tap | None = None) -> StagingWriter:
        """Start a new upload, staged where placing it moves no byte; ``tap`` sees every
        byte written, as the hash does."""

    async def lock_resumable(self, key: str) -> ResumableStaging:
        """Resumable staging file ``key`` (32 hex digits), created if missing, locked
        until released (a second lock of it waits): the caller resumes it at the length
        it recorded, or releases it (see :class:`ResumableStaging`)."""

    async def claim_staging(
        self, session: str, blake3_hex: str, sha256_hex: str, size: int
    ) -> StagedBlob | None:
        """A finished session's bytes (with the digests recorded when it finished) as
        staged bytes to commit or discard; None when they are gone."""

    async def open_staged(self, staged: StagedBlob) -> BlobReader:
        """A reader of staged bytes (to inspect or unpack them before a commit)."""

    async def drop_session(self, session: str) -> None:
        """Remove a resumable upload's bytes; already gone is fine."""

    async def place(self, staged: StagedBlob, *, displace: bool = False) -> PlaceOutcome:
        """Store the staged bytes under their digest unless the digest exists.

        With ``displace``, a blob stored under the digest is suspect (quarantined in the
        catalog): it is moved aside as ``quarantine`` does and the staged bytes take its
        place. The staged copy is gone afterwards in every case. Callers hold the catalog
        lock for the digest, so a concurrent delete cannot remove the blob in between.
        """

    async def discard(self, staged: StagedBlob) -> None:
        """Drop staged bytes that will not be committed; already gone is fine."""

    async def open(self, blake3_hex: str) -> BlobReader | None:
        """A reader of the stored blob, or None when no such blob exists."""

    async def size_of(self, blake3_hex: str) -> int | None:
        """Size of the stored blob, or None when no such blob exists."""

    async def download_url(self, blake3_hex: str, expires_in: int) -> str | None:
        """A URL at which a client GETs the stored blob's bytes from the store itself
        (``Range`` included), valid for ``expires_in`` seconds; None when the store has no
        such address (the filesystem), and the caller sends the bytes.

        The URL carries its own authorisation (a signature for one method, GET) and names
        the store as the store is configured: only clients with a route to it can use it.
        Nothing is checked here (the caller has resolved the digest in the catalog).
        """

    async def free_space(self) -> int | None:
        """Bytes an upload can still write to the store now; None when it cannot tell."""

    async def probe_writable(self) -> None:
        """Create, sync and remove a small object where uploads are staged.

        Raises:
            OSError: when the store cannot take new blobs (read-only, gone, no permission).
        """

    trash_copies: bool
    """Whether moving a blob to trash copies its bytes (an object store: time in
    proportion to its size) rather than renaming it. The catalog then never moves a
    blob under its lock: it drops the row, and after the commit calls
    ``copy_to_trash`` and, under the digest's lock again, ``forget``."""

    async def move_to_trash(self, blake3_hex: str) -> str | None:
        """Take the blob out of service; returns the trash key, None if absent."""

    async def copy_to_trash(self, blake3_hex: str) -> str | None:
        """A trashed copy of the blob, which stays in service: the copy's trash key (for
        ``purge``), None if the blob is absent."""

    async def forget(self, blake3_hex: str) -> None:
        """Delete the blob (its trashed copy keeps the bytes for open readers); already
        gone is fine."""

    async def list_trash(self) -> list[StoredFile]:
        """Everything in trash; ``digest`` is None for what is not a trashed blob."""

    async def restore_from_trash(self, key: str, blake3_hex: str) -> bool:
        """Undo ``move_to_trash`` or ``quarantine`` (when its transaction did not commit).

        True when the trashed copy became the blob again; False when it was gone already
        (restored or purged meanwhile) or the blob existed (the trashed copy is dropped).
        """

    async def purge(self, key: str) -> None:
        """Delete a trashed blob for good; already gone is fine."""


class MaintenanceBlobStore(BlobStore, Protocol):
    """What only maintenance (gc, fsck, import-legacy) needs on top of serving."""

    async def stage_link(self, source: Path) -> StagedBlob:
        """Stage the bytes of the legacy file ``source`` without copying them.

        Raises:
            OSError: when the store cannot take the file so (another file system, no
                permission); the caller copies the bytes through ``open_staging`` instead.
        """

    async def list_blobs(self) -> list[StoredFile]:
        """Everything in the blob area; ``digest`` is None for what does not look like a blob."""

    async def list_staging(self) -> list[StoredFile]:
        """Every staged upload (in progress, or left by a crash)."""

    async def staged_sessions(self) -> set[str]:
        """The resumable staging keys (``lock_resumable``'s) whose bytes are staged."""

    async def remove_stale_staging(
        self, key: str, cutoff: float, *, dry_run: bool = False
    ) -> StagingRemoval:
        """Remove a staged upload last modified before ``cutoff`` unless an upload holds it."""

    async def checksum(
        self, blake3_hex: str, on_bytes: Callable[[int], None] | None = None
    ) -> tuple[str, int] | None:
        """blake3 hex of the stored blob and its ``version``; None when it is missing."""

    async def quarantine(self, blake3_hex: str, version: int | None = None) -> str | None:
        """Move the blob aside (only if it is still ``version``); its key, None if nothing moved."""


class OpenedBlobStore(MaintenanceBlobStore, Protocol):
    """A store as ``open_registry`` hands it out, whichever backend the settings name."""

    stage_costs: StageCosts | None
    """Told the CPU seconds and bytes of each stage of every staging writer."""

    @property
    def directories(self) -> tuple[Path, ...]:
        """Local directories the store writes into (none for a bucket)."""

    def ensure_layout(self) -> None:
        """Create what the store writes into, if it must (idempotent; a bucket needs nothing)."""

    async def check(self) -> None:
        """Reach the store once, for a start-up that fails fast.

        Raises:
            OSError: one line naming what cannot be used (never a secret).
        """
