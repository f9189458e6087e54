"""The OCI store's upload sessions: each session's durable length and, once finished, its
verified digests (so a push resumes on any replica and after a restart), and the stored
blobs a push may name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.catalog.models import Blob, OciUpload, utcnow
from cloudimg.catalog.records import BlobRef
from cloudimg.catalog.transaction import CatalogBase, FileEffects

__all__ = ["OciUploads", "UploadSession"]


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


class OciUploads(CatalogBase):
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

        async for attempt in self._writes():
            async with attempt as (db, effects):
                await change(db, effects)

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

        async for attempt in self._writes():
            async with attempt as (db, effects):
                written = await change(db, effects)
        return written

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

        async for attempt in self._writes():
            async with attempt as (db, effects):
                written = await change(db, effects)
        return written

    async def drop_upload(self, session: str) -> bool:
        async def change(db: AsyncSession, _effects: FileEffects) -> bool:
            done = await db.execute(delete(OciUpload).where(OciUpload.id == session))
            return bool(done.rowcount)  # type: ignore[attr-defined]

        async for attempt in self._writes():
            async with attempt as (db, effects):
                written = await change(db, effects)
        return written

    async def finished_upload(
        self, sha256_hex: str, names: tuple[str, str] | None = None
    ) -> UploadSession | None:
        """A finished upload of bytes with this sha256, newest first: to ``names`` (repo,
        image), or to any name when None (without scopes a writer may read every image,
        as retag allows)."""
        query = select(OciUpload).where(OciUpload.sha256 == sha256_hex)
        if names is not None:
            query = query.where(OciUpload.repository == names[0], OciUpload.image == names[1])
        async with self._read() as db:
            row = await db.scalar(query.order_by(OciUpload.updated_at.desc()).limit(1))
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
