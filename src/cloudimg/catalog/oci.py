"""The catalog's OCI view: containerDisk digests of blobs, registry listings by name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, and_, delete, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.blobstore import StagedBlob
from cloudimg.catalog.models import Blob, Image, OciManifest, OciUpload, Repository, utcnow
from cloudimg.catalog.reads import held_by_image, servable
from cloudimg.catalog.records import BlobRef
from cloudimg.catalog.transaction import CatalogBase, FileEffects
from cloudimg.errors import NotFoundError

__all__ = [
    "KeptPart",
    "OciDigests",
    "OciKind",
    "OciPushes",
    "OciReads",
    "PushedManifest",
    "UploadSession",
    "drop_unheld_manifests",
    "kept_references",
]

KeptPart = StagedBlob | str
"""A pushed blob a kept manifest holds: a finished upload to place, or the blake3 of a
blob stored already."""

OciKind = Literal["layer", "config", "manifest"]
"""Which part of a blob's generated containerDisk a sha256 names."""

OciDigests = tuple[str, str, str]
"""sha256 hex of a containerDisk's layer, config and manifest."""


class OciReads(CatalogBase):
    """What ``/v2`` asks the catalog, and the once-per-blob containerDisk digests."""

    async def resolve_oci(self, repo: str, image: str, kind: OciKind, sha256_hex: str) -> BlobRef:
        """The blob whose generated containerDisk has ``sha256_hex`` as its ``kind``.

        Valid while a tag of ``repo/image``, or a retained history entry of one, holds
        the blob, as digest references of ``/reg`` are.
        """
        column = {"layer": Blob.oci_layer, "config": Blob.oci_config, "manifest": Blob.oci_manifest}
        async with self._read() as session:
            blob = await session.scalar(
                select(Blob).where(column[kind] == sha256_hex, held_by_image(repo, image)).limit(1)
            )
        if blob is None:
            raise NotFoundError(
                f"no image of {repo}/{image} has a {kind} with that digest",
                {"digest": f"sha256:{sha256_hex}"},
            )
        return servable(blob)

    async def oci_digests(self, digest: str) -> OciDigests | None:
        """The stored containerDisk digests of blob ``digest``; None until computed."""
        async with self._read() as session:
            row = (
                await session.execute(
                    select(Blob.oci_layer, Blob.oci_config, Blob.oci_manifest).where(
                        Blob.digest == digest
                    )
                )
            ).one_or_none()
        if row is None or None in tuple(row):
            return None
        return str(row[0]), str(row[1]), str(row[2])

    async def set_oci_digests(self, digest: str, digests: OciDigests) -> None:
        """Store the containerDisk digests of blob ``digest`` (a function of its bytes:
        writing them twice, from two replicas, writes the same values)."""
        layer, config, manifest = digests

        async def change(session: AsyncSession, _effects: FileEffects) -> None:
            await session.execute(
                update(Blob)
                .where(Blob.digest == digest)
                .values(oci_layer=layer, oci_config=config, oci_manifest=manifest)
            )

        await self._write(change)

    async def blobs_without_oci(self, limit: int = 100) -> list[tuple[str, int]]:
        """Blobs in use whose containerDisk digests are not computed yet: (blake3, size)."""
        async with self._read() as session:
            rows = await session.execute(
                select(Blob.digest, Blob.size)
                .where(
                    Blob.oci_layer.is_(None),
                    Blob.refcount > kept_references(),  # a disk, not only a kept layer
                    Blob.quarantined_at.is_(None),
                )
                .order_by(Blob.created_at)
                .limit(limit)
            )
            return [(str(d), int(s)) for d, s in rows]

    async def list_image_paths(self, limit: int, after: str | None) -> list[str]:
        """``repo/image`` of every image in the database's order of names, those after
        ``after`` only (in that order, so pages never skip or repeat), at most ``limit``."""
        query = (
            select(Repository.name, Image.name)
            .join(Image, Image.repository_id == Repository.id)
            .order_by(Repository.name, Image.name)
            .limit(limit)
        )
        if after is not None:
            repo, _, image = after.partition("/")
            query = query.where(tuple_(Repository.name, Image.name) > tuple_(repo, image))
        async with self._read() as session:
            rows = await session.execute(query)
            return [f"{repo}/{image}" for repo, image in rows]


@dataclass(frozen=True, slots=True)
class UploadSession:
    """An OCI blob upload session as the catalog records it."""

    id: str
    repo: str
    image: str
    size: int
    blake3: str | None
    sha256: str | None
    updated: datetime

    @property
    def finished(self) -> bool:
        return self.sha256 is not None


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


def _session(row: OciUpload) -> UploadSession:
    return UploadSession(
        row.id, row.repository, row.image, row.size, row.blake3, row.sha256, row.updated_at
    )


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


def kept_references() -> ColumnElement[int]:
    """The references kept manifests hold on the outer query's blob (layer, config)."""
    layers = select(func.count()).where(OciManifest.layer_blob == Blob.digest)
    configs = select(func.count()).where(OciManifest.config_blob == Blob.digest)
    return layers.scalar_subquery() + configs.scalar_subquery()


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


class OciPushes(CatalogBase):
    """Upload sessions (so a push resumes on any replica and after a restart) and pushed
    manifests."""

    async def create_upload(self, session: str, repo: str, image: str) -> None:
        async def change(db: AsyncSession, _effects: FileEffects) -> None:
            now = utcnow()
            db.add(
                OciUpload(
                    id=session, repository=repo, image=image, size=0, created_at=now, updated_at=now
                )
            )

        await self._write(change)

    async def get_upload(self, session: str) -> UploadSession | None:
        async with self._read() as db:
            row = await db.get(OciUpload, session)
            return None if row is None else _session(row)

    async def advance_upload(self, session: str, offset: int, size: int) -> bool:
        """Record ``size`` durable bytes if the session is still at ``offset`` and open."""

        async def change(db: AsyncSession, _effects: FileEffects) -> bool:
            done = await db.execute(
                update(OciUpload)
                .where(
                    OciUpload.id == session, OciUpload.size == offset, OciUpload.sha256.is_(None)
                )
                .values(size=size, updated_at=utcnow())
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

        return await self._write(change)

    async def finish_upload(
        self, session: str, offset: int, blake3_hex: str, sha256_hex: str, size: int
    ) -> bool:
        """Mark the session finished with its verified digests (if still at ``offset``)."""

        async def change(db: AsyncSession, _effects: FileEffects) -> bool:
            done = await db.execute(
                update(OciUpload)
                .where(
                    OciUpload.id == session, OciUpload.size == offset, OciUpload.sha256.is_(None)
                )
                .values(size=size, blake3=blake3_hex, sha256=sha256_hex, updated_at=utcnow())
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

        return await self._write(change)

    async def drop_upload(self, session: str) -> bool:
        async def change(db: AsyncSession, _effects: FileEffects) -> bool:
            done = await db.execute(delete(OciUpload).where(OciUpload.id == session))
            return bool(done.rowcount)  # type: ignore[attr-defined]

        return await self._write(change)

    async def drop_finished_uploads(self, sha256_hex: str) -> None:
        """Forget finished uploads of these bytes: a manifest took them (their file went
        into the blob tree, or stays for gc)."""

        async def change(db: AsyncSession, _effects: FileEffects) -> None:
            await db.execute(delete(OciUpload).where(OciUpload.sha256 == sha256_hex))

        await self._write(change)

    async def finished_upload(self, sha256_hex: str) -> UploadSession | None:
        """A finished upload of bytes with this sha256, newest first (any repository: a
        writer may read every image, as retag allows)."""
        async with self._read() as db:
            row = await db.scalar(
                select(OciUpload)
                .where(OciUpload.sha256 == sha256_hex)
                .order_by(OciUpload.updated_at.desc())
                .limit(1)
            )
            return None if row is None else _session(row)

    async def finished_uploads_of(self, repo: str, image: str, sha256_hex: str) -> list[str]:
        """Finished uploads of these bytes to ``repo/image`` that no manifest took."""
        async with self._read() as db:
            rows = await db.scalars(
                select(OciUpload.id).where(
                    OciUpload.repository == repo,
                    OciUpload.image == image,
                    OciUpload.sha256 == sha256_hex,
                )
            )
            return list(rows)

    async def is_inspected(self, digest: str) -> bool:
        """Whether blob ``digest`` was inspected as a VM image."""
        async with self._read() as db:
            at = await db.scalar(select(Blob.inspected_at).where(Blob.digest == digest))
            return at is not None

    async def stale_uploads(self, cutoff: datetime) -> list[str]:
        """Sessions untouched since ``cutoff`` (finished ones no manifest took included)."""
        async with self._read() as db:
            rows = await db.scalars(select(OciUpload.id).where(OciUpload.updated_at < cutoff))
            return list(rows)

    async def sha256_stored(self, sha256_hex: str) -> BlobRef | None:
        """A stored, served blob with this sha256 (for a mount or a manifest's layer)."""
        async with self._read() as db:
            blob = await db.scalar(
                select(Blob)
                .where(Blob.sha256 == sha256_hex, Blob.refcount > 0, Blob.quarantined_at.is_(None))
                .limit(1)
            )
            return (
                None
                if blob is None
                else BlobRef(blob.digest, blob.sha256, blob.size, blob.created_at)
            )

    async def add_pending_manifest(self, repo: str, image: str, manifest: PushedManifest) -> None:
        """Record a manifest pushed by digest (an index's child) until an index takes it."""

        async def change(db: AsyncSession, _effects: FileEffects) -> None:
            db.add(_row(repo, image, manifest, "pending", None, None))

        await self._write(change)

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

        return await self._write(change)

    async def _kept_already(
        self, db: AsyncSession, repo: str, image: str, manifest: PushedManifest
    ) -> bool:
        found = await db.scalar(
            select(OciManifest.id)
            .where(
                OciManifest.repository == repo,
                OciManifest.image == image,
                OciManifest.digest == manifest.digest,
                OciManifest.blob == manifest.blob,
                OciManifest.role == manifest.role,
            )
            .limit(1)
        )
        return found is not None

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

    async def drop_manifest(self, repo: str, image: str, sha256_hex: str) -> bool:
        """Forget the kept manifests of ``repo/image`` with this digest (pending ones too),
        releasing what they held; whether there was one."""

        async def change(db: AsyncSession, effects: FileEffects) -> bool:
            rows = (
                await db.scalars(
                    select(OciManifest)
                    .where(
                        OciManifest.repository == repo,
                        OciManifest.image == image,
                        OciManifest.digest == sha256_hex,
                    )
                    .with_for_update()
                )
            ).all()
            for row in rows:
                await db.delete(row)
            await db.flush()
            for row in rows:
                for ref in (row.layer_blob, row.config_blob):
                    if ref:
                        await self._release(db, ref, effects)
            return bool(rows)

        return await self._write(change)

    def _dropping_unheld(
        self, repo: str, image: str
    ) -> Callable[[AsyncSession, FileEffects], Awaitable[int]]:
        async def change(db: AsyncSession, effects: FileEffects) -> int:
            released = await drop_unheld_manifests(db, repo, image)
            for ref in released:
                await self._release(db, ref, effects)
            return len(released)

        return change

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
            dropped += await self._write(self._dropping_unheld(str(repo), str(image)))

        async def stale(db: AsyncSession, _effects: FileEffects) -> int:
            done = await db.execute(
                delete(OciManifest).where(
                    OciManifest.role == "pending", OciManifest.created_at < cutoff
                )
            )
            return int(done.rowcount)  # type: ignore[attr-defined]

        return dropped, await self._write(stale)

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

    async def pushed_manifest(
        self,
        repo: str,
        image: str,
        *,
        blob: str | None = None,
        digest: str | None = None,
        config: str | None = None,
    ) -> PushedManifest | None:
        """The newest served kept manifest of ``repo/image``: the one a tag push made for
        disk ``blob``, or any with manifest ``digest``, or with inline config ``config``."""
        query = select(OciManifest).where(_live(repo, image))
        if blob is not None:
            query = query.where(OciManifest.blob == blob, OciManifest.role == "top")
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
    )
