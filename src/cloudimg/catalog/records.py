"""What catalog reads return: plain frozen records, detached from the database session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "BlobRecord",
    "BlobRef",
    "BlobState",
    "CatalogSnapshot",
    "ImageDetails",
    "RefcountRepair",
    "StorageTotals",
    "TagDetails",
    "TagInfo",
    "TagRecord",
]


@dataclass(frozen=True, slots=True)
class BlobRef:
    """What a download needs: which bytes, how many, their digests and age."""

    digest: str
    sha256: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class TagInfo:
    """A tag with its blob and metadata, as the meta endpoint shows it."""

    repo: str
    image: str
    tag: str
    digest: str
    sha256: str
    size: int
    meta: dict[str, Any]
    created: datetime
    updated: datetime
    format: str | None = None
    """Detected image format; None for bytes stored before inspection existed."""
    virtual_size: int | None = None


@dataclass(frozen=True, slots=True)
class TagDetails:
    """A tag as a detailed listing shows it."""

    tag: str
    digest: str
    sha256: str
    size: int
    created: datetime
    updated: datetime
    immutable: bool


@dataclass(frozen=True, slots=True)
class ImageDetails:
    """An image as a detailed listing shows it."""

    image: str
    tags: int
    size: int
    """Sum of its tags' sizes."""
    updated: datetime
    """The last change of any of its tags."""


@dataclass(frozen=True, slots=True)
class TagRecord:
    """One tag of a catalog snapshot."""

    repo: str
    image: str
    tag: str
    digest: str

    def __str__(self) -> str:
        return f"{self.repo}/{self.image}:{self.tag}"


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """One blob row of a catalog snapshot, with the tags that reference it."""

    digest: str
    size: int
    sha256: str
    refcount: int
    quarantined: bool
    tags: tuple[TagRecord, ...]
    history: int = 0
    """Retained history entries holding the blob (they count in ``refcount``)."""

    @property
    def references(self) -> int:
        """What the reference count should be: tags plus retained history entries."""
        return len(self.tags) + self.history


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """Every blob row and tag, read in one statement (one consistent view)."""

    blobs: dict[str, BlobRecord]
    tags: list[TagRecord]


@dataclass(frozen=True, slots=True)
class BlobState:
    """A blob row as it is now, with the number of tags and retained history entries
    that reference it (``references``)."""

    digest: str
    size: int
    refcount: int
    references: int
    quarantined: bool


@dataclass(frozen=True, slots=True)
class RefcountRepair:
    """A reference count set right by ``Catalog.repair_refcount``."""

    digest: str
    size: int
    was: int
    now: int
    removed: bool
    """No tag referenced the blob: its row and file went."""


@dataclass(frozen=True, slots=True)
class StorageTotals:
    """What the catalog holds, in a few numbers (``Catalog.storage_totals``)."""

    blobs: int
    """Blob rows: distinct contents stored."""
    stored_bytes: int
    """Sum of the sizes of every blob row."""
    tags: int
    logical_bytes: int
    """Sum of the sizes of every tag's blob: what storing a copy per tag would take."""
    referenced_bytes: int
    """Sum of the sizes of the distinct blobs some tag names."""

    @property
    def deduplicated_bytes(self) -> int:
        """Bytes not stored because identical images share one blob."""
        return self.logical_bytes - self.referenced_bytes
