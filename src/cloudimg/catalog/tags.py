"""Tag writes: an upload's commit and a tag's delete, each one transaction."""

from __future__ import annotations

from sqlalchemy import delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.blobstore import StagedBlob
from cloudimg.catalog.models import Blob, Image, Repository, Tag, utcnow
from cloudimg.catalog.transaction import CatalogBase, FileEffects
from cloudimg.errors import NotFoundError, UnavailableError
from cloudimg.images import Inspection

__all__ = ["TagWrites"]


class TagWrites(CatalogBase):
    """Name staged bytes with a tag, drop a tag; lock order repository, image, tag, blob."""

    async def commit_upload(
        self,
        repo: str,
        image: str,
        tag: str,
        staged: StagedBlob,
        meta: dict[str, str],
        inspection: Inspection | None = None,
    ) -> None:
        """Make ``repo/image:tag`` name the staged bytes, in one transaction.

        The blob file is put in place under the catalog lock (unless the digest is
        stored already: deduplication); a tag that pointed elsewhere releases its
        old blob, which is trashed if that was its last reference. ``inspection`` (what
        the bytes are, see ``cloudimg.images``) is recorded on a blob not inspected yet;
        without one the blob stays uninspected (fsck inspects it later).
        """

        async def change(session: AsyncSession, effects: FileEffects) -> None:
            # Lock order, as in delete_tag: repository, image, tag, blob.
            image_id = await self._get_or_create_image(session, repo, image)
            blob = await self._lock_or_create_blob(session, staged)
            if inspection is not None and blob.inspected_at is None:
                self._record_inspection(blob, inspection)
            current = await session.scalar(
                select(Tag).where(Tag.image_id == image_id, Tag.name == tag).with_for_update()
            )
            now = utcnow()
            if current is None:
                session.add(
                    Tag(
                        image_id=image_id,
                        name=tag,
                        digest=blob.digest,
                        meta=meta,
                        created_at=now,
                        updated_at=now,
                    )
                )
                blob.refcount += 1
            else:
                previous = current.digest
                current.digest = blob.digest
                current.meta = meta
                current.updated_at = now
                if previous != blob.digest:
                    blob.refcount += 1
                    await session.flush()  # the tag lets go of the old blob row first
                    await self._release(session, previous, effects)
            # Re-uploading heals: whatever sits under a quarantined digest is suspect, the
            # staged bytes have the digest. (A retry finds its own placed file: kept.)
            displace = blob.quarantined_at is not None
            blob.quarantined_at = None
            await session.flush()
            await self._ensure_blob_file(staged, displace=displace)

        await self._write(change)

    async def delete_tag(self, repo: str, image: str, tag: str) -> None:
        """Drop the tag and its reference; empty images and repositories go with it."""

        async def change(session: AsyncSession, effects: FileEffects) -> None:
            image_id = await self._lock_image_for_delete(session, repo, image)
            current = None
            if image_id is not None:
                current = await session.scalar(
                    select(Tag).where(Tag.image_id == image_id, Tag.name == tag).with_for_update()
                )
            if image_id is None or current is None:
                raise NotFoundError("tag not found", {"repo": repo, "image": image, "tag": tag})
            digest = current.digest
            await session.delete(current)
            await session.flush()
            await self._drop_if_empty(session, image_id)
            await self._release(session, digest, effects)

        await self._write(change)

    async def _lock_or_create_blob(self, session: AsyncSession, staged: StagedBlob) -> Blob:
        blob = await session.scalar(
            select(Blob).where(Blob.digest == staged.blake3).with_for_update()
        )
        if blob is None:
            blob = Blob(
                digest=staged.blake3,
                size=staged.size,
                sha256=staged.sha256,
                refcount=0,
                created_at=utcnow(),
            )
            session.add(blob)
            await session.flush()  # a concurrent creator makes this an IntegrityError: retry
        return blob

    async def _ensure_blob_file(self, staged: StagedBlob, *, displace: bool) -> None:
        """Put the staged bytes in place unless the blob exists (the lock is held)."""
        outcome = await self.blobs.place(staged, displace=displace)
        if outcome == "gone" and await self.blobs.size_of(staged.blake3) != staged.size:
            # A retry after the staging file was consumed, and the blob vanished meanwhile.
            raise UnavailableError("the upload lost a race with a delete; upload again")

    async def _lock_image_for_delete(
        self, session: AsyncSession, repo: str, image: str
    ) -> int | None:
        """Lock the repository and image rows (PostgreSQL: ``FOR UPDATE``) that a delete may drop.

        Uploads key-share-lock both rows before they add a tag (``_get_or_create_image``),
        so the delete's "is the image empty" check cannot miss a tag being added, and its
        ``ON DELETE CASCADE`` never takes a tag committed meanwhile. (SQLite writers are
        serialised by ``BEGIN IMMEDIATE`` already.)
        """
        repo_id = await session.scalar(
            select(Repository.id).where(Repository.name == repo).with_for_update()
        )
        if repo_id is None:
            return None
        return await session.scalar(
            select(Image.id)
            .where(Image.repository_id == repo_id, Image.name == image)
            .with_for_update()
        )

    async def _get_or_create_image(self, session: AsyncSession, repo: str, image: str) -> int:
        # FOR KEY SHARE: uploads into one image do not wait for each other, a delete that
        # may drop the rows (FOR UPDATE) waits for them, and they for it.
        repo_id = await session.scalar(
            select(Repository.id)
            .where(Repository.name == repo)
            .with_for_update(read=True, key_share=True)
        )
        if repo_id is None:
            repository = Repository(name=repo, created_at=utcnow())
            session.add(repository)
            await session.flush()
            repo_id = repository.id
        image_id = await session.scalar(
            select(Image.id)
            .where(Image.repository_id == repo_id, Image.name == image)
            .with_for_update(read=True, key_share=True)
        )
        if image_id is None:
            image_row = Image(repository_id=repo_id, name=image, created_at=utcnow())
            session.add(image_row)
            await session.flush()
            image_id = image_row.id
        return image_id

    async def _drop_if_empty(self, session: AsyncSession, image_id: int) -> None:
        has_tags = await session.scalar(select(exists().where(Tag.image_id == image_id)))
        if has_tags:
            return
        repo_id = await session.scalar(select(Image.repository_id).where(Image.id == image_id))
        await session.execute(delete(Image).where(Image.id == image_id))
        remaining = await session.scalar(
            select(func.count()).select_from(Image).where(Image.repository_id == repo_id)
        )
        if not remaining:
            await session.execute(delete(Repository).where(Repository.id == repo_id))
