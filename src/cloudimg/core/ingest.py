"""Image bytes into the registry: receive an upload, check it, commit it.

:class:`Uploads` (the registry core's upload use case, :class:`cloudimg.core.RegistryCore`)
opens one :class:`Reception` per upload. A face (``/reg``, :mod:`cloudimg.api.reg`)
turns its request into an :class:`ImageBody` (the image's bytes as an async iterator,
then what the body said besides) and hands it over; the reception does the rest:

- before any byte is read, :meth:`Reception.admit` refuses a body announced over the
  image size limit (413), over the free space (507) or over what the repository's
  quota leaves (403, :mod:`cloudimg.core.quotas`);
- receiving: the image's bytes go to the blob store's staging writer, which hashes and
  writes them and feeds them to the image inspector (:mod:`cloudimg.images`) off the
  event loop; an image over the size limit, or one the inspector refuses by its first
  MiB, stops the reading at once (:attr:`Reception.refusal`: the face answers without
  reading the rest); so does an image whose bytes pass what the quota leaves;
- then the digests given are checked and the inspector gives its verdict, which
  refuses an unsafe image or one that is not the declared format (422 naming the
  rule); nothing is stored;
- :meth:`Reception.commit` goes through :func:`commit_staged`, the end of every write
  path (an upload, a push's commit, ``import-legacy``): "commit, then discard in
  finally" is written once, so whether the commit succeeds or fails the staging file
  is dropped (after a commit the bytes live in the blob store);
- :meth:`Reception.close` drops a staging file that was received but not committed
  (bad input, a disconnect, a full disk, a refused precondition).

Nothing here knows HTTP: the face reads bodies, drains refused ones and renders.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from cloudimg.blobstore import BlobStore, StagedBlob, StagingWriter
from cloudimg.catalog import Catalog, WriteOptions
from cloudimg.core.quotas import QuotaGate, Room
from cloudimg.digest import Digest
from cloudimg.errors import (
    DigestMismatchError,
    ImageRefusedError,
    InsufficientStorageError,
    PayloadTooLargeError,
)
from cloudimg.images import ImageInspector, Inspection, InspectionPolicy, cross_check

__all__ = [
    "BodyDetails",
    "ImageBody",
    "Reception",
    "TagNames",
    "Upload",
    "Uploads",
    "commit_staged",
]

TagNames = tuple[str, str, str]
"""``(repository, image, tag)``, each already validated."""


@dataclass(frozen=True, slots=True)
class Upload:
    """A received upload: its staged bytes, its metadata and what the bytes are."""

    staged: StagedBlob
    meta: dict[str, str]
    inspection: Inspection


class BodyDetails(NamedTuple):
    """What an upload's body says besides the image, known once the body is read (a plain
    record: making one runs no code of this module)."""

    meta: dict[str, str]
    declared_format: str | None = None
    """A format the body declares (normalized), besides the one the reception was opened with."""


class ImageBody(Protocol):
    """An upload's body as a face hands it over."""

    def image(self) -> AsyncIterator[bytes | bytearray]:
        """The image's bytes as they arrive. The first item (it may be empty) comes when the
        image starts; a body without an image yields nothing."""
        ...

    def details(self) -> BodyDetails:
        """What the body said besides the image; called once :meth:`image` has ended.

        Raises:
            CloudimgError: bad metadata, or the body had no image.
        """
        ...


@dataclass(frozen=True)
class Uploads:
    """The upload use case over its collaborators: where bytes are staged, where tags live,
    what inspection accepts and how large an image may be."""

    catalog: Catalog
    blobs: BlobStore
    policy: InspectionPolicy
    max_image_size: int | None = None
    quotas: QuotaGate | None = None
    """The repositories' quotas (None: none)."""

    def reception(
        self, digests: tuple[Digest, ...], declared_format: str | None, repo: str | None = None
    ) -> Reception:
        """One upload to ``repo`` (None: not checked against a quota): every digest of
        ``digests`` must match its bytes, inspection must find ``declared_format``
        (normalized; None: any allowed format)."""
        return Reception(self, ImageInspector(self.policy, declared_format), digests, repo)

    async def refuse_declared_length(self, declared: int | None, envelope: int) -> None:
        """Refuse, before any byte of the body is read, a body announced larger than allowed.

        ``declared``: the body's announced length (None: not announced); ``envelope``: the
        room the body's framing may take beside the image.

        Raises:
            PayloadTooLargeError: over the image size limit and ``envelope``.
            InsufficientStorageError: over the data volume's free space.
        """
        if declared is None:
            return  # chunked, or nonsense the server itself refuses
        limit = self.max_image_size
        if limit is not None and declared > limit + envelope:
            raise PayloadTooLargeError(
                f"the request body is larger than the image size limit of {limit} bytes",
                {"limit": limit, "content_length": declared},
            )
        free = await self.blobs.free_space()
        if free is not None and declared > free:
            raise InsufficientStorageError(
                "the data volume has no room for an upload of this size; nothing was stored",
                {"content_length": declared, "free_bytes": free},
            )


class Reception:
    """One upload while it is received: :meth:`receive`, then :meth:`commit`; :meth:`close` last."""

    def __init__(
        self,
        uploads: Uploads,
        inspector: ImageInspector,
        digests: tuple[Digest, ...],
        repo: str | None = None,
    ) -> None:
        self._uploads = uploads
        self._inspector = inspector
        self._digests = digests
        self._repo = repo
        self._room: Room | None = None
        self._writer: StagingWriter | None = None
        self._upload: Upload | None = None
        self._committed = False

    async def admit(self, declared: int | None, envelope: int) -> None:
        """Refuse, before any byte of the body is read, a body announced larger than allowed,
        and measure what the repository's quota leaves (the image is stopped once its
        bytes pass it).

        ``declared``: the body's announced length (None: not announced); ``envelope``: the
        room the body's framing may take beside the image (a body of ``declared`` bytes
        carries an image of at least ``declared - envelope``).

        Raises:
            PayloadTooLargeError: over the image size limit and ``envelope``.
            InsufficientStorageError: over the data volume's free space.
            QuotaExceededError: the image cannot fit in what the quota leaves.
        """
        uploads = self._uploads
        await uploads.refuse_declared_length(declared, envelope)
        if uploads.quotas is None or self._repo is None:
            return
        self._room = await uploads.quotas.room(self._repo)
        if self._room is not None and declared is not None:
            self._room.admit(max(declared - envelope, 0))

    @property
    def refusal(self) -> ImageRefusedError | None:
        """The refusal the image's first MiB decided while it streamed: :meth:`receive`
        raised it without reading the rest of the body."""
        return self._inspector.refusal

    async def receive(self, body: ImageBody) -> Upload:
        """Read ``body``'s image into a staging file; check its digests, then inspect it.

        Raises:
            PayloadTooLargeError: the image passed the image size limit.
            ImageRefusedError: the image breaks an inspection rule (``context["rule"]``).
            DigestMismatchError: a digest given does not match the bytes.
            InsufficientStorageError: the data volume filled up while the image streamed.
            CloudimgError: what ``body`` raises (a malformed body, bad metadata, ...).
        """
        try:
            async for chunk in body.image():
                await self._write(chunk)
            details = body.details()
            if details.declared_format is not None:
                self._inspector.declare(details.declared_format)
            assert self._writer is not None, "every body with details has an image"
            staged = await self._writer.finish()
            for digest in self._digests:
                _check_digest(staged, digest)
            # The last bytes were fed on the writer's thread; finishing reads the last MiB.
            inspection = await asyncio.to_thread(self._inspector.finish, staged.size)
        except BaseException:
            if self._writer is not None:
                await self._writer.abort()
            raise
        self._upload = Upload(staged, details.meta, inspection)
        return self._upload

    async def commit(self, names: TagNames, options: WriteOptions = WriteOptions()) -> Upload:
        """Make ``names`` name the received bytes and metadata; the staging file goes.

        ``options``: the writer's name and the request's precondition (checked under
        the catalog's lock).
        """
        assert self._upload is not None, "receive() comes first"
        self._committed = True  # commit_staged drops the staging file, whatever happens
        upload, uploads = self._upload, self._uploads
        await commit_staged(
            uploads.catalog,
            uploads.blobs,
            names,
            upload.staged,
            upload.meta,
            options=options,
            inspection=upload.inspection,
            qemu_img=uploads.policy.qemu_img,
        )
        return upload

    async def close(self) -> None:
        """Drop a staging file that was received but not committed."""
        if self._upload is not None and not self._committed:
            await self._uploads.blobs.discard(self._upload.staged)

    async def _write(self, chunk: bytes | bytearray) -> None:
        """The next bytes of the image, under the image size limit (the first opens it)."""
        if self._writer is None:
            self._writer = await self._uploads.blobs.open_staging(self._inspector.feed)
            if not chunk:
                return
        limit = self._uploads.max_image_size
        if limit is not None and self._writer.size + len(chunk) > limit:
            raise PayloadTooLargeError(
                f"the image is larger than the limit of {limit} bytes", {"limit": limit}
            )
        if self._room is not None:  # stopped before a byte past what the quota leaves
            self._room.admit(self._writer.size + len(chunk))
        await self._writer.write(chunk)
        if self._inspector.refusal is not None:  # decided by the first MiB: read no more
            raise self._inspector.refusal


def _check_digest(staged: StagedBlob, expected: Digest) -> None:
    actual = staged.blake3 if expected.algorithm == "blake3" else staged.sha256
    if actual != expected.hex:
        raise DigestMismatchError(
            "the uploaded bytes do not match the digest in the request",
            {"expected": str(expected), "actual": f"{expected.algorithm}:{actual}"},
        )


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
        await catalog.tags.commit_upload(
            *names, staged, meta, options=options, inspection=inspection
        )
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
