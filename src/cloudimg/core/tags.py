"""Tag writes without bytes: retag (and a push's commit), delete, immutability.

:class:`TagWrites` is the registry core's use case for writes that name bytes the
registry holds already (:class:`cloudimg.core.RegistryCore`); each takes the names,
already validated, and the write's :class:`cloudimg.catalog.WriteOptions`.

A retag that commits a finished ``/v2`` upload: ``cloudimg push`` sends its bytes
resumably through an upload session of the OCI face (``/v2``), which ends with the bytes
verified (``PUT …?digest=sha256:<hex>``) but not yet named by any tag. A retag of
``sha256:<hex>`` to a tag of the same image then commits that finished upload as an
upload is committed: the bytes are inspected (and cross-checked by qemu-img) as a
``/reg`` upload's are (stored already, they are not stored twice), and the tag is
created or moved to them with the retag's metadata in one catalog write. So the push
shows as one history entry, ``created`` or ``moved`` as any upload, instead of a
manifest's commit followed by a retag that sets the metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cloudimg.blobstore import BlobStore, StagedBlob
from cloudimg.catalog import BlobRef, Catalog, WriteOptions
from cloudimg.core.ingest import TagNames, commit_staged
from cloudimg.digest import Digest
from cloudimg.errors import PermissionDeniedError
from cloudimg.images import Inspection, InspectionPolicy, inspect_reader

__all__ = ["FinishedUploads", "Retagged", "TagWrites"]


class FinishedUpload(Protocol):
    """A finished upload as its store records it: its id and the bytes' blake3 and size."""

    @property
    def id(self) -> str: ...
    @property
    def blake3(self) -> str | None: ...
    @property
    def size(self) -> int: ...


class FinishedUploads(Protocol):
    """Where a retag finds the finished uploads of a push (the OCI slice's store, which the
    app gives the core: the core imports no face)."""

    async def finished_uploads_of(self, repo: str, image: str, sha256_hex: str) -> list[str]:
        """The ids of finished uploads of these bytes to ``repo/image`` no manifest took."""

    async def get_upload(self, session: str) -> FinishedUpload | None:
        """The upload ``session``, None when it is gone."""

    async def drop_upload(self, session: str) -> bool:
        """Forget upload ``session`` (its bytes were used up); whether it was there."""


@dataclass(frozen=True, slots=True)
class Retagged:
    """What a retag made the tag name; ``pushed``: a finished upload was committed, as an
    upload is (new bytes in the registry)."""

    ref: BlobRef
    pushed: bool


@dataclass(frozen=True)
class TagWrites:
    """Retag, delete and immutability over the catalog (and the blob store and inspection
    policy a push's commit needs)."""

    catalog: Catalog
    blobs: BlobStore
    policy: InspectionPolicy
    uploads: FinishedUploads

    async def retag(
        self,
        names: TagNames,
        digest: Digest,
        meta: dict[str, str] | None,
        options: WriteOptions,
        readable: Callable[[str, str], bool] | None = None,
    ) -> Retagged:
        """Point ``names`` at the stored bytes of ``digest`` with ``meta`` (None: the metadata
        the tag last had with those bytes); the sha256 of a finished ``/v2`` upload to the
        image commits that upload instead, with ``meta`` (see the module docstring).

        ``readable`` (scopes): whether the writer may pull ``repo, image``; the stored
        bytes must then be held by a name it may pull (a finished upload to the tag's own
        image needs nothing more: the writer pushes to it). None: any stored bytes.

        Raises:
            PermissionDeniedError: no name the writer may pull holds the bytes (also when
                none holds them: the answer tells nothing about other names);
            ImageRefusedError: a finished upload's bytes fail inspection; and the errors of
                a tag write (``NotFoundError``, ``TagImmutableError``,
                ``PreconditionFailedError``, ...).
        """
        pushed = await self._commit_finished_upload(names, digest, meta, options)
        if pushed is not None:
            return Retagged(pushed, pushed=True)
        if readable is not None:
            holders = await self.catalog.reads.names_holding(digest)
            if not any(readable(repo, image) for repo, image in holders):
                raise PermissionDeniedError(
                    f"these credentials may pull no image that holds {digest}",
                    {"action": "pull", "digest": str(digest)},
                )
        return Retagged(await self.catalog.tags.retag(*names, digest, meta, options), pushed=False)

    async def delete(self, names: TagNames, options: WriteOptions, *, purge_history: bool) -> None:
        """Delete the tag (``purge_history``: its history too); its blob goes when no tag or
        retained history entry references it."""
        await self.catalog.tags.delete_tag(*names, options, purge_history=purge_history)

    async def set_immutable(self, names: TagNames, immutable: bool, options: WriteOptions) -> bool:
        """Make the tag immutable, or release it; whether that changed anything."""
        return await self.catalog.tags.set_immutable(*names, immutable, options)

    async def _commit_finished_upload(
        self,
        names: TagNames,
        digest: Digest,
        meta: dict[str, str] | None,
        options: WriteOptions,
    ) -> BlobRef | None:
        """Make ``names`` name the bytes of a finished upload to its image whose sha256 is
        ``digest``, with ``meta`` (None: none); None when there is no such upload.

        The upload is used up whether the commit succeeds or is refused (a refused push
        starts again), as a manifest's commit uses it up.
        """
        if digest.algorithm != "sha256":
            return None
        catalog, blobs, uploads = self.catalog, self.blobs, self.uploads
        repo, image, _tag = names
        for session in await uploads.finished_uploads_of(repo, image, digest.hex):
            found = await uploads.get_upload(session)
            if found is None or found.blake3 is None:
                continue
            staged = await blobs.claim_staging(found.id, found.blake3, digest.hex, found.size)
            if staged is None:  # gc reclaimed it, or another commit took it meanwhile
                continue
            try:
                inspection = await _inspect(blobs, staged, self.policy)
                await commit_staged(
                    catalog,
                    blobs,
                    names,
                    staged,
                    meta or {},
                    options=options,
                    inspection=inspection,
                    qemu_img=self.policy.qemu_img,
                )
            finally:
                await blobs.discard(staged)  # placed by the commit, or refused: gone either way
                await uploads.drop_upload(found.id)
            return BlobRef(staged.blake3, staged.sha256, staged.size, datetime.now(UTC))
        return None


async def _inspect(blobs: BlobStore, staged: StagedBlob, policy: InspectionPolicy) -> Inspection:
    reader = await blobs.open_staged(staged)
    try:
        return await asyncio.to_thread(inspect_reader, reader, policy)
    finally:
        reader.close()
