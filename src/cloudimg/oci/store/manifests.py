"""The OCI store's kept pushes: manifests, indexes, their children, as pushed over ``/v2``.

A kept manifest is served (by tag for a ``top`` one, by digest for every one) while its
image holds the disk the tag push named, by a tag or a retained history entry. Its
pushed layer (when it is not the disk itself) and config are blobs of the blob store,
each holding one reference in ``Blob.refcount``; the tag write that lets the image stop
holding the disk drops the kept rows and releases those references in the same
transaction (``drop_unheld_manifests``, which the store registers as a hook of the
catalog's tag writes: ``cloudimg.catalog.hooks``); ``cloudimg gc`` sweeps what a write
racing a push left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.blobstore import StagedBlob
from cloudimg.catalog.hooks import TagHooks
from cloudimg.catalog.models import Blob, OciManifest, held_by_image, utcnow
from cloudimg.catalog.records import BlobRef, servable
from cloudimg.catalog.transaction import CatalogBase, FileEffects
from cloudimg.errors import NotFoundError
from cloudimg.oci.media_types import INDEX_MEDIA_TYPES

__all__ = [
    "KeptPart",
    "OciManifests",
    "PushedManifest",
    "drop_unheld_manifests",
    "release_tag",
]

KeptPart = StagedBlob | str
"""A pushed blob a kept manifest holds: a finished upload to place, or the blake3 of a
blob stored already."""


@dataclass(frozen=True, slots=True)
class PushedManifest:
    """A manifest pushed for a disk, as it was pushed, with its config."""

    digest: str
    media_type: str
    body: bytes
    blob: str
    """blake3 of the disk the tag push named (empty while ``pending``)."""
    config_digest: str
    config: bytes
    """The config inline (the empty ``{}``, or rows kept before ``config_blob``)."""
    role: str = "top"
    layer: KeptPart | None = None
    """The pushed layer when it is not the disk itself; kept in the blob store."""
    config_part: KeptPart | None = None
    """The pushed config, kept in the blob store (None: ``config`` inline)."""
    tag: str | None = None
    """The tag a ``top`` manifest was pushed to (None: pulled by digest only)."""

    @property
    def is_container_image(self) -> bool:
        """An image index, or a manifest whose layer is kept apart from its disk (a
        containerDisk's tar): what a pull by its tag returns as pushed. A disk artifact
        (its layer is the disk) pulls by tag as the generated containerDisk instead."""
        return self.media_type in INDEX_MEDIA_TYPES or self.layer is not None


def _pushed(row: OciManifest) -> PushedManifest:
    return PushedManifest(
        row.digest,
        row.media_type,
        row.body,
        row.blob,
        row.config_digest,
        row.config,
        row.role,
        row.layer_blob,
        row.config_blob,
        row.tag,
    )


def _live(repo: str, image: str) -> ColumnElement[bool]:
    """Kept manifests of ``repo/image`` that are served: their disk is held there."""
    held = select(Blob.digest).where(held_by_image(repo, image), Blob.quarantined_at.is_(None))
    return and_(
        OciManifest.repository == repo,
        OciManifest.image == image,
        OciManifest.role != "pending",
        OciManifest.blob.in_(held),
    )


async def drop_unheld_manifests(session: AsyncSession, repo: str, image: str) -> list[str]:
    """Delete the kept manifests of ``repo/image`` whose disk the image no longer holds
    (no tag, no retained history entry); the blake3 of each reference they held, for
    the caller to release in the same transaction."""
    held = select(Blob.digest).where(held_by_image(repo, image))
    rows = (
        await session.scalars(
            select(OciManifest)
            .where(
                OciManifest.repository == repo,
                OciManifest.image == image,
                OciManifest.role != "pending",
                OciManifest.blob.not_in(held),
            )
            .with_for_update()
        )
    ).all()
    released = [ref for row in rows for ref in (row.layer_blob, row.config_blob) if ref]
    if rows:
        await session.execute(delete(OciManifest).where(OciManifest.id.in_([r.id for r in rows])))
        await session.flush()
    return released


async def release_tag(session: AsyncSession, repo: str, image: str, tag: str) -> None:
    """A tag written by anything but its ``/v2`` push no longer pulls as that push: the
    kept rows stay (pulled by digest while their disk is held) without the tag."""
    await session.execute(
        update(OciManifest)
        .where(
            OciManifest.repository == repo,
            OciManifest.image == image,
            OciManifest.tag == tag,
        )
        .values(tag=None)
    )


class OciManifests(CatalogBase):
    """Manifests pushed by digest until an index takes them, and kept pushes."""

    @staticmethod
    def hook_into(hooks: TagHooks) -> None:
        """Have every tag write of the catalog keep the kept pushes true, in its
        transaction: a tag written by anything but its push stops pulling as that push
        (``release_tag``); manifests whose disk the image stopped holding go, and the
        catalog releases the references they held (``drop_unheld_manifests``)."""
        hooks.tag_pointed.append(release_tag)
        hooks.image_changed.append(drop_unheld_manifests)

    async def add_pending_manifest(self, repo: str, image: str, manifest: PushedManifest) -> None:
        """Record a manifest pushed by digest (an index's child) until an index takes it."""

        async def change(db: AsyncSession, _effects: FileEffects) -> None:
            db.add(_row(repo, image, manifest, "pending", None, None))

        async for attempt in self._writes():
            async with attempt as (session, effects):
                await change(session, effects)

    async def keep_pushed(self, repo: str, image: str, manifests: list[PushedManifest]) -> bool:
        """Keep what a tag push sent (a manifest, or an index and its children), each
        holding a reference on its layer and config; in one transaction.

        False, and nothing kept, when ``repo/image`` no longer holds the disk (a tag
        write moved on meanwhile). ``NotFoundError`` when a stored part is gone.
        """

        async def change(db: AsyncSession, effects: FileEffects) -> bool:
            disks = {manifest.blob for manifest in manifests}
            held = await db.scalars(
                select(Blob.digest)
                .where(Blob.digest.in_(disks), held_by_image(repo, image))
                .with_for_update()
            )
            if set(held) != disks:
                return False
            for manifest in manifests:
                if await self._kept_already(db, repo, image, manifest):
                    continue
                layer = await self._hold(db, manifest.layer, effects)
                config = await self._hold(db, manifest.config_part, effects)
                db.add(_row(repo, image, manifest, manifest.role, layer, config))
            await db.execute(
                delete(OciManifest).where(
                    OciManifest.repository == repo,
                    OciManifest.image == image,
                    OciManifest.role == "pending",
                    OciManifest.digest.in_([manifest.digest for manifest in manifests]),
                )
            )
            return True

        async for attempt in self._writes():
            async with attempt as (session, effects):
                written = await change(session, effects)
        return written

    async def _kept_already(
        self, db: AsyncSession, repo: str, image: str, manifest: PushedManifest
    ) -> bool:
        """Whether the push is kept already; a ``top`` row of the same push that no tag
        names any more (a ``/reg`` write took its tag) is given this push's tag."""
        rows = (
            await db.scalars(
                select(OciManifest).where(
                    OciManifest.repository == repo,
                    OciManifest.image == image,
                    OciManifest.digest == manifest.digest,
                    OciManifest.blob == manifest.blob,
                    OciManifest.role == manifest.role,
                )
            )
        ).all()
        if manifest.role != "top" or any(row.tag == manifest.tag for row in rows):
            return bool(rows)
        untagged = next((row for row in rows if row.tag is None), None)
        if untagged is not None:
            untagged.tag = manifest.tag
        return untagged is not None

    async def _hold(
        self, db: AsyncSession, part: KeptPart | None, effects: FileEffects
    ) -> str | None:
        """Take one reference on a kept part, placing an upload's file; its blake3."""
        if part is None:
            return None
        if isinstance(part, str):
            blob = await db.scalar(select(Blob).where(Blob.digest == part).with_for_update())
            if blob is None or blob.refcount <= 0 or blob.quarantined_at is not None:
                raise NotFoundError("a pushed blob is gone; push it again", {"blake3": part})
            blob.refcount += 1
            return part
        blob = await self._lock_or_create_blob(db, part)
        blob.refcount += 1
        displace = blob.quarantined_at is not None
        blob.quarantined_at = None
        await db.flush()
        await self._ensure_blob_file(part, displace=displace)
        return part.blake3

    async def kept_blob(self, repo: str, image: str, sha256_hex: str) -> BlobRef | None:
        """A pushed layer or config that a served kept manifest of ``repo/image`` holds."""
        refs = (
            select(OciManifest.layer_blob)
            .where(_live(repo, image))
            .union(select(OciManifest.config_blob).where(_live(repo, image)))
        )
        async with self._read() as db:
            blob = await db.scalar(
                select(Blob).where(Blob.sha256 == sha256_hex, Blob.digest.in_(refs)).limit(1)
            )
            return None if blob is None else servable(blob)

    async def _drop_unheld(
        self, db: AsyncSession, effects: FileEffects, repo: str, image: str
    ) -> int:
        released = await drop_unheld_manifests(db, repo, image)
        for ref in released:
            await self._release(db, ref, effects)
        return len(released)

    async def sweep_pushed_manifests(self, cutoff: datetime) -> tuple[int, int]:
        """Drop kept manifests whose disk their image no longer holds (a write that raced
        the push may leave one), and pending ones older than ``cutoff`` that no index took;
        (kept dropped, pending dropped)."""
        async with self._read() as db:
            names = (
                await db.execute(select(OciManifest.repository, OciManifest.image).distinct())
            ).all()
        dropped = 0
        for repo, image in names:
            async for attempt in self._writes():
                async with attempt as (session, effects):
                    written = await self._drop_unheld(session, effects, str(repo), str(image))
            dropped += written

        async def stale(db: AsyncSession, _effects: FileEffects) -> int:
            done = await db.execute(
                delete(OciManifest).where(
                    OciManifest.role == "pending", OciManifest.created_at < cutoff
                )
            )
            return int(done.rowcount)  # type: ignore[attr-defined]

        async for attempt in self._writes():
            async with attempt as (session, effects):
                pending = await stale(session, effects)
        return dropped, pending

    async def pending_manifest(self, repo: str, image: str, digest: str) -> bytes | None:
        """The body of a manifest pushed to ``repo/image`` by digest (an index's child),
        which no tag has taken yet."""
        async with self._read() as db:
            body = await db.scalar(
                select(OciManifest.body)
                .where(
                    OciManifest.repository == repo,
                    OciManifest.image == image,
                    OciManifest.digest == digest,
                    OciManifest.role == "pending",
                )
                .limit(1)
            )
            return None if body is None else bytes(body)

    async def kept_child_layers(self) -> list[tuple[str, bytes, str]]:
        """``(layer blake3, manifest body, media type)`` of every kept index child whose
        layer is kept apart from the tag's disk (another architecture's disk or tar), for
        fsck to inspect what a pull by digest would hand a node."""
        query = select(OciManifest.layer_blob, OciManifest.body, OciManifest.media_type).where(
            OciManifest.role == "child", OciManifest.layer_blob.is_not(None)
        )
        async with self._read() as db:
            rows = (await db.execute(query)).all()
        return [(str(layer), bytes(body), str(media)) for layer, body, media in rows]

    async def pushed_manifest(
        self,
        repo: str,
        image: str,
        *,
        blob: str | None = None,
        digest: str | None = None,
        config: str | None = None,
        tag: str | None = None,
    ) -> PushedManifest | None:
        """The newest served kept manifest of ``repo/image``: the one a tag push made for
        disk ``blob`` (to ``tag``, when given), or any with manifest ``digest``, or with
        inline config ``config``."""
        query = select(OciManifest).where(_live(repo, image))
        if blob is not None:
            query = query.where(OciManifest.blob == blob, OciManifest.role == "top")
        if tag is not None:
            query = query.where(OciManifest.tag == tag)
        if digest is not None:
            query = query.where(OciManifest.digest == digest)
        if config is not None:
            query = query.where(OciManifest.config_digest == config, OciManifest.config != b"")
        query = query.order_by(OciManifest.id.desc()).limit(1)
        async with self._read() as db:
            row = await db.scalar(query)
            return None if row is None else _pushed(row)


def _row(
    repo: str,
    image: str,
    manifest: PushedManifest,
    role: str,
    layer: str | None,
    config: str | None,
) -> OciManifest:
    return OciManifest(
        repository=repo,
        image=image,
        digest=manifest.digest,
        media_type=manifest.media_type,
        body=manifest.body,
        blob=manifest.blob,
        config_digest=manifest.config_digest,
        config=manifest.config,
        created_at=utcnow(),
        role=role,
        layer_blob=layer,
        config_blob=config,
        tag=manifest.tag if role == "top" else None,
    )
