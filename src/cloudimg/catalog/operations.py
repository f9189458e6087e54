"""Catalog operations. Each change is one transaction; reads are plain queries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from sqlalchemy import delete, exists, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cloudimg.blobstore import BlobStore, StagedBlob
from cloudimg.catalog.database import WRITE
from cloudimg.catalog.models import Blob, Image, Repository, Tag, utcnow
from cloudimg.catalog.records import (
    BlobRecord,
    BlobRef,
    BlobState,
    CatalogSnapshot,
    RefcountRepair,
    StorageTotals,
    TagInfo,
    TagRecord,
)
from cloudimg.digest import parse_digest
from cloudimg.errors import (
    BlobCorruptError,
    InsufficientStorageError,
    NotFoundError,
    UnavailableError,
)

__all__ = ["Catalog"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_WRITE_ATTEMPTS = 5


@dataclass
class _FileEffects:
    """File-system changes made inside a transaction: undone on rollback, finished on commit."""

    trashed: list[tuple[Path, str]] = field(default_factory=list)
    quarantined: list[tuple[Path, str]] = field(default_factory=list)


def _corrupt(digest: str) -> BlobCorruptError:
    return BlobCorruptError(
        f"the stored bytes of blake3:{digest} failed an integrity check and are quarantined;"
        " upload the image again",
        {"digest": f"blake3:{digest}"},
    )


class Catalog:
    """The names-to-digests catalog over a blob store."""

    def __init__(self, engine: AsyncEngine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    # -- reads -----------------------------------------------------------------

    async def list_repositories(self) -> list[str]:
        """Names of every repository that holds an image, sorted."""
        async with self._sessions() as session:
            rows = await session.scalars(select(Repository.name).order_by(Repository.name))
            return list(rows)

    async def list_images(self, repo: str) -> list[str]:
        """Names of the images in ``repo``, sorted; ``NotFoundError`` if there is no such repo."""
        async with self._sessions() as session:
            repo_id = await session.scalar(select(Repository.id).where(Repository.name == repo))
            if repo_id is None:
                raise NotFoundError("repository not found", {"repo": repo})
            rows = await session.scalars(
                select(Image.name).where(Image.repository_id == repo_id).order_by(Image.name)
            )
            return list(rows)

    async def list_tags(self, repo: str, image: str) -> list[str]:
        """Tag names of ``repo/image``, sorted; ``NotFoundError`` if there is no such image."""
        async with self._sessions() as session:
            image_id = await self._image_id(session, repo, image)
            if image_id is None:
                raise NotFoundError("image not found", {"repo": repo, "image": image})
            rows = await session.scalars(
                select(Tag.name).where(Tag.image_id == image_id).order_by(Tag.name)
            )
            return list(rows)

    async def storage_totals(self) -> StorageTotals:
        """Counts and byte sums of blobs and tags, from one consistent view (aggregates only)."""
        blobs = select(func.count(), func.coalesce(func.sum(Blob.size), 0))
        tags = select(func.count(), func.coalesce(func.sum(Blob.size), 0)).select_from(
            Tag.__table__.join(Blob.__table__, Tag.digest == Blob.digest)
        )
        referenced = select(func.coalesce(func.sum(Blob.size), 0)).where(
            exists().where(Tag.digest == Blob.digest)
        )
        async with self._sessions() as session, session.begin():
            blob_count, stored = (await session.execute(blobs)).one()
            tag_count, logical = (await session.execute(tags)).one()
            referenced_bytes = await session.scalar(referenced)
        return StorageTotals(
            int(blob_count), int(stored), int(tag_count), int(logical), int(referenced_bytes or 0)
        )

    async def get_tag(self, repo: str, image: str, tag: str) -> TagInfo:
        """The tag with its blob; ``NotFoundError`` if it does not exist."""
        async with self._sessions() as session:
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
            raise _corrupt(blob.digest)
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
        )

    async def resolve(self, repo: str, image: str, reference: str) -> BlobRef:
        """The blob a tag or a digest reference (``blake3:…``/``sha256:…``) names in an image.

        A digest reference is valid only while a tag of this image holds that blob.
        The caller has validated the form of ``reference``.
        """
        ref = await self._lookup(repo, image, reference)
        # A crash between a delete's trash rename and its commit leaves the file in trash
        # while the tag stays: put it back. If a delete or an overwrite committed meanwhile
        # instead, the reference may now name other bytes (or nothing): look again.
        if await self.blobs.size_of(ref.digest) is None and not await self.restore_blob(ref.digest):
            ref = await self._lookup(repo, image, reference)
        return ref

    async def _lookup(self, repo: str, image: str, reference: str) -> BlobRef:
        if ":" not in reference:
            info = await self.get_tag(repo, image, reference)
            return BlobRef(info.digest, info.sha256, info.size, info.updated)
        digest = parse_digest(reference)
        column = Blob.digest if digest.algorithm == "blake3" else Blob.sha256
        async with self._sessions() as session:
            blob = await session.scalar(
                select(Blob)
                .join(Tag, Tag.digest == Blob.digest)
                .join(Image, Image.id == Tag.image_id)
                .join(Repository, Repository.id == Image.repository_id)
                .where(Repository.name == repo, Image.name == image, column == digest.hex)
                .limit(1)
            )
        if blob is None:
            raise NotFoundError(
                "no tag of this image references that digest",
                {"repo": repo, "image": image, "digest": reference},
            )
        if blob.quarantined_at is not None:
            raise _corrupt(blob.digest)
        return BlobRef(blob.digest, blob.sha256, blob.size, blob.created_at)

    async def check_writable(self) -> None:
        """Begin a write transaction, read one row, roll back: what readiness needs to know.

        On SQLite this takes the write lock for a moment, so a database another process
        holds locked fails here (after the busy timeout) as uploads and deletes would.
        """
        async with self._sessions() as session:
            await session.connection(execution_options=WRITE)
            await session.scalar(select(Blob.digest).limit(1))
        # Closing the session rolls the (empty) transaction back.

    # -- changes ---------------------------------------------------------------

    async def commit_upload(
        self, repo: str, image: str, tag: str, staged: StagedBlob, meta: dict[str, str]
    ) -> None:
        """Make ``repo/image:tag`` name the staged bytes, in one transaction.

        The blob file is put in place under the catalog lock (unless the digest is
        stored already: deduplication); a tag that pointed elsewhere releases its
        old blob, which is trashed if that was its last reference.
        """

        async def change(session: AsyncSession, effects: _FileEffects) -> None:
            # Lock order, as in delete_tag: repository, image, tag, blob.
            image_id = await self._get_or_create_image(session, repo, image)
            blob = await self._lock_or_create_blob(session, staged)
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
            if blob.quarantined_at is not None:
                # Re-uploading heals: whatever sits under the digest is suspect, the staged
                # bytes have the digest. (A retry finds its own placed file: keep it.)
                if staged.path.exists():
                    await self.blobs.quarantine(blob.digest)
                blob.quarantined_at = None
            await session.flush()
            await self._ensure_blob_file(staged)

        await self._write(change)

    async def delete_tag(self, repo: str, image: str, tag: str) -> None:
        """Drop the tag and its reference; empty images and repositories go with it."""

        async def change(session: AsyncSession, effects: _FileEffects) -> None:
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

    # -- maintenance -------------------------------------------------------------

    async def snapshot(self) -> CatalogSnapshot:
        """Every blob row with the tags naming it, from one statement: a consistent view."""
        query = (
            select(
                Blob.digest,
                Blob.size,
                Blob.sha256,
                Blob.refcount,
                Blob.quarantined_at,
                Repository.name,
                Image.name,
                Tag.name,
            )
            .outerjoin(Tag, Tag.digest == Blob.digest)
            .outerjoin(Image, Image.id == Tag.image_id)
            .outerjoin(Repository, Repository.id == Image.repository_id)
            .order_by(Blob.digest, Repository.name, Image.name, Tag.name)
        )
        async with self._sessions() as session, session.begin():
            rows = (await session.execute(query)).all()
        rows_of: dict[str, tuple[int, str, int, bool]] = {}
        tags_of: dict[str, list[TagRecord]] = {}
        for digest, size, sha256, refcount, quarantined_at, repo, image, tag in rows:
            rows_of[digest] = (size, sha256, refcount, quarantined_at is not None)
            tags = tags_of.setdefault(digest, [])
            if tag is not None:
                tags.append(TagRecord(repo, image, tag, digest))
        blobs = {
            digest: BlobRecord(digest, *row, tuple(tags_of[digest]))
            for digest, row in rows_of.items()
        }
        return CatalogSnapshot(blobs, [tag for tags in tags_of.values() for tag in tags])

    async def blob_state(self, digest: str) -> BlobState | None:
        """The blob row of ``digest`` now, with its number of referencing tags; None if absent."""
        references = (
            select(func.count()).select_from(Tag).where(Tag.digest == Blob.digest)
        ).scalar_subquery()
        async with self._sessions() as session:
            row = (
                await session.execute(select(Blob, references).where(Blob.digest == digest))
            ).one_or_none()
        if row is None:
            return None
        blob, count = row
        return BlobState(digest, blob.size, blob.refcount, count, blob.quarantined_at is not None)

    async def repair_refcount(self, digest: str) -> RefcountRepair | None:
        """Set the blob's refcount to its number of tags, under the lock uploads take.

        A blob no tag references loses its row and (trashed, then purged) file.
        Returns what changed, None when the count was right or the row is gone.
        """
        done: list[RefcountRepair] = []

        async def change(session: AsyncSession, effects: _FileEffects) -> None:
            done.clear()
            blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
            if blob is None:
                return
            count = await session.scalar(
                select(func.count()).select_from(Tag).where(Tag.digest == digest)
            )
            count = count or 0
            if count == blob.refcount and count > 0:
                return
            done.append(RefcountRepair(digest, blob.size, blob.refcount, count, count == 0))
            if count == 0:
                await self._drop_blob(session, blob, effects)
            else:
                blob.refcount = count

        await self._write(change)
        return done[0] if done else None

    async def reclaim_orphan_file(self, digest: str) -> int | None:
        """Remove a blob file that no blob row names; its size, None when nothing went.

        The check and the move to trash happen in one write transaction that holds
        the digest's lock (a placeholder row, gone at commit), so an upload committing
        the same digest at the same time waits for us and then places its own file.
        """
        freed: list[int] = []

        async def change(session: AsyncSession, effects: _FileEffects) -> None:
            freed.clear()
            if await session.scalar(select(Blob.digest).where(Blob.digest == digest)):
                return
            placeholder = Blob(digest=digest, size=0, sha256="0" * 64, refcount=0)
            placeholder.created_at = utcnow()
            session.add(placeholder)
            await session.flush()
            size = await self.blobs.size_of(digest)
            trash_path = await self.blobs.move_to_trash(digest)
            await session.delete(placeholder)
            await session.flush()
            if trash_path is not None:
                effects.trashed.append((trash_path, digest))
                freed.append(size or 0)

        await self._write(change)
        return freed[0] if freed else None

    async def restore_blob(self, digest: str) -> bool:
        """Put a trashed file of ``digest`` back if the catalog still needs it.

        A crash between a delete's (or an overwrite's) rename into ``trash/`` and its
        commit leaves the blob row and its tags, with the file in trash. Under the
        digest's lock, as the delete took it, the file goes back when the row is still
        there (not quarantined) and its file is missing; a delete that is about to
        commit holds the lock, so we wait for it and then find no row. True when a
        file was put back.
        """
        copies = [entry.path for entry in await self.blobs.list_trash() if entry.digest == digest]
        if not copies:
            return False
        restored: list[Path] = []

        async def change(session: AsyncSession, _effects: _FileEffects) -> None:
            restored.clear()
            if await self._needs_file(session, digest):
                for path in copies:
                    if await self.blobs.restore_from_trash(path, digest):
                        restored.append(path)
                        break

        await self._write(change)
        if restored:
            log.warning(
                "put blob %s back from trash: its delete never committed (a crash?)", digest
            )
        return bool(restored)

    async def restore_trashed(self) -> list[str]:
        """Put back every trashed file the catalog still needs (``restore_blob``).

        The servers run this at start-up. Digests whose row is gone (a committed delete
        whose trash file was not yet removed) are left for gc. Returns the digests put back.
        """
        trashed = {entry.digest for entry in await self.blobs.list_trash() if entry.digest}
        if not trashed:
            return []
        async with self._sessions() as session:
            live = await session.scalars(
                select(Blob.digest).where(
                    Blob.digest.in_(sorted(trashed)), Blob.quarantined_at.is_(None)
                )
            )
            candidates = sorted(live)
        restored: list[str] = []
        for digest in candidates:
            if await self.blobs.size_of(digest) is None and await self.restore_blob(digest):
                restored.append(digest)
        return restored

    async def settle_trash(
        self, trash_path: Path, digest: str, *, remove: bool = True, dry_run: bool = False
    ) -> Literal["restored", "removed", "kept"]:
        """Deal with a trash file left by a crash, under the digest's lock.

        If the catalog still has the blob (the delete never committed) and its file is
        missing, the trash file goes back into the blob tree, whatever ``remove`` says.
        A trash file the catalog still needs is never removed (a quarantined blob's:
        kept). Any other trash file is removed when ``remove`` is set, else kept.
        With ``dry_run``, says what it would do and changes nothing.
        """
        outcome: list[Literal["restored", "removed", "kept"]] = []

        async def change(session: AsyncSession, _effects: _FileEffects) -> None:
            outcome.clear()
            blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
            missing = blob is not None and await self.blobs.size_of(digest) is None
            if missing and blob is not None and blob.quarantined_at is None:
                restored = dry_run or await self.blobs.restore_from_trash(trash_path, digest)
                outcome.append("restored" if restored else "kept")
            else:
                outcome.append("removed" if remove and not missing else "kept")

        await self._write(change)
        if outcome[0] == "removed" and not dry_run:
            await self.blobs.purge(trash_path)
        return outcome[0]

    async def quarantine_blob(self, digest: str, inode: int | None) -> bool:
        """Move the blob's file aside and mark the blob so that it is no longer served.

        ``inode`` is the file found bad: a file placed since then is left alone.
        True when the blob was quarantined.
        """
        done: list[bool] = []

        async def change(session: AsyncSession, effects: _FileEffects) -> None:
            done.clear()
            blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
            if blob is None or blob.quarantined_at is not None:
                return
            moved = await self.blobs.quarantine(digest, inode)
            if moved is None:
                return
            effects.quarantined.append((moved, digest))
            blob.quarantined_at = utcnow()
            done.append(True)

        await self._write(change)
        return bool(done)

    # -- transaction plumbing --------------------------------------------------

    async def _write(self, change: Callable[[AsyncSession, _FileEffects], Awaitable[None]]) -> None:
        """Run ``change`` in a write transaction, retrying lost races between writers."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            effects = _FileEffects()
            try:
                async with self._sessions() as session, session.begin():
                    await session.connection(execution_options=WRITE)
                    await change(session, effects)
            except (IntegrityError, OperationalError, DBAPIError) as exc:
                await self._undo(effects)
                if attempt == _WRITE_ATTEMPTS or not _is_retryable(exc):
                    raise _as_unavailable(exc) from exc
                log.info("catalog write lost a race (attempt %d), retrying: %s", attempt, exc)
                await asyncio.sleep(0.01 * attempt)
                continue
            except BaseException:
                await self._undo(effects)
                raise
            for trash_path, _digest in effects.trashed:
                await self.blobs.purge(trash_path)
            return

    async def _undo(self, effects: _FileEffects) -> None:
        for trash_path, digest in effects.trashed + effects.quarantined:
            await self.blobs.restore_from_trash(trash_path, digest)

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

    async def _needs_file(self, session: AsyncSession, digest: str) -> bool:
        """Lock the blob row: is it there, served (not quarantined), and its file missing?"""
        blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
        if blob is None or blob.quarantined_at is not None:
            return False
        return await self.blobs.size_of(digest) is None

    async def _ensure_blob_file(self, staged: StagedBlob) -> None:
        """Put the staged bytes in place unless the blob file exists (the lock is held)."""
        if staged.path.exists():
            await self.blobs.place(staged)
        elif await self.blobs.size_of(staged.blake3) != staged.size:
            # A retry after the staging file was consumed, and the blob vanished meanwhile.
            raise UnavailableError("the upload lost a race with a delete; upload again")

    async def _release(self, session: AsyncSession, digest: str, effects: _FileEffects) -> None:
        """Drop one reference to ``digest``; the last one trashes the file under the lock."""
        blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
        if blob is None:
            return
        blob.refcount -= 1
        if blob.refcount > 0:
            return
        await self._drop_blob(session, blob, effects)

    async def _drop_blob(self, session: AsyncSession, blob: Blob, effects: _FileEffects) -> None:
        """Delete the (locked) blob row and trash its file under the lock."""
        await session.delete(blob)
        await session.flush()
        trash_path = await self.blobs.move_to_trash(blob.digest)
        if trash_path is not None:
            effects.trashed.append((trash_path, blob.digest))

    async def _image_id(self, session: AsyncSession, repo: str, image: str) -> int | None:
        return await session.scalar(
            select(Image.id)
            .join(Repository, Repository.id == Image.repository_id)
            .where(Repository.name == repo, Image.name == image)
        )

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


def _is_retryable(exc: DBAPIError) -> bool:
    """Lost races: a unique or foreign key clash, a deadlock, a serialization failure."""
    if isinstance(exc, IntegrityError):
        return True
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in {"40001", "40P01"}


def _as_unavailable(exc: DBAPIError) -> Exception:
    if _is_disk_full(exc):
        return InsufficientStorageError("the catalog database has no room left; nothing changed")
    if isinstance(exc, OperationalError):
        return UnavailableError("the catalog database is busy or unreachable; try again")
    return exc


_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"


def _is_disk_full(exc: DBAPIError) -> bool:
    """SQLite's SQLITE_FULL or PostgreSQL's disk_full: the database's volume is full."""
    orig = exc.orig
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    return (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) == _PG_DISK_FULL
