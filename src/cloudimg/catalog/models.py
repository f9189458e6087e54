"""SQLAlchemy models of the catalog, and the expressions over them that several concerns
build their queries with. Alembic migrations in ``migrations/`` own the schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from cloudimg.catalog.records import META_INDEX_CHARS

__all__ = [
    "Base",
    "Blob",
    "Event",
    "EventCounter",
    "EventDeadLetter",
    "EventEndpoint",
    "EventLease",
    "GcRuns",
    "Image",
    "OciManifest",
    "OciUpload",
    "Repository",
    "Tag",
    "TagHistory",
    "TagMeta",
    "held_by_image",
    "kept_references",
    "meta_index_rows",
    "meta_indexed",
    "utcnow",
]

# Alembic's recommended naming convention: constraints get stable names, which
# SQLite batch-mode migrations need to find them again.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with the shared naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Blob(Base):
    """Bytes stored once under their blake3 digest, with the number of rows using them."""

    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    """blake3 of the bytes, 64 lower-case hex digits."""
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    refcount: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    quarantined_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    """When fsck found bytes that do not match the digest; set, the blob is not served."""
    format: Mapped[str | None] = mapped_column(String(16), default=None)
    """Detected image format (``raw``, ``qcow2``, ...); None until inspected."""
    virtual_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """Size of the disk the image describes, in bytes; None until inspected."""
    partition_table: Mapped[str | None] = mapped_column(String(8), default=None)
    """``gpt`` or ``mbr`` when a raw image starts with one that passed its safety check."""
    inspected_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    """When the bytes were inspected; None for blobs stored before inspection existed."""
    blocked_rule: Mapped[str | None] = mapped_column(String(64), default=None)
    """The inspection rule an operator blocked the blob for; set, downloads are refused."""
    blocked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    oci_layer: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    """sha256 of the generated containerDisk layer (``cloudimg.oci.containerdisk``) around
    these bytes; None until computed (once per blob, after its upload)."""
    oci_config: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    """sha256 of that containerDisk's config; set with ``oci_layer``."""
    oci_manifest: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    """sha256 of that containerDisk's manifest; set with ``oci_layer``."""


class Repository(Base):
    """A top-level namespace; exists while it holds at least one image."""

    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    images: Mapped[list[Image]] = relationship(back_populates="repository")


class Image(Base):
    """A named image inside a repository; exists while it holds at least one tag."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("repository_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    repository: Mapped[Repository] = relationship(back_populates="images")


class Tag(Base):
    """A movable name for one blob, with the metadata uploaded alongside it."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("image_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    immutable: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set through the API: the tag cannot be overwritten, retagged or deleted."""

    blob: Mapped[Blob] = relationship()


class TagMeta(Base):
    """One key of a tag's metadata: the index the metadata query reads.

    ``Tag.meta`` stays the record (generic JSON on every backend); these rows are
    rewritten with it on every tag write (``catalog/tags.py``) and go with the tag
    (``ON DELETE CASCADE``). They carry copies of the tag's names (names never change:
    a tag, image or repository is only created and deleted) so that the two indexes
    hand out a condition's tags already in the query's order, (repository, image, tag):
    a page is one range of one index, with no join to sort, and the tag's id at the end
    of each lets the walk read the index alone (docs/architecture.md).
    """

    __tablename__ = "tag_meta"
    __table_args__ = (
        Index("ix_tag_meta_key_value_names", "key", "value", "repo", "image", "tag", "tag_id"),
        Index("ix_tag_meta_key_names", "key", "repo", "image", "tag", "tag_id"),
    )

    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(2 * META_INDEX_CHARS), primary_key=True)
    value: Mapped[str | None] = mapped_column(String(2 * META_INDEX_CHARS))
    """The value as text (JSON for a value that is not a string), ``meta_indexed``;
    None: too long."""
    repo: Mapped[str] = mapped_column(String(63))
    image: Mapped[str] = mapped_column(String(63))
    tag: Mapped[str] = mapped_column(String(128))


def meta_indexed(text: str) -> str:
    """``text`` as ``tag_meta`` holds it: NUL (valid JSON text, which PostgreSQL's text
    columns refuse) as ``\\0``, and ``\\`` doubled so that no two texts meet; at most
    twice as long. Writes and the query both go through here."""
    return text.replace("\\", "\\\\").replace("\x00", "\\0")


def meta_index_rows(
    tag_id: int, names: tuple[str, str, str], meta: dict[str, Any]
) -> list[dict[str, Any]]:
    """The ``tag_meta`` rows of the tag ``names`` (repository, image, tag) with ``meta``."""
    repo, image, tag = names
    rows = []
    for key, value in meta.items():
        if len(key) > META_INDEX_CHARS:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        kept = meta_indexed(text) if len(text) <= META_INDEX_CHARS else None
        rows.append({"tag_id": tag_id, "key": meta_indexed(key), "value": kept,
                     "repo": repo, "image": image, "tag": tag})  # fmt: skip
    return rows


class TagHistory(Base):
    """One change of a tag, kept after the tag (and its image) are gone.

    Keyed by names, not by the tag row, so a deleted tag's history stays readable. A
    ``retained`` entry holds one reference on its blob (counted in ``Blob.refcount``);
    the digest of an entry that is not retained may name bytes that are gone.
    """

    __tablename__ = "tag_history"
    __table_args__ = (Index("ix_tag_history_name", "repository", "image", "tag", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository: Mapped[str] = mapped_column(String(63))
    image: Mapped[str] = mapped_column(String(63))
    tag: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    """created, moved, retagged, deleted, immutable or released."""
    digest: Mapped[str] = mapped_column(String(64), index=True)
    """The bytes the tag named after the change (``deleted``: until it)."""
    size: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(128), default=None)
    """The name of the write token used, when it has one."""
    retained: Mapped[bool] = mapped_column(Boolean, default=False)


class GcRuns(Base):
    """What ``cloudimg gc`` runs added up to, for every server's ``/metrics`` and storage
    page: one row (``id`` 1), updated by each run that changes things. In the catalog
    because it is the one thing every server and every gc of a registry share (a bucket
    backend has no shared volume)."""

    __tablename__ = "gc_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    runs_total: Mapped[int] = mapped_column(Integer, default=0)
    failed_runs_total: Mapped[int] = mapped_column(Integer, default=0)
    """Runs that reported problems (``cloudimg gc`` exited 1)."""
    bytes_freed_total: Mapped[int] = mapped_column(BigInteger, default=0)
    last_run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_run_duration_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    last_run_bytes_freed: Mapped[int] = mapped_column(BigInteger, default=0)
    last_run_ok: Mapped[bool] = mapped_column(Boolean, default=True)


class Event(Base):
    """One change of the registry, in the outbox (``cloudimg.catalog.events``).

    Written in the transaction of the change it records, so it commits or rolls back
    with it. ``id`` is taken from ``EventCounter`` under its lock just before the
    commit: ids are given in commit order on every backend, so a reader that saw id n
    never later finds an n' < n committed (the pull cursor and each endpoint's position).
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    """The CloudEvents ``id`` (a UUID): unique across registries and restores."""
    type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(400))
    """``repo/image:tag``, ``blake3:<hex>`` of a blob, or ``gc``."""
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventCounter(Base):
    """The last event id given (one row, ``id`` 1), locked by every writer of an event."""

    __tablename__ = "event_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)


class EventEndpoint(Base):
    """Where delivery to one configured endpoint stands (its ``name`` in the config)."""

    __tablename__ = "event_endpoints"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    """The last event id delivered or dead-lettered: the next one sent is after it."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Failed attempts at the event after ``position``."""
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    delivered_total: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_total: Mapped[int] = mapped_column(BigInteger, default=0)
    """Failed attempts (each refused or unanswered request)."""
    dead_lettered_total: Mapped[int] = mapped_column(BigInteger, default=0)


class EventDeadLetter(Base):
    """An event one endpoint did not take within the configured time: kept (with its
    envelope, so gc's pruning of the outbox does not lose it) until resent."""

    __tablename__ = "event_dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(63), index=True)
    event_id: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(400))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    uid: Mapped[str] = mapped_column(String(36))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    """When it was dead-lettered."""
    error: Mapped[str] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resend: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set by ``cloudimg events resend``: the deliverer sends it again (and drops the
    row once the endpoint took it)."""


class EventLease(Base):
    """Which replica delivers events (``name`` ``delivery``): taken and renewed with a
    conditional update, so one process at a time sends."""

    __tablename__ = "event_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OciUpload(Base):
    """An OCI blob upload session; its bytes so far are a staging file on the data volume.

    Kept in the catalog so that a push resumes on any replica and after a restart;
    ``cloudimg gc`` drops sessions idle for longer than its grace.
    """

    __tablename__ = "oci_uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The session's id, also the name of its staging file."""
    repository: Mapped[str] = mapped_column(String(63))
    image: Mapped[str] = mapped_column(String(63))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    """Bytes received and made durable: the offset the next chunk starts at."""
    blake3: Mapped[str | None] = mapped_column(String(64), default=None)
    """Set when the upload finished (its digest verified): it takes no more bytes."""
    sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class OciManifest(Base):
    """A manifest pushed over ``/v2`` for a disk, kept so pulls return exactly it.

    Served while ``blob`` (the disk the tag push named) is held by a tag or retained
    history entry of the image; the generated containerDisk is served otherwise. The
    row is dropped, and the references its ``layer_blob`` and ``config_blob`` hold are
    released, in the tag write that lets the image stop holding ``blob``.
    """

    __tablename__ = "oci_manifests"
    __table_args__ = (Index("ix_oci_manifests_name", "repository", "image", "digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository: Mapped[str] = mapped_column(String(63))
    image: Mapped[str] = mapped_column(String(63))
    digest: Mapped[str] = mapped_column(String(64))
    """sha256 of ``body``."""
    media_type: Mapped[str] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    blob: Mapped[str] = mapped_column(String(64), index=True)
    """blake3 of the disk; empty for a manifest pushed by digest (an image index's
    child) that no tag has taken yet, which is never served."""
    config_digest: Mapped[str] = mapped_column(String(64))
    config: Mapped[bytes] = mapped_column(LargeBinary)
    """The config inline: the empty ``{}`` descriptor, and rows kept before 0006; empty
    when ``config_blob`` holds it."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    role: Mapped[str] = mapped_column(String(8), default="top", server_default="top")
    """``top``: pushed by tag (a pull by tag returns the newest); ``child``: an image
    index's child (pulled by digest); ``pending``: pushed by digest, never served."""
    layer_blob: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    """blake3 of the pushed layer when it is not the disk itself (a containerDisk's tar,
    another index child's disk); holds one reference in ``Blob.refcount``."""
    config_blob: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    """blake3 of the pushed config in the blob store; holds one reference."""
    tag: Mapped[str | None] = mapped_column(String(128), default=None)
    """The tag a ``top`` row was pushed to, while that tag was last written by this push
    (a ``/reg`` write of the tag clears it); a pull of that tag returns the row when it
    is a container image or an index. NULL: served by digest only."""


def kept_references() -> ColumnElement[int]:
    """The references kept manifests hold on the outer query's blob (layer, config)."""
    layers = select(func.count()).where(OciManifest.layer_blob == Blob.digest)
    configs = select(func.count()).where(OciManifest.config_blob == Blob.digest)
    return layers.scalar_subquery() + configs.scalar_subquery()


def held_by_image(repo: str, image: str) -> ColumnElement[bool]:
    """The blobs a tag of ``repo/image``, or a retained history entry of one, references.

    A retained history entry holds its bytes like a tag, also after the image's last
    tag is gone.
    """
    by_tag = (
        select(Tag.digest)
        .join(Image, Image.id == Tag.image_id)
        .join(Repository, Repository.id == Image.repository_id)
        .where(Repository.name == repo, Image.name == image)
    )
    by_history = select(TagHistory.digest).where(
        TagHistory.repository == repo, TagHistory.image == image, TagHistory.retained
    )
    return or_(Blob.digest.in_(by_tag), Blob.digest.in_(by_history))
