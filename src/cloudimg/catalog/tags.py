"""Tag writes: an upload's commit, a retag, a tag's delete, immutability; each one transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, exists, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.blobstore import StagedBlob
from cloudimg.catalog.history import Action, Names, TagHistoryLog, WriteOptions
from cloudimg.catalog.models import (
    Blob,
    Image,
    Repository,
    Tag,
    TagHistory,
    TagMeta,
    kept_references,
    meta_index_rows,
    utcnow,
)
from cloudimg.catalog.records import BlobRef
from cloudimg.catalog.transaction import FileEffects
from cloudimg.catalog.usage import QuotaGuard, RepoUse, measure_use
from cloudimg.digest import Digest
from cloudimg.errors import NotFoundError, TagImmutableError, UnavailableError
from cloudimg.images import Inspection
from cloudimg.names import refuse_probed_tag_name

__all__ = ["TagWrites"]


class TagWrites(TagHistoryLog):
    """Name bytes with a tag, drop a tag; lock order repository, image, tag, blob.

    Every write records the change in the tag's history and sets which history entries
    hold their bytes (``cloudimg.catalog.history``), in the same transaction, and runs
    the ``hooks`` registered with the catalog (``cloudimg.catalog.hooks``). A write that may
    grow a repository's use (an upload's commit, a retag) is checked against its quota
    when the registry core registered one (``guard_quotas``; ``cloudimg.catalog.usage``).
    """

    quota_guard: QuotaGuard | None = None

    def guard_quotas(self, guard: QuotaGuard) -> None:
        """Check every upload's commit and retag against ``guard``'s quotas, in the write's
        transaction under the repository's lock."""
        self.quota_guard = guard

    def _guard_of(self, repo: str) -> QuotaGuard | None:
        guard = self.quota_guard
        return guard if guard is not None and guard.covers(repo) else None

    async def _check_quota(
        self, session: AsyncSession, guard: QuotaGuard | None, repo: str, before: RepoUse | None
    ) -> None:
        """Refuse (the guard raises) a change that takes ``repo`` past its quota; the
        change is flushed, so the use measured is the one it would commit."""
        if guard is None or before is None:
            return
        await session.flush()
        guard.check(repo, before, await measure_use(session, repo))

    async def commit_upload(
        self,
        repo: str,
        image: str,
        tag: str,
        staged: StagedBlob,
        meta: dict[str, str],
        *,
        options: WriteOptions = WriteOptions(),
        inspection: Inspection | None = None,
    ) -> None:
        """Make ``repo/image:tag`` name the staged bytes, in one transaction.

        The blob file is put in place under the catalog lock (unless the digest is
        stored already: deduplication); a tag that pointed elsewhere releases its
        old blob, which is trashed if that was its last reference (tag or retained
        history entry).
        ``inspection`` (what the bytes are, see ``cloudimg.images``) is recorded on a blob
        not inspected yet; without one the blob stays uninspected (fsck inspects it later).
        """

        async def change(session: AsyncSession, effects: FileEffects) -> None:
            # Lock order, as in delete_tag: repository, image, tag, blob.
            guard = self._guard_of(repo)
            image_id = await self._get_or_create_image(session, repo, image, guard is not None)
            before = None if guard is None else await measure_use(session, repo)
            blob = await self._lock_or_create_blob(session, staged)
            if inspection is not None and blob.inspected_at is None:
                self._record_inspection(blob, inspection)
            await self._point_tag(
                session, effects, (repo, image, tag), image_id, blob, meta, "moved", options
            )
            # Before the bytes are placed: a refused commit stores nothing.
            await self._check_quota(session, guard, repo, before)
            # Re-uploading heals: whatever sits under a quarantined digest is suspect, the
            # staged bytes have the digest. (A retry finds its own placed file: kept.)
            displace = blob.quarantined_at is not None
            blob.quarantined_at = None
            await session.flush()
            await self._ensure_blob_file(staged, displace=displace)

        async for attempt in self._writes():
            async with attempt as (session, effects):
                await change(session, effects)
        self._tag_written()

    async def retag(
        self,
        repo: str,
        image: str,
        tag: str,
        digest: Digest,
        meta: dict[str, str] | None,
        options: WriteOptions = WriteOptions(),
    ) -> BlobRef:
        """Point ``repo/image:tag`` at bytes the registry holds, without sending them.

        ``digest`` must name a blob some tag or retained history entry references (every
        writer may read every image), or an inspected one a kept ``/v2`` push holds.
        ``meta`` None takes the metadata the tag last had with those bytes (from its
        history), else none. Returns the bytes named.
        """
        names = (repo, image, tag)

        async def change(session: AsyncSession, effects: FileEffects) -> BlobRef:
            guard = self._guard_of(repo)
            image_id = await self._get_or_create_image(session, repo, image, guard is not None)
            before = None if guard is None else await measure_use(session, repo)
            column = Blob.digest if digest.algorithm == "blake3" else Blob.sha256
            blob = await session.scalar(
                select(Blob)
                .where(
                    column == digest.hex,
                    Blob.refcount > 0,
                    # A layer or config only a kept /v2 push holds is no VM image: it
                    # becomes one only once inspected (a disk pushed again as one).
                    or_(Blob.refcount > kept_references(), Blob.inspected_at.is_not(None)),
                )
                .limit(1)
                .with_for_update()
            )
            if blob is None or blob.quarantined_at is not None:
                raise NotFoundError(
                    "the registry holds no bytes with that digest", {"digest": str(digest)}
                )
            if await self.blobs.size_of(blob.digest) != blob.size:
                raise UnavailableError(
                    "the bytes of that digest are missing on disk; run cloudimg fsck",
                    {"digest": str(digest)},
                )
            chosen = meta if meta is not None else await self._last_meta(session, names, blob)
            await self._point_tag(
                session, effects, names, image_id, blob, chosen, "retagged", options
            )
            await self._check_quota(session, guard, repo, before)
            return BlobRef(blob.digest, blob.sha256, blob.size, blob.created_at)

        async for attempt in self._writes():
            async with attempt as (session, effects):
                ref = await change(session, effects)
        self._tag_written()
        return ref

    def _tag_written(self) -> None:
        for written in self.hooks.tag_written:
            written()

    async def _last_meta(self, session: AsyncSession, names: Names, blob: Blob) -> dict[str, str]:
        repo, image, tag = names
        meta = await session.scalar(
            select(TagHistory.meta)
            .where(
                TagHistory.repository == repo,
                TagHistory.image == image,
                TagHistory.tag == tag,
                TagHistory.digest == blob.digest,
            )
            .order_by(TagHistory.id.desc())
            .limit(1)
        )
        return dict(meta or {})

    async def _point_tag(
        self,
        session: AsyncSession,
        effects: FileEffects,
        names: Names,
        image_id: int,
        blob: Blob,
        meta: dict[str, str],
        action: Action,
        options: WriteOptions,
    ) -> None:
        """Create or move the tag to the (locked) blob, record it, retain its history."""
        current = await session.scalar(
            select(Tag).where(Tag.image_id == image_id, Tag.name == names[2]).with_for_update()
        )
        await self._check(session, names, current, options)
        self._refuse_immutable(names, current, "overwritten")
        # The tag now pulls as its disk's containerDisk; a /v2 push names it again after.
        for pointed in self.hooks.tag_pointed:
            await pointed(session, *names)
        now = utcnow()
        if current is None:
            refuse_probed_tag_name(names[2])
            created = Tag(
                image_id=image_id,
                name=names[2],
                digest=blob.digest,
                meta=meta,
                created_at=now,
                updated_at=now,
                immutable=False,
            )
            session.add(created)
            blob.refcount += 1
            await session.flush()  # a concurrent creator makes this an IntegrityError: retry
            await _index_meta(session, created.id, names, meta, replace=False)
            # A new tag is "created" whatever made it, an upload or a retag (docs/api.md).
            await self._record(session, names, "created", blob, meta, options.actor, now)
            await self._retain(session, names, blob.digest, effects)
            await self._drop_unheld_manifests(session, names, effects)
            return
        await self._ensure_origin(session, names, current)
        previous = current.digest
        current.digest = blob.digest
        current.meta = meta
        current.updated_at = now
        await _index_meta(session, current.id, names, meta, replace=True)
        if previous != blob.digest:
            blob.refcount += 1
        await session.flush()  # the tag lets go of the old blob row first
        await self._record(session, names, action, blob, meta, options.actor, now)
        # Retention takes its reference on the old bytes before the tag drops its own.
        await self._retain(session, names, blob.digest, effects)
        if previous != blob.digest:
            await self._release(session, previous, effects)
        await self._drop_unheld_manifests(session, names, effects)

    async def _drop_unheld_manifests(
        self, session: AsyncSession, names: Names, effects: FileEffects
    ) -> None:
        """Kept ``/v2`` pushes whose disk the image stopped holding go in the same
        transaction (the hooks' rows), with the references on their layers and configs."""
        for changed in self.hooks.image_changed:
            for digest in await changed(session, names[0], names[1]):
                await self._release(session, digest, effects)

    async def delete_tag(
        self,
        repo: str,
        image: str,
        tag: str,
        options: WriteOptions = WriteOptions(),
        *,
        purge_history: bool = False,
    ) -> None:
        """Drop the tag and its reference; empty images and repositories go with it.

        The tag's history stays (its retained entries keep their bytes) unless
        ``purge_history``, which drops every entry and the references they held; a
        tag deleted earlier whose history remains has only its history purged.
        """
        names = (repo, image, tag)

        async def change(session: AsyncSession, effects: FileEffects) -> None:
            image_id = await self._lock_image_for_delete(session, repo, image)
            current = None
            if image_id is not None:
                current = await session.scalar(
                    select(Tag).where(Tag.image_id == image_id, Tag.name == tag).with_for_update()
                )
            await self._check(session, names, current, options)
            if image_id is None or current is None:
                # A deleted tag's history can still be purged.
                if not (purge_history and await self._purge_history(session, names, effects)):
                    raise await _not_found(session, names)
                await self._drop_unheld_manifests(session, names, effects)
                return
            self._refuse_immutable(names, current, "deleted")
            await self._drop_tag(session, names, current, options, effects, purge_history)
            await self._drop_if_empty(session, image_id)
            await self._drop_unheld_manifests(session, names, effects)

        async for attempt in self._writes():
            async with attempt as (session, effects):
                await change(session, effects)

    async def delete_tags(
        self, repo: str, image: str, tags: Sequence[str], options: WriteOptions = WriteOptions()
    ) -> int:
        """Drop the named tags of one image in one transaction: all of them or none.

        Every tag is checked (precondition, immutability) before any is dropped, so one
        refused tag leaves them all in place. Tags deleted meanwhile are skipped; returns
        how many were dropped. Their history stays, as :meth:`delete_tag` keeps it.
        """

        async def change(session: AsyncSession, effects: FileEffects) -> int:
            image_id = await self._lock_image_for_delete(session, repo, image)
            if image_id is None:
                return 0
            rows = await session.scalars(
                select(Tag)
                .where(Tag.image_id == image_id, Tag.name.in_(list(tags)))
                .order_by(Tag.name)
                .with_for_update()
            )
            current = list(rows)
            for row in current:  # all checked before any goes
                await self._check(session, (repo, image, row.name), row, options)
                self._refuse_immutable((repo, image, row.name), row, "deleted")
            for row in current:
                await self._drop_tag(session, (repo, image, row.name), row, options, effects)
            if current:
                await self._drop_if_empty(session, image_id)
                await self._drop_unheld_manifests(session, (repo, image, ""), effects)
            return len(current)

        async for attempt in self._writes():
            async with attempt as (session, effects):
                written = await change(session, effects)
        return written

    async def _drop_tag(
        self,
        session: AsyncSession,
        names: Names,
        current: Tag,
        options: WriteOptions,
        effects: FileEffects,
        purge_history: bool = False,
    ) -> None:
        """Record the deletion, drop the (locked, checked) tag and let go of its bytes."""
        await self._ensure_origin(session, names, current)
        digest = current.digest
        blob = await session.scalar(select(Blob).where(Blob.digest == digest))
        assert blob is not None, "a tag names a blob row (foreign key)"
        await self._record(session, names, "deleted", blob, dict(current.meta), options.actor)
        # The foreign key cascades too; explicit, so the index never outlives its tag.
        await session.execute(delete(TagMeta).where(TagMeta.tag_id == current.id))
        await session.delete(current)
        await session.flush()
        if purge_history:
            await self._purge_history(session, names, effects)
        else:
            await self._retain(session, names, None, effects)
        await self._release(session, digest, effects)

    async def set_immutable(
        self,
        repo: str,
        image: str,
        tag: str,
        immutable: bool,
        options: WriteOptions = WriteOptions(),
    ) -> bool:
        """Mark the tag immutable or release it, recording the act; False if it already was.

        Releasing a tag an operator's rule protects is refused: the rule still holds.
        """
        names = (repo, image, tag)

        async def change(session: AsyncSession, _effects: FileEffects) -> bool:
            image_id = await self._find_image(session, repo, image)
            current = None
            if image_id is not None:
                current = await session.scalar(
                    select(Tag).where(Tag.image_id == image_id, Tag.name == tag).with_for_update()
                )
            await self._check(session, names, current, options)
            if current is None:
                raise await _not_found(session, names)
            rule = self.immutable_by_rule(names)
            if not immutable and rule is not None:
                raise TagImmutableError(
                    "an operator's rule makes the tag immutable; it cannot be released",
                    {"repo": repo, "image": image, "tag": tag, "rule": rule},
                )
            if current.immutable == immutable:
                return False
            await self._ensure_origin(session, names, current)
            current.immutable = immutable
            blob = await session.scalar(select(Blob).where(Blob.digest == current.digest))
            assert blob is not None, "a tag names a blob row (foreign key)"
            action: Action = "immutable" if immutable else "released"
            await self._record(session, names, action, blob, dict(current.meta), options.actor)
            return True

        async for attempt in self._writes():
            async with attempt as (session, effects):
                written = await change(session, effects)
        return written

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

    async def _find_image(self, session: AsyncSession, repo: str, image: str) -> int | None:
        """The id of ``repo/image``, locked as ``_get_or_create_image`` locks it (the
        repository's row first, then the image's: the lock order of every writer); None
        when the repository or the image does not exist (nothing is created)."""
        repo_id = await session.scalar(
            select(Repository.id)
            .where(Repository.name == repo)
            .with_for_update(read=True, key_share=True)
        )
        if repo_id is None:
            return None
        return await session.scalar(
            select(Image.id)
            .where(Image.repository_id == repo_id, Image.name == image)
            .with_for_update(read=True, key_share=True)
        )

    async def _get_or_create_image(
        self, session: AsyncSession, repo: str, image: str, exclusive: bool = False
    ) -> int:
        # FOR KEY SHARE: uploads into one image do not wait for each other, a delete that
        # may drop the rows (FOR UPDATE) waits for them, and they for it. ``exclusive``
        # (a repository under a quota): FOR UPDATE, so the writers of the repository
        # measure and change its use one at a time (two creators of the row clash on
        # its unique name, and the loser's retry waits for the winner's lock).
        lock = select(Repository.id).where(Repository.name == repo)
        repo_id = await session.scalar(
            lock.with_for_update() if exclusive else lock.with_for_update(read=True, key_share=True)
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


async def _not_found(session: AsyncSession, names: Names) -> NotFoundError:
    """The 404 of a write to a tag that does not exist, naming what is missing: the
    repository, the image or the tag (as the reads say it)."""
    repo, image, tag = names
    repo_id = await session.scalar(select(Repository.id).where(Repository.name == repo))
    if repo_id is None:
        return NotFoundError("repository not found", {"repo": repo})
    image_id = await session.scalar(
        select(Image.id).where(Image.repository_id == repo_id, Image.name == image)
    )
    if image_id is None:
        return NotFoundError("image not found", {"repo": repo, "image": image})
    return NotFoundError("tag not found", {"repo": repo, "image": image, "tag": tag})


async def _index_meta(
    session: AsyncSession, tag_id: int, names: Names, meta: dict[str, str], *, replace: bool
) -> None:
    """Rewrite the query index (``tag_meta``) of a tag in the transaction that writes it."""
    if replace:
        await session.execute(delete(TagMeta).where(TagMeta.tag_id == tag_id))
    rows = meta_index_rows(tag_id, names, meta)
    if rows:
        await session.execute(insert(TagMeta), rows)
