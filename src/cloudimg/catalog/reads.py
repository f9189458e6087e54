"""The catalog's reads for the API: listings, tags, references, totals, readiness."""

from __future__ import annotations

import functools

from sqlalchemy import String, cast, exists, func, or_, select, union
from sqlalchemy.orm import Session

from cloudimg.blobstore import BlobReader
from cloudimg.catalog.database import WRITE
from cloudimg.catalog.meta_query import query_tags
from cloudimg.catalog.models import (
    Blob,
    GcRuns,
    Image,
    OciManifest,
    Repository,
    Tag,
    TagHistory,
    held_by_image,
    kept_references,
)
from cloudimg.catalog.paging import ALL, Page
from cloudimg.catalog.records import (
    BlobRef,
    GcRecord,
    ImageDetails,
    MetaQuery,
    StorageTotals,
    TagDetails,
    TagInfo,
    blob_block,
    blocked_error,
    corrupt_blob,
    gc_record,
    servable,
)
from cloudimg.catalog.transaction import CatalogBase
from cloudimg.digest import Digest, Reference
from cloudimg.errors import NotFoundError

__all__ = ["CatalogReads"]


def _tag_info(repo: str, image: str, tag: Tag, blob: Blob) -> TagInfo:
    return TagInfo(
        repo=repo,
        image=image,
        tag=tag.name,
        digest=blob.digest,
        sha256=blob.sha256,
        size=blob.size,
        meta=dict(tag.meta),
        created=tag.created_at,
        updated=tag.updated_at,
        format=blob.format,
        virtual_size=blob.virtual_size,
        quarantined=blob.quarantined_at is not None,
        blocked=blob_block(blob.blocked_rule, blob.blocked_at),
        immutable=tag.immutable,
    )


class CatalogReads(CatalogBase):
    """Plain queries; a reference whose file a crash left in trash is put back."""

    async def list_repositories(self, page: Page = ALL) -> list[str]:
        """Names of the repositories that hold an image, sorted; ``page`` picks a slice."""
        query = page.apply(select(Repository.name), Repository.name)
        return await self._query(lambda session: list(session.scalars(query)))

    async def list_images(self, repo: str, page: Page = ALL) -> list[str]:
        """Names of the images in ``repo``, sorted; ``NotFoundError`` if there is no such repo."""

        def query(session: Session) -> list[str]:
            repo_id = _repository_id(session, repo)
            images = select(Image.name).where(Image.repository_id == repo_id)
            return list(session.scalars(page.apply(images, Image.name)))

        return await self._query(query)

    async def list_tags(self, repo: str, image: str) -> list[str]:
        """Tag names of ``repo/image``, sorted; ``NotFoundError`` if there is no such image."""

        def query(session: Session) -> list[str]:
            image_id = _image_id(session, repo, image)
            tags = select(Tag.name).where(Tag.image_id == image_id).order_by(Tag.name)
            return list(session.scalars(tags))

        return await self._query(query)

    async def list_tag_infos(self, repo: str, image: str, page: Page = ALL) -> list[TagInfo]:
        """The tags of ``repo/image`` with their blobs, sorted by name (quarantined ones too).

        ``page.contains`` matches the tag name or the metadata (its JSON text, keys and
        values). ``NotFoundError`` if there is no such image.
        """

        def query(session: Session) -> list[TagInfo]:
            image_id = _image_id(session, repo, image)
            tags = (
                select(Tag, Blob)
                .join(Blob, Blob.digest == Tag.digest)
                .where(Tag.image_id == image_id)
            )
            tags = page.apply(tags, Tag.name, also=func.lower(cast(Tag.meta, String)))
            return [_tag_info(repo, image, tag, blob) for tag, blob in session.execute(tags)]

        return await self._query(query)

    async def list_tag_details(
        self, repo: str, image: str, limit: int, after: str | None = None
    ) -> list[TagDetails]:
        """Up to ``limit`` tags of ``repo/image`` after the name ``after``, sorted, with
        their bytes and times; ``NotFoundError`` if there is no such image."""

        def query(session: Session) -> list[TagDetails]:
            image_id = _image_id(session, repo, image)
            tags = (
                select(Tag.name, Blob.digest, Blob.sha256, Blob.size)
                .add_columns(Tag.created_at, Tag.updated_at, Tag.immutable)
                .join(Blob, Blob.digest == Tag.digest)
                .where(Tag.image_id == image_id)
                .order_by(Tag.name)
                .limit(limit)
            )
            if after is not None:
                tags = tags.where(Tag.name > after)
            return [TagDetails(*row) for row in session.execute(tags)]

        return await self._query(query)

    async def query_tags(
        self, wanted: MetaQuery, limit: int, after: tuple[str, str, str] | None = None
    ) -> list[TagInfo]:
        """Up to ``limit`` tags that ``wanted`` matches, sorted by (repository, image, tag),
        after the tag ``after`` names: keyset pagination over the three names
        (``catalog/meta_query.py`` says how)."""
        return await self._query(functools.partial(query_tags, wanted, limit, after))

    async def list_image_details(
        self, repo: str, limit: int, after: str | None = None
    ) -> list[ImageDetails]:
        """Up to ``limit`` images of ``repo`` after the name ``after``, sorted, with their
        number of tags, the bytes those add up to and the last change; ``NotFoundError``
        if there is no such repository."""

        def query(session: Session) -> list[ImageDetails]:
            repo_id = _repository_id(session, repo)
            images = (
                select(Image.name, func.count(Tag.id), func.coalesce(func.sum(Blob.size), 0))
                .add_columns(func.max(Tag.updated_at))
                .join(Tag, Tag.image_id == Image.id)
                .join(Blob, Blob.digest == Tag.digest)
                .where(Image.repository_id == repo_id)
                .group_by(Image.name)
                .order_by(Image.name)
                .limit(limit)
            )
            if after is not None:
                images = images.where(Image.name > after)
            return [
                ImageDetails(name, int(tags), int(size), updated)
                for name, tags, size, updated in session.execute(images)
            ]

        return await self._query(query)

    async def storage_totals(self) -> StorageTotals:
        """Counts and byte sums of blobs and tags, from one consistent view (aggregates only)."""
        blobs = select(func.count(), func.coalesce(func.sum(Blob.size), 0))
        tags = select(func.count(), func.coalesce(func.sum(Blob.size), 0)).select_from(
            Tag.__table__.join(Blob.__table__, Tag.digest == Blob.digest)
        )
        referenced = select(func.coalesce(func.sum(Blob.size), 0)).where(
            exists().where(Tag.digest == Blob.digest)
        )
        untagged = ~exists().where(Tag.digest == Blob.digest)
        retained = exists().where(TagHistory.digest == Blob.digest, TagHistory.retained.is_(True))
        history_only = select(func.count(), func.coalesce(func.sum(Blob.size), 0)).where(
            untagged, retained
        )
        # As `cloudimg du` counts them: what only kept manifests' layers and configs hold.
        oci_kept = select(func.count(), func.coalesce(func.sum(Blob.size), 0)).where(
            untagged, ~retained, kept_references() > 0
        )
        async with self._read() as session, session.begin():
            blob_count, stored = (await session.execute(blobs)).one()
            tag_count, logical = (await session.execute(tags)).one()
            referenced_bytes = await session.scalar(referenced)
            held_blobs, held_bytes = (await session.execute(history_only)).one()
            kept_blobs, kept_bytes = (await session.execute(oci_kept)).one()
        return StorageTotals(
            int(blob_count),
            int(stored),
            int(tag_count),
            int(logical),
            int(referenced_bytes or 0),
            int(held_blobs),
            int(held_bytes),
            int(kept_blobs),
            int(kept_bytes),
        )

    async def gc_record(self) -> GcRecord | None:
        """What the gc runs recorded (``CatalogMaintenance.record_gc_run``); None when
        none did."""
        row = await self._query(lambda session: session.get(GcRuns, 1))
        return None if row is None else gc_record(row)

    async def get_tag(self, repo: str, image: str, tag: str) -> TagInfo:
        """The tag with its blob; ``NotFoundError`` naming what is missing (the repository,
        the image or the tag) if it does not exist."""

        def query(session: Session) -> TagInfo:
            info = _find_tag(session, repo, image, tag)
            if info is None:
                _image_id(session, repo, image)  # says so when the repository or image is missing
                raise NotFoundError("tag not found", {"repo": repo, "image": image, "tag": tag})
            return info

        info = await self._query(query)
        if info.quarantined:
            raise corrupt_blob(info.digest)
        return info

    async def find_tag(self, repo: str, image: str, tag: str) -> TagInfo | None:
        """The tag with its blob as it is (also a quarantined one), or None: for a writer
        that checks a tag it may be about to create."""
        return await self._query(lambda session: _find_tag(session, repo, image, tag))

    async def resolve(
        self, repo: str, image: str, reference: Reference, *, present: bool = False
    ) -> BlobRef:
        """The blob a tag name or a digest names in an image, to download it.

        A digest reference is valid while a tag of this image, or a retained history
        entry of one of its tags (also of a deleted tag), holds that blob.
        The caller has validated the tag name. A blob an operator blocked raises
        ``ImageBlockedError`` naming the rule (its ``/meta`` still answers: ``get_tag``).
        ``present``: the caller sends no reader that would find the bytes missing (a
        redirect to the object store), so a blob whose bytes are gone raises
        ``NotFoundError`` as ``open_blob`` does, instead of being named.
        """
        ref = await self._lookup(repo, image, reference)
        if await self.blobs.size_of(ref.digest) is None:
            ref = await self._recover(repo, image, reference, ref)
            if present and await self.blobs.size_of(ref.digest) is None:
                raise NotFoundError("image not found", {"repo": repo, "image": image})
        return ref

    async def open_blob(
        self, repo: str, image: str, reference: Reference
    ) -> tuple[BlobRef, BlobReader]:
        """``resolve`` and open the bytes, with one look at the file: the download path.

        The caller closes the reader. ``NotFoundError`` also when a delete commits
        between the catalog read and the open.
        """
        ref = await self._lookup(repo, image, reference)
        reader = await self.blobs.open(ref.digest)
        if reader is None:
            ref = await self._recover(repo, image, reference, ref)
            reader = await self.blobs.open(ref.digest)
            if reader is None:
                raise NotFoundError("image not found", {"repo": repo, "image": image})
        return ref, reader

    async def _recover(self, repo: str, image: str, reference: Reference, ref: BlobRef) -> BlobRef:
        """What ``reference`` names now that the file of ``ref`` was found missing.

        A crash between a delete's trash rename and its commit leaves the file in trash
        while the tag stays: put it back. If a delete or an overwrite committed meanwhile
        instead, the reference may now name other bytes (or nothing): look again.
        """
        if await self.restore_blob(ref.digest):
            return ref
        return await self._lookup(repo, image, reference)

    async def _lookup(self, repo: str, image: str, reference: Reference) -> BlobRef:
        if isinstance(reference, str):
            info = await self.get_tag(repo, image, reference)
            if info.blocked is not None:
                raise blocked_error(info.digest, info.blocked)
            return BlobRef(info.digest, info.sha256, info.size, info.updated)
        digest = reference
        column = Blob.digest if digest.algorithm == "blake3" else Blob.sha256
        held = select(Blob).where(column == digest.hex).where(held_by_image(repo, image)).limit(1)
        blob = await self._query(lambda session: session.scalar(held))
        if blob is None:
            raise NotFoundError(
                "no tag or retained history entry of this image references that digest",
                {"repo": repo, "image": image, "digest": str(digest)},
            )
        return servable(blob)

    async def names_holding(self, digest: Digest) -> list[tuple[str, str]]:
        """``(repo, image)`` of every image that holds the bytes of ``digest``: a tag, a
        retained history entry, or a kept ``/v2`` push (its layer or config), sorted.

        What the scopes ask of a write that names bytes by digest (a retag's source, a
        manifest's blob): may the writer pull one of these names.
        """
        column = Blob.digest if digest.algorithm == "blake3" else Blob.sha256
        blobs = select(Blob.digest).where(column == digest.hex)
        by_tag = (
            select(Repository.name, Image.name)
            .join(Image, Image.repository_id == Repository.id)
            .join(Tag, Tag.image_id == Image.id)
            .where(Tag.digest.in_(blobs))
        )
        by_history = select(TagHistory.repository, TagHistory.image).where(
            TagHistory.retained.is_(True), TagHistory.digest.in_(blobs)
        )
        by_push = select(OciManifest.repository, OciManifest.image).where(
            OciManifest.role != "pending",
            or_(OciManifest.layer_blob.in_(blobs), OciManifest.config_blob.in_(blobs)),
        )
        query = union(by_tag, by_history, by_push)

        def rows(session: Session) -> list[tuple[str, str]]:
            return sorted((str(repo), str(image)) for repo, image in session.execute(query))

        return await self._query(rows)

    async def check_writable(self) -> None:
        """Begin a write transaction, read one row, roll back: what readiness needs to know.

        On SQLite this takes the write lock for a moment, so a database another process
        holds locked fails here (after the busy timeout) as uploads and deletes would.
        """
        async with self._read() as session:
            await session.connection(execution_options=WRITE)
            await session.scalar(select(Blob.digest).limit(1))
        # Closing the session rolls the (empty) transaction back.


def _find_tag(session: Session, repo: str, image: str, tag: str) -> TagInfo | None:
    found = (
        select(Tag, Blob)
        .join(Blob, Blob.digest == Tag.digest)
        .join(Image, Image.id == Tag.image_id)
        .join(Repository, Repository.id == Image.repository_id)
        .where(Repository.name == repo, Image.name == image, Tag.name == tag)
    )
    row = session.execute(found).one_or_none()
    return None if row is None else _tag_info(repo, image, *row)


def _repository_id(session: Session, repo: str) -> int:
    """The id of repository ``repo``; ``NotFoundError`` if there is none."""
    repo_id = session.scalar(select(Repository.id).where(Repository.name == repo))
    if repo_id is None:
        raise NotFoundError("repository not found", {"repo": repo})
    return repo_id


def _image_id(session: Session, repo: str, image: str) -> int:
    """The id of image ``repo/image``; ``NotFoundError`` naming the repository when there
    is none, else the image when there is none."""
    image_id = session.scalar(
        select(Image.id)
        .join(Repository, Repository.id == Image.repository_id)
        .where(Repository.name == repo, Image.name == image)
    )
    if image_id is None:
        _repository_id(session, repo)  # the repository itself may be what is missing
        raise NotFoundError("image not found", {"repo": repo, "image": image})
    return image_id
