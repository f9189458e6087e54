"""The catalog's reads for the API: listings, tags, references, totals, readiness."""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.catalog.database import WRITE
from cloudimg.catalog.models import Blob, Image, Repository, Tag, TagHistory
from cloudimg.catalog.records import BlobRef, ImageDetails, StorageTotals, TagDetails, TagInfo
from cloudimg.catalog.transaction import CatalogBase
from cloudimg.digest import Reference
from cloudimg.errors import BlobCorruptError, NotFoundError

__all__ = ["CatalogReads", "corrupt_blob", "held_by_image"]


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


def corrupt_blob(digest: str) -> BlobCorruptError:
    return BlobCorruptError(
        f"the stored bytes of blake3:{digest} failed an integrity check and are quarantined;"
        " upload the image again",
        {"digest": f"blake3:{digest}"},
    )


class CatalogReads(CatalogBase):
    """Plain queries; a reference whose file a crash left in trash is put back."""

    async def list_repositories(self) -> list[str]:
        """Names of every repository that holds an image, sorted."""
        async with self._read() as session:
            rows = await session.scalars(select(Repository.name).order_by(Repository.name))
            return list(rows)

    async def list_images(self, repo: str) -> list[str]:
        """Names of the images in ``repo``, sorted; ``NotFoundError`` if there is no such repo."""
        async with self._read() as session:
            repo_id = await session.scalar(select(Repository.id).where(Repository.name == repo))
            if repo_id is None:
                raise NotFoundError("repository not found", {"repo": repo})
            rows = await session.scalars(
                select(Image.name).where(Image.repository_id == repo_id).order_by(Image.name)
            )
            return list(rows)

    async def list_tags(self, repo: str, image: str) -> list[str]:
        """Tag names of ``repo/image``, sorted; ``NotFoundError`` if there is no such image."""
        async with self._read() as session:
            image_id = await self._image_id(session, repo, image)
            if image_id is None:
                raise NotFoundError("image not found", {"repo": repo, "image": image})
            rows = await session.scalars(
                select(Tag.name).where(Tag.image_id == image_id).order_by(Tag.name)
            )
            return list(rows)

    async def list_tag_details(
        self, repo: str, image: str, limit: int, after: str | None = None
    ) -> list[TagDetails]:
        """Up to ``limit`` tags of ``repo/image`` after the name ``after``, sorted, with
        their bytes and times; ``NotFoundError`` if there is no such image."""
        async with self._read() as session:
            image_id = await self._image_id(session, repo, image)
            if image_id is None:
                raise NotFoundError("image not found", {"repo": repo, "image": image})
            query = (
                select(Tag.name, Blob.digest, Blob.sha256, Blob.size)
                .add_columns(Tag.created_at, Tag.updated_at, Tag.immutable)
                .join(Blob, Blob.digest == Tag.digest)
                .where(Tag.image_id == image_id)
                .order_by(Tag.name)
                .limit(limit)
            )
            if after is not None:
                query = query.where(Tag.name > after)
            rows = (await session.execute(query)).all()
        return [TagDetails(*row) for row in rows]

    async def list_image_details(
        self, repo: str, limit: int, after: str | None = None
    ) -> list[ImageDetails]:
        """Up to ``limit`` images of ``repo`` after the name ``after``, sorted, with their
        number of tags, the bytes those add up to and the last change; ``NotFoundError``
        if there is no such repository."""
        async with self._read() as session:
            repo_id = await session.scalar(select(Repository.id).where(Repository.name == repo))
            if repo_id is None:
                raise NotFoundError("repository not found", {"repo": repo})
            query = (
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
                query = query.where(Image.name > after)
            rows = (await session.execute(query)).all()
        return [
            ImageDetails(name, int(tags), int(size), updated) for name, tags, size, updated in rows
        ]

    async def storage_totals(self) -> StorageTotals:
        """Counts and byte sums of blobs and tags, from one consistent view (aggregates only)."""
        blobs = select(func.count(), func.coalesce(func.sum(Blob.size), 0))
        tags = select(func.count(), func.coalesce(func.sum(Blob.size), 0)).select_from(
            Tag.__table__.join(Blob.__table__, Tag.digest == Blob.digest)
        )
        referenced = select(func.coalesce(func.sum(Blob.size), 0)).where(
            exists().where(Tag.digest == Blob.digest)
        )
        async with self._read() as session, session.begin():
            blob_count, stored = (await session.execute(blobs)).one()
            tag_count, logical = (await session.execute(tags)).one()
            referenced_bytes = await session.scalar(referenced)
        return StorageTotals(
            int(blob_count), int(stored), int(tag_count), int(logical), int(referenced_bytes or 0)
        )

    async def get_tag(self, repo: str, image: str, tag: str) -> TagInfo:
        """The tag with its blob; ``NotFoundError`` if it does not exist."""
        async with self._read() as session:
            row = (
                await session.execute(
                    select(Tag, Blob)
                    .join(Blob, Blob.digest == Tag.digest)
                    .join(Image, Image.id == Tag.image_id)
                    .join(Repository, Repository.id == Image.repository_id)
                    .where(Repository.name == repo, Image.name == image, Tag.name == tag)
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError("tag not found", {"repo": repo, "image": image, "tag": tag})
        tag_row, blob = row
        if blob.quarantined_at is not None:
            raise corrupt_blob(blob.digest)
        return TagInfo(
            repo=repo,
            image=image,
            tag=tag,
            digest=blob.digest,
            sha256=blob.sha256,
            size=blob.size,
            meta=dict(tag_row.meta),
            created=tag_row.created_at,
            updated=tag_row.updated_at,
            format=blob.format,
            virtual_size=blob.virtual_size,
        )

    async def resolve(self, repo: str, image: str, reference: Reference) -> BlobRef:
        """The blob a tag name or a digest names in an image.

        A digest reference is valid while a tag of this image, or a retained history
        entry of one of its tags (also of a deleted tag), holds that blob.
        The caller has validated the tag name.
        """
        ref = await self._lookup(repo, image, reference)
        # A crash between a delete's trash rename and its commit leaves the file in trash
        # while the tag stays: put it back. If a delete or an overwrite committed meanwhile
        # instead, the reference may now name other bytes (or nothing): look again.
        if await self.blobs.size_of(ref.digest) is None and not await self.restore_blob(ref.digest):
            ref = await self._lookup(repo, image, reference)
        return ref

    async def _lookup(self, repo: str, image: str, reference: Reference) -> BlobRef:
        if isinstance(reference, str):
            info = await self.get_tag(repo, image, reference)
            return BlobRef(info.digest, info.sha256, info.size, info.updated)
        digest = reference
        column = Blob.digest if digest.algorithm == "blake3" else Blob.sha256
        async with self._read() as session:
            blob = await session.scalar(
                select(Blob).where(column == digest.hex).where(held_by_image(repo, image)).limit(1)
            )
        if blob is None:
            raise NotFoundError(
                "no tag or retained history entry of this image references that digest",
                {"repo": repo, "image": image, "digest": str(digest)},
            )
        if blob.quarantined_at is not None:
            raise corrupt_blob(blob.digest)
        return BlobRef(blob.digest, blob.sha256, blob.size, blob.created_at)

    async def check_writable(self) -> None:
        """Begin a write transaction, read one row, roll back: what readiness needs to know.

        On SQLite this takes the write lock for a moment, so a database another process
        holds locked fails here (after the busy timeout) as uploads and deletes would.
        """
        async with self._read() as session:
            await session.connection(execution_options=WRITE)
            await session.scalar(select(Blob.digest).limit(1))
        # Closing the session rolls the (empty) transaction back.

    async def _image_id(self, session: AsyncSession, repo: str, image: str) -> int | None:
        return await session.scalar(
            select(Image.id)
            .join(Repository, Repository.id == Image.repository_id)
            .where(Repository.name == repo, Image.name == image)
        )
