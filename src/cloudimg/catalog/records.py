"""What catalog reads return: plain frozen records, detached from the database session,
and the one check every face that serves bytes makes on a blob (:func:`servable`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cloudimg.errors import BlobCorruptError, ImageBlockedError

if TYPE_CHECKING:
    from cloudimg.catalog.models import Blob, GcRuns

__all__ = [
    "META_INDEX_CHARS",
    "BlobBlock",
    "BlobRecord",
    "BlobRef",
    "BlobState",
    "CatalogSnapshot",
    "GcRecord",
    "ImageDetails",
    "MetaQuery",
    "RefcountRepair",
    "RepositoryDetails",
    "StorageTotals",
    "TagDetails",
    "TagInfo",
    "TagRecord",
    "blob_block",
    "blocked_error",
    "corrupt_blob",
    "gc_record",
    "servable",
]


@dataclass(frozen=True, slots=True)
class BlobBlock:
    """Why and since when an operator blocked a blob (``Catalog.block_blob``)."""

    rule: str
    """The inspection rule the bytes break, e.g. ``qcow2-backing-file``."""
    since: datetime


def blob_block(rule: str | None, since: datetime | None) -> BlobBlock | None:
    """The block a blob row's ``blocked_rule`` and ``blocked_at`` say; None: served."""
    return None if rule is None or since is None else BlobBlock(rule, since)


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
    blocked: BlobBlock | None = None
    """Set while an operator blocks the bytes: downloads are refused, ``/meta`` says why."""
    quarantined: bool = False
    """fsck found the stored bytes bad (listings show such tags; ``get_tag`` refuses them)."""
    immutable: bool = False
    """Made immutable by a write (``PUT …/immutable``); an operator's rule
    (``Catalog.immutable_by_rule``) protects a tag whatever this says."""


META_INDEX_CHARS = 256
"""Longest metadata key or value the query index holds: a longer value is indexed as
present (its key) without its value; a longer key is not indexed. A query names keys
and values of at most this length (docs/architecture.md, "Queries over metadata")."""


@dataclass(frozen=True, slots=True)
class MetaQuery:
    """Which tags a metadata query answers: all conditions hold (AND)."""

    equals: tuple[tuple[str, str], ...] = ()
    """(key, value): the tag's metadata has ``key`` with exactly this (text) value."""
    present: tuple[str, ...] = ()
    """Keys the tag's metadata has, whatever their value."""
    repo_prefix: str = ""
    """Only repositories whose name starts with this."""
    image_prefix: str = ""
    """Only images whose name starts with this."""


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
class RepositoryDetails:
    """A repository as the repository listing of the web pages shows it."""

    repository: str
    images: int
    tags: int
    """Tags of all its images."""
    size: int
    """Sum of its tags' sizes (bytes two tags share count twice, as in ``ImageDetails``)."""
    updated: datetime
    """The last change of any of its tags (its creation when it holds none)."""


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
    inspected: bool = False
    """The bytes were inspected (format and virtual size known); False for blobs stored
    before inspection existed, and for unsafe ones nobody blocked yet."""
    blocked: BlobBlock | None = None
    kept: int = 0
    """References kept ``/v2`` manifests hold (a pushed layer or config; they count in
    ``refcount``)."""

    @property
    def references(self) -> int:
        """What the reference count should be: tags, retained history entries and kept
        manifests' layers and configs."""
        return len(self.tags) + self.history + self.kept

    @property
    def is_disk(self) -> bool:
        """A tag or retained history entry holds it (not only a kept manifest)."""
        return bool(self.tags) or self.history > 0 or self.kept == 0


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
class GcRecord:
    """What the ``cloudimg gc`` runs that changed things added up to, and the last one."""

    runs_total: int = 0
    failed_runs_total: int = 0
    """Runs that reported problems (``cloudimg gc`` exited 1)."""
    bytes_freed_total: int = 0
    last_run_timestamp: float = 0.0
    """Unix time at which the last run finished."""
    last_run_duration_seconds: float = 0.0
    last_run_bytes_freed: int = 0
    last_run_ok: bool = True


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
    history_only_blobs: int = 0
    history_only_bytes: int = 0
    """Blobs no tag names that retained history entries hold (``--keep-history``): the
    figures ``cloudimg du`` prints as "held only by tag history"."""
    oci_kept_blobs: int = 0
    oci_kept_bytes: int = 0
    """Blobs only kept ``/v2`` pushes hold (containerDisk layers, configs; no tag, no
    retained history entry): the figures ``cloudimg du`` prints as "kept /v2 layers and
    configs". gc leaves them while their manifest is kept."""

    @property
    def deduplicated_bytes(self) -> int:
        """Bytes not stored because identical images share one blob."""
        return self.logical_bytes - self.referenced_bytes


def corrupt_blob(digest: str) -> BlobCorruptError:
    return BlobCorruptError(
        f"the stored bytes of blake3:{digest} failed an integrity check and are quarantined;"
        " upload the image again",
        {"digest": f"blake3:{digest}"},
    )


def blocked_error(digest: str, block: BlobBlock) -> ImageBlockedError:
    # The message names the rule and says who can act: the bytes are fine as stored,
    # so "upload again" (DATA_LOSS's advice) would not help.
    return ImageBlockedError(
        f"the image blake3:{digest} is blocked by the registry's operator: it breaks"
        f" the image safety rule {block.rule!r}",
        {"digest": f"blake3:{digest}", "rule": block.rule, "since": block.since.isoformat()},
    )


def servable(blob: Blob) -> BlobRef:
    """What a download of ``blob`` needs, unless fsck quarantined it or an operator
    blocked it (every face that serves bytes, ``/reg`` and ``/v2``, asks here)."""
    if blob.quarantined_at is not None:
        raise corrupt_blob(blob.digest)
    block = blob_block(blob.blocked_rule, blob.blocked_at)
    if block is not None:
        raise blocked_error(blob.digest, block)
    return BlobRef(blob.digest, blob.sha256, blob.size, blob.created_at)


def gc_record(row: GcRuns) -> GcRecord:
    """The figures of the catalog's gc runs row."""
    return GcRecord(
        runs_total=row.runs_total,
        failed_runs_total=row.failed_runs_total,
        bytes_freed_total=row.bytes_freed_total,
        last_run_timestamp=row.last_run_at.timestamp(),
        last_run_duration_seconds=row.last_run_duration_seconds,
        last_run_bytes_freed=row.last_run_bytes_freed,
        last_run_ok=row.last_run_ok,
    )
