"""The blob store interface every backend implements (one contract test suite checks it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

__all__ = [
    "BlobStore",
    "StagedBlob",
    "StagingLease",
    "StagingRemoval",
    "StagingWriter",
    "StoredFile",
]

StagingRemoval = Literal["removed", "in-use", "young", "gone"]
"""What ``remove_stale_staging`` did with a staging file."""


class StagingLease(Protocol):
    """Holds a staging file for its upload (a lock) until it is placed or discarded."""

    def release(self) -> None:
        """Give the staging file up; safe to call more than once."""


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A fully written, fsynced staging file and the digests of its bytes."""

    blake3: str
    sha256: str
    size: int
    path: Path
    lease: StagingLease | None = field(default=None, compare=False, repr=False)
    """Released by ``place`` and ``discard``; while held, gc leaves the file alone."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file found in one of the store's areas (blob tree, staging, trash)."""

    path: Path
    size: int
    mtime: float
    """Modification time, seconds since the epoch."""
    inode: int
    digest: str | None
    """The blake3 hex its name gives (blobs, trash); None when the name is not a blob's."""


class StagingWriter(Protocol):
    """Receives an upload's bytes in order, hashing them as they stream."""

    @property
    def size(self) -> int:
        """Bytes received so far."""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``. Raises ``InsufficientStorageError`` when the volume is full."""

    async def finish(self) -> StagedBlob:
        """Flush, fsync and return the digests; the staging file stays until committed."""

    async def abort(self) -> None:
        """Drop the staging file; safe to call more than once and after ``finish``."""


class BlobStore(Protocol):
    """Blobs written once under their blake3 digest; existing digests are never rewritten."""

    def blob_path(self, blake3_hex: str) -> Path:
        """Where the blob with this digest lives (it may not exist)."""

    async def open_staging(self) -> StagingWriter:
        """Start a new upload in a staging file on the same file system as the blobs."""

    async def place(self, staged: StagedBlob) -> bool:
        """Move a staged blob into place unless the digest exists; True when it was placed.

        The staging file is gone afterwards in both cases. Callers hold the catalog lock
        for the digest, so a concurrent delete cannot remove the file in between.
        """

    async def discard(self, staged: StagedBlob) -> None:
        """Drop a staged blob that will not be committed; missing files are fine."""

    async def size_of(self, blake3_hex: str) -> int | None:
        """Size of the stored blob, or None when no such blob exists."""

    async def free_space(self) -> int | None:
        """Bytes an upload can still write to the store now; None when it cannot tell."""

    async def probe_writable(self) -> None:
        """Create, sync and remove a small file where uploads are staged.

        Raises:
            OSError: when the store cannot take new files (read-only, gone, no permission).
        """

    async def move_to_trash(self, blake3_hex: str) -> Path | None:
        """Rename the blob out of the blob tree; returns the trash path, None if absent."""

    async def restore_from_trash(self, trash_path: Path, blake3_hex: str) -> bool:
        """Undo ``move_to_trash`` (when the transaction that trashed it did not commit).

        True when ``trash_path`` became the blob file; False when it was gone already
        (restored or purged meanwhile) or the blob file existed (the trash copy is dropped).
        """

    async def purge(self, trash_path: Path) -> None:
        """Delete a trashed file for good; missing files are fine."""

    async def stage_link(self, source: Path) -> StagedBlob:
        """Stage the bytes of ``source`` without copying them (a second name, then hashed).

        Raises:
            OSError: when no second name can be made (another file system, no permission).
        """

    async def list_blobs(self) -> list[StoredFile]:
        """Every file in the blob tree; ``digest`` is None for what does not look like a blob."""

    async def list_staging(self) -> list[StoredFile]:
        """Every staging file (uploads in progress, or left by a crash)."""

    async def list_trash(self) -> list[StoredFile]:
        """Every trash file; ``digest`` is None for a name that is not ``<blake3>.<random>``."""

    async def remove_stale_staging(
        self, path: Path, cutoff: float, *, dry_run: bool = False
    ) -> StagingRemoval:
        """Remove a staging file last modified before ``cutoff`` unless an upload holds it."""

    async def checksum(
        self, blake3_hex: str, on_bytes: Callable[[int], None] | None = None
    ) -> tuple[str, int] | None:
        """blake3 hex of the stored blob and the file's inode; None when it is missing."""

    async def quarantine(self, blake3_hex: str, inode: int | None = None) -> Path | None:
        """Move the blob file aside (only if it is still ``inode``); None when nothing moved."""
