"""The OCI store's reads: containerDisk digests of blobs (computed once per blob), the
blob a ``/v2`` digest names, the registry's listing by name."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.catalog.models import Blob, Image, Repository, held_by_image, kept_references
from cloudimg.catalog.records import BlobRef, servable
from cloudimg.catalog.transaction import CatalogBase, FileEffects
from cloudimg.errors import NotFoundError

__all__ = ["OciDigests", "OciKind", "OciReads"]


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

        async for attempt in self._writes():
            async with attempt as (session, effects):
                await change(session, effects)

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
