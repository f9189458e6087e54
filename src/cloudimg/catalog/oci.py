"""The catalog's OCI view: containerDisk digests of blobs, registry listings by name,
upload sessions (kept pushes: ``cloudimg.catalog.oci_manifests``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.catalog.models import Blob, Image, OciUpload, Repository, utcnow
from cloudimg.catalog.reads import held_by_image, kept_references, servable
from cloudimg.catalog.records import BlobRef
from cloudimg.catalog.transaction import CatalogBase, FileEffects
from cloudimg.errors import NotFoundError

__all__ = [
    "OciDigests",
    "OciKind",
    "OciPushes",
    "OciReads",
    "UploadSession",
]


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


def _session(row: OciUpload) -> UploadSession:
    return UploadSession(
        row.id, row.repository, row.image, row.size, row.blake3, row.sha256, row.updated_at
    )


class OciPushes(CatalogBase):
    """Upload sessions (so a push resumes on any replica and after a restart) and the
    blobs a push may name."""

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
