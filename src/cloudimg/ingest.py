"""The end of every write path: staged bytes become a tag, and the staging file goes.

An upload over HTTP (:mod:`cloudimg.api.upload`) and ``import-legacy`` both end here, so
"commit, then discard in finally" is written once: whether the commit succeeds or
fails, the staging file is dropped (after a commit the bytes live in the blob store).
"""

from __future__ import annotations

import asyncio

from cloudimg.blobstore import BlobStore, StagedBlob
from cloudimg.catalog import Catalog, WriteOptions
from cloudimg.images import Inspection, cross_check

__all__ = ["TagNames", "commit_staged"]

TagNames = tuple[str, str, str]
"""``(repository, image, tag)``, each already validated."""


async def commit_staged(
    catalog: Catalog,
    blobs: BlobStore,
    names: TagNames,
    staged: StagedBlob,
    meta: dict[str, str],
    *,
    options: WriteOptions = WriteOptions(),
    inspection: Inspection | None = None,
    qemu_img: str | None = None,
) -> None:
    """Make ``names`` name the staged bytes with ``meta`` (and what inspection found), then
    drop the staging file.

    ``options``: who writes (recorded in the tag's history) and the request's precondition;
    ``inspection``: what the bytes are (recorded on a blob not inspected yet);
    ``qemu_img``: the qemu-img that must confirm ``inspection`` first (ImageRefusedError).
    """
    try:
        if inspection is not None and qemu_img is not None:
            await _confirm(blobs, staged, inspection, qemu_img)
        await catalog.commit_upload(*names, staged, meta, options=options, inspection=inspection)
    finally:
        await blobs.discard(staged)


async def _confirm(
    blobs: BlobStore, staged: StagedBlob, inspection: Inspection, qemu_img: str
) -> None:
    reader = await blobs.open_staged(staged)
    try:
        await asyncio.to_thread(cross_check, qemu_img, reader, inspection)
    finally:
        reader.close()
