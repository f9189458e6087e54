"""A retag that commits a finished ``/v2`` upload: a push's bytes and metadata in one write.

``cloudimg push`` sends its bytes resumably through an upload session of the OCI face
(``/v2``), which ends with the bytes verified (``PUT …?digest=sha256:<hex>``) but not
yet named by any tag. A retag of ``sha256:<hex>`` to a tag of the same image then
commits that finished upload as an upload is committed: the bytes are inspected (and
cross-checked by qemu-img) as a ``/reg`` upload's are (stored already, they are not
stored twice), and the tag is created or moved to them with the retag's metadata in one
catalog write. So the push shows as one history entry, ``created`` or ``moved`` as any
upload, instead of a manifest's commit followed by a retag that sets the metadata.
"""

from __future__ import annotations

import asyncio

from cloudimg.blobstore import BlobStore, StagedBlob
from cloudimg.catalog import BlobRef, Catalog, WriteOptions
from cloudimg.catalog.models import utcnow
from cloudimg.config import Settings
from cloudimg.digest import Digest
from cloudimg.images import Inspection, InspectionPolicy, inspect_reader
from cloudimg.ingest import TagNames, commit_staged
from cloudimg.oci.store import OciStore

__all__ = ["commit_finished_upload"]


async def commit_finished_upload(
    catalog: Catalog,
    oci: OciStore,
    blobs: BlobStore,
    settings: Settings,
    names: TagNames,
    digest: Digest,
    meta: dict[str, str] | None,
    options: WriteOptions,
) -> BlobRef | None:
    """Make ``names`` name the bytes of a finished upload to its image whose sha256 is
    ``digest``, with ``meta`` (None: none); None when there is no such upload.

    The upload is used up whether the commit succeeds or is refused (a refused push
    starts again), as a manifest's commit uses it up.

    Raises:
        ImageRefusedError: the bytes fail inspection; and the errors of a tag write
            (``TagImmutableError``, ``PreconditionFailedError``, ...).
    """
    if digest.algorithm != "sha256":
        return None
    repo, image, _tag = names
    for session in await oci.finished_uploads_of(repo, image, digest.hex):
        found = await oci.get_upload(session)
        if found is None or found.blake3 is None:
            continue
        staged = await blobs.claim_staging(found.id, found.blake3, digest.hex, found.size)
        if staged is None:  # gc reclaimed it, or another commit took it meanwhile
            continue
        try:
            policy = settings.inspection_policy
            inspection = await _inspect(blobs, staged, policy)
            await commit_staged(
                catalog,
                blobs,
                names,
                staged,
                meta or {},
                options=options,
                inspection=inspection,
                qemu_img=policy.qemu_img,
            )
        finally:
            await blobs.discard(staged)  # placed by the commit, or refused: gone either way
            await oci.drop_upload(found.id)
        return BlobRef(staged.blake3, staged.sha256, staged.size, utcnow())
    return None


async def _inspect(blobs: BlobStore, staged: StagedBlob, policy: InspectionPolicy) -> Inspection:
    reader = await blobs.open_staged(staged)
    try:
        return await asyncio.to_thread(inspect_reader, reader, policy)
    finally:
        reader.close()
