"""Primitives for gc, fsck and start-up: consistent views, repairs, trash, quarantine."""

from __future__ import annotations

import logging
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.blobstore import MaintenanceBlobStore
from cloudimg.catalog.events import blob_event, gc_event
from cloudimg.catalog.models import (
    Blob,
    GcRuns,
    Image,
    Repository,
    Tag,
    TagHistory,
    kept_references,
    utcnow,
)
from cloudimg.catalog.outbox import queue_event
from cloudimg.catalog.records import (
    BlobBlock,
    BlobRecord,
    BlobState,
    CatalogSnapshot,
    GcRecord,
    RefcountRepair,
    TagRecord,
    blob_block,
    gc_record,
)
from cloudimg.catalog.transaction import CatalogBase, FileEffects
from cloudimg.errors import NotFoundError
from cloudimg.images import Inspection

__all__ = ["CatalogMaintenance"]

log = logging.getLogger(__name__)

Settled = Literal["restored", "removed", "kept"]
"""What ``settle_trash`` did with a trash file."""


def _retained_entries() -> Any:
    """The number of retained history entries holding the outer query's blob."""
    return (
        select(func.count())
        .select_from(TagHistory)
        .where(TagHistory.digest == Blob.digest, TagHistory.retained)
        .scalar_subquery()
    )


class CatalogMaintenance(CatalogBase):
    """Each repair runs under the lock the writers take on the digest's row."""

    async def snapshot(self) -> CatalogSnapshot:
        """Every blob row with the tags naming it, from one statement: a consistent view."""
        query = (
            select(
                Blob.digest,
                Blob.size,
                Blob.sha256,
                Blob.refcount,
                Blob.quarantined_at,
                _retained_entries().label("held"),
                kept_references().label("kept"),
                Blob.inspected_at,
                Blob.blocked_rule,
                Blob.blocked_at,
                Repository.name.label("repo"),
                Image.name.label("image"),
                Tag.name.label("tag"),
            )
            .outerjoin(Tag, Tag.digest == Blob.digest)
            .outerjoin(Image, Image.id == Tag.image_id)
            .outerjoin(Repository, Repository.id == Image.repository_id)
            .order_by(Blob.digest, Repository.name, Image.name, Tag.name)
        )
        async with self._read() as session, session.begin():
            rows = (await session.execute(query)).all()
        rows_of = {row.digest: row for row in rows}  # one per blob (the last of its tags)
        tags_of: dict[str, list[TagRecord]] = {digest: [] for digest in rows_of}
        for row in rows:
            if row.tag is not None:
                tags_of[row.digest].append(TagRecord(row.repo, row.image, row.tag, row.digest))
        blobs = {
            digest: BlobRecord(
                digest,
                row.size,
                row.sha256,
                row.refcount,
                row.quarantined_at is not None,
                tuple(tags_of[digest]),
                history=int(row.held or 0),
                inspected=row.inspected_at is not None,
                blocked=blob_block(row.blocked_rule, row.blocked_at),
                kept=int(row.kept or 0),
            )
            for digest, row in rows_of.items()
        }
        return CatalogSnapshot(blobs, [tag for tags in tags_of.values() for tag in tags])

    async def blob_state(self, digest: str) -> BlobState | None:
        """The blob row of ``digest`` now, with its tags plus retained history entries."""
        references = (
            (
                select(func.count()).select_from(Tag).where(Tag.digest == Blob.digest)
            ).scalar_subquery()
            + _retained_entries()
            + kept_references()
        )
        async with self._read() as session:
            row = (
                await session.execute(select(Blob, references).where(Blob.digest == digest))
            ).one_or_none()
        if row is None:
            return None
        blob, count = row
        return BlobState(digest, blob.size, blob.refcount, count, blob.quarantined_at is not None)

    async def repair_refcount(self, digest: str) -> RefcountRepair | None:
        """Set the blob's refcount to its tags, retained history entries and kept ``/v2``
        manifests' references, under the lock uploads take.

        A blob nothing references loses its row and (trashed, then purged) file.
        Returns what changed, None when the count was right or the row is gone.
        """

        async def change(session: AsyncSession, effects: FileEffects) -> RefcountRepair | None:
            blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
            if blob is None:
                return None
            tags = await session.scalar(
                select(func.count()).select_from(Tag).where(Tag.digest == digest)
            )
            held = await session.scalar(
                select(func.count())
                .select_from(TagHistory)
                .where(TagHistory.digest == digest, TagHistory.retained)
            )
            kept = await session.scalar(select(kept_references()).where(Blob.digest == digest))
            count = (tags or 0) + (held or 0) + (kept or 0)
            if count == blob.refcount and count > 0:
                return None
            repair = RefcountRepair(digest, blob.size, blob.refcount, count, count == 0)
            if count == 0:
                await self._drop_blob(session, blob, effects)
            else:
                blob.refcount = count
            return repair

        async for attempt in self._writes():
            async with attempt as (session, effects):
                written = await change(session, effects)
        return written

    async def reclaim_orphan_file(self, digest: str) -> int | None:
        """Remove a blob file that no blob row names; its size, None when nothing went.

        The check and the move to trash happen in one write transaction that holds
        the digest's lock (a placeholder row, gone at commit), so an upload committing
        the same digest at the same time waits for us and then places its own file. A
        store whose trash is a copy copies first, off the lock (``drop_unreferenced``).
        """
        if self.blobs.trash_copies:
            size = await self.blobs.size_of(digest)
            return (size or 0) if await self.drop_unreferenced(digest) else None

        async def change(session: AsyncSession, effects: FileEffects) -> int | None:
            if await session.scalar(select(Blob.digest).where(Blob.digest == digest)):
                return None
            placeholder = Blob(digest=digest, size=0, sha256="0" * 64, refcount=0)
            placeholder.created_at = utcnow()
            session.add(placeholder)
            await session.flush()
            size = await self.blobs.size_of(digest)
            trash_key = await self.blobs.move_to_trash(digest)
            await session.delete(placeholder)
            await session.flush()
            if trash_key is None:
                return None
            effects.trashed.append((trash_key, digest))
            return size or 0

        async for attempt in self._writes():
            async with attempt as (session, effects):
                written = await change(session, effects)
        return written

    async def restore_trashed(self) -> list[str]:
        """Put back every trashed file the catalog still needs (``restore_blob``).

        The servers run this at start-up. Digests whose row is gone (a committed delete
        whose trash file was not yet removed) are left for gc. Returns the digests put back.
        """
        trashed = {entry.digest for entry in await self.blobs.list_trash() if entry.digest}
        if not trashed:
            return []
        async with self._read() as session:
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
        self, trash_key: str, digest: str, *, remove: bool = True, dry_run: bool = False
    ) -> Settled:
        """Deal with a trash file left by a crash, under the digest's lock.

        If the catalog still has the blob (the delete never committed) and its file is
        missing, the trash file goes back into the blob tree, whatever ``remove`` says.
        A trash file the catalog still needs is never removed (a quarantined blob's:
        kept). Any other trash file is removed when ``remove`` is set, else kept.
        With ``dry_run``, says what it would do and changes nothing.
        """

        async def change(session: AsyncSession, _effects: FileEffects) -> Settled:
            blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
            missing = blob is not None and await self.blobs.size_of(digest) is None
            if missing and blob is not None and blob.quarantined_at is None:
                restored = dry_run or await self.blobs.restore_from_trash(trash_key, digest)
                return "restored" if restored else "kept"
            return "removed" if remove and not missing else "kept"

        async for attempt in self._writes():
            async with attempt as (session, effects):
                outcome = await change(session, effects)
        if outcome == "removed" and not dry_run:
            await self.blobs.purge(trash_key)
        return outcome

    async def quarantine_blob(
        self, blobs: MaintenanceBlobStore, digest: str, version: int | None
    ) -> bool:
        """Move the blob aside in ``blobs`` and mark it so that it is no longer served.

        ``version`` is the copy found bad: a blob placed since then is left alone.
        True when the blob was quarantined.
        """

        async def change(session: AsyncSession, effects: FileEffects) -> bool:
            blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
            if blob is None or blob.quarantined_at is not None:
                return False
            moved = await blobs.quarantine(digest, version)
            if moved is None:
                return False
            effects.quarantined.append((moved, digest))
            blob.quarantined_at = utcnow()
            return True

        async for attempt in self._writes():
            async with attempt as (session, effects):
                written = await change(session, effects)
        return written

    async def record_inspection(self, digest: str, inspection: Inspection) -> bool:
        """Write what an inspection of the stored bytes found (``fsck --inspect``).

        Replaces an earlier inspection's figures (a re-inspection under another
        policy); leaves a block alone. False when the blob row is gone.
        """

        async def change(session: AsyncSession, _effects: FileEffects) -> bool:
            blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
            if blob is None:
                return False
            self._record_inspection(blob, inspection)
            return True

        async for attempt in self._writes():
            async with attempt as (session, effects):
                written = await change(session, effects)
        return written

    async def record_gc_run(
        self, *, ok: bool, bytes_freed: int, duration_seconds: float
    ) -> GcRecord:
        """Add one finished gc run to the figures every server's ``/metrics`` shows.

        Overlapping runs add up: each takes the row's lock (the first one creates it;
        a concurrent first insert fails and is retried as an update).
        """
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                row = await session.scalar(select(GcRuns).where(GcRuns.id == 1).with_for_update())
                if row is None:
                    row = GcRuns(id=1, runs_total=0, failed_runs_total=0, bytes_freed_total=0)
                    session.add(row)
                row.runs_total += 1
                row.failed_runs_total += 0 if ok else 1
                row.bytes_freed_total += bytes_freed
                row.last_run_at = utcnow()
                row.last_run_duration_seconds = duration_seconds
                row.last_run_bytes_freed = bytes_freed
                row.last_run_ok = ok
                record = gc_record(row)
                queue_event(session, *gc_event(ok, bytes_freed, duration_seconds))
        return record

    async def block_blob(self, digest: str, rule: str) -> BlobBlock:
        """Refuse every download of the blob, naming ``rule``; its tags stay listed.

        Only ``unblock_blob`` lifts it: an upload of the same bytes does not. A blob
        blocked already keeps its rule and time. Returns the block in force.

        Raises:
            NotFoundError: no blob row has ``digest``.
        """

        async def change(session: AsyncSession, _effects: FileEffects) -> BlobBlock:
            blob = await self._locked_blob(session, digest)
            block = blob_block(blob.blocked_rule, blob.blocked_at)
            if block is not None:
                return block
            now = utcnow()
            blob.blocked_rule, blob.blocked_at = rule, now
            queue_event(session, *await blob_event(session, True, blob, rule))
            return BlobBlock(rule, now)

        async for attempt in self._writes():
            async with attempt as (session, effects):
                block = await change(session, effects)
        log.warning("blocked blob blake3:%s for the image safety rule %s", digest, block.rule)
        return block

    async def unblock_blob(self, digest: str) -> BlobBlock | None:
        """Serve the blob again; the block that was lifted, None when it was not blocked.

        Raises:
            NotFoundError: no blob row has ``digest``.
        """

        async def change(session: AsyncSession, _effects: FileEffects) -> BlobBlock | None:
            blob = await self._locked_blob(session, digest)
            block = blob_block(blob.blocked_rule, blob.blocked_at)
            blob.blocked_rule = blob.blocked_at = None
            if block is not None:
                queue_event(session, *await blob_event(session, False, blob, block.rule))
            return block

        async for attempt in self._writes():
            async with attempt as (session, effects):
                block = await change(session, effects)
        if block is not None:
            log.warning(
                "unblocked blob blake3:%s (blocked for the image safety rule %s since %s):"
                " it is served again",
                digest,
                block.rule,
                block.since.isoformat(),
            )
        return block

    async def _locked_blob(self, session: AsyncSession, digest: str) -> Blob:
        blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
        if blob is None:
            raise NotFoundError("no blob has this digest", {"digest": f"blake3:{digest}"})
        return blob
