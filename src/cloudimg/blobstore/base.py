"""The blob store interface every backend implements (one contract test suite checks it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["BlobStore", "StagedBlob", "StagingWriter"]


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A fully written, fsynced staging file and the digests of its bytes."""

    blake3: str
    sha256: str
    size: int
    path: Path


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

    async def move_to_trash(self, blake3_hex: str) -> Path | None:
        """Rename the blob out of the blob tree; returns the trash path, None if absent."""

    async def restore_from_trash(self, trash_path: Path, blake3_hex: str) -> None:
        """Undo ``move_to_trash`` (when the transaction that trashed it rolled back)."""

    async def purge(self, trash_path: Path) -> None:
        """Delete a trashed file for good; missing files are fine."""
