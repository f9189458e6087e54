"""The upload use case: one way in for every write of image bytes.

:func:`receiving` is an async context manager around one upload request. Inside it a
handler validates its names, calls :meth:`Receiver.receive` and then
:meth:`Receiver.commit`; the context manager does the rest:

- pre-checks before any byte is read: the query parameters (:class:`UploadQuery`, the
  one parser of ``digest`` and ``format``), a Content-Length over the image size limit
  (413) or over the free space (507);
- reading: one of two body forms feeds the blob store's staging writer, which hashes
  and writes the image bytes and feeds them to the image inspector
  (:mod:`cloudimg.images`) off the event loop. A multipart body (``POST``,
  :meth:`Receiver.receive`) is parsed as it arrives with ``multipart``'s push parser
  (sans-IO, no spooling), its ``meta`` and ``format`` parts kept in memory up to a
  small limit; a raw body (``PUT``, :meth:`Receiver.receive_raw`) is the image itself,
  handed to the writer as it arrives, its metadata in the ``Cloudimg-Meta`` header;
- inspection: once the body is in, the inspector's verdict refuses an unsafe image or
  one that is not the declared format (``?format=`` or the ``format`` part), with a
  422 naming the rule; nothing is stored;
- a refusal's drain: a refusal ahead of the body (a bad name, a pre-check) drains it
  with :func:`cloudimg.api.body.drain_refused`, one while it streams drains the rest;
- staging cleanup on exit: a staging file not committed (bad input, disconnect, full
  disk, a failed commit) is dropped.

Bodies are read only through :mod:`cloudimg.api.body`, so each obeys
``--read-body-timeout-secs``; the commit goes through :func:`cloudimg.ingest.commit_staged`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from litestar import Request
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from cloudimg.api.body import body_of, declared_length, drain, drain_refused, linger_after
from cloudimg.blobstore import BlobStore, StagedBlob, StagingWriter
from cloudimg.catalog import Catalog, WriteOptions
from cloudimg.config import Settings
from cloudimg.digest import Digest, parse_digest
from cloudimg.errors import (
    CloudimgError,
    DigestMismatchError,
    InsufficientStorageError,
    InvalidArgumentError,
    PayloadTooLargeError,
)
from cloudimg.images import ImageInspector, Inspection, normalize_format
from cloudimg.ingest import TagNames, commit_staged
from cloudimg.meta import MAX_META_BYTES, parse_meta

__all__ = [
    "DIGEST_PARAMETER",
    "ENVELOPE_ALLOWANCE",
    "FORMAT_PARAMETER",
    "MAX_META_BYTES",
    "META_HEADER",
    "Receiver",
    "Upload",
    "UploadQuery",
    "parse_meta",
    "receiving",
]

ENVELOPE_ALLOWANCE = 1024 * 1024
"""Room for the ``meta`` part and the multipart framing around the image: a body whose
Content-Length passes the image size limit by more than this is refused unread."""
_MAX_PARTS = 16
_MAX_FORMAT_BYTES = 64
_SINGLE_PARTS = ("img", "meta", "format")
_MAX_PART_HEADER_BYTES = 8 * 1024
META_HEADER = "cloudimg-meta"
"""The header a raw upload carries its metadata in (the multipart upload's ``meta`` part)."""
_RAW_CONTENT_TYPES = ("application/octet-stream", "")


@dataclass(frozen=True, slots=True)
class Upload:
    """A received upload: its staged bytes, its metadata and what the bytes are."""

    staged: StagedBlob
    meta: dict[str, str]
    inspection: Inspection


DIGEST_PARAMETER = "digest"
FORMAT_PARAMETER = "format"
"""The names of the upload's query parameters (:class:`UploadQuery`)."""


@dataclass(frozen=True, slots=True)
class UploadQuery:
    """The query parameters of both upload routes, parsed here and nowhere else.

    They are no handler parameters: Litestar would refuse a bad one before the handler
    runs, with its own error body and ahead of :func:`receiving`, which drains a refused
    body (else the connection dies with it). :data:`cloudimg.api.openapi.UPLOAD_QUERY`
    describes them in the OpenAPI document.
    """

    digests: tuple[Digest, ...] = ()
    """Every ``digest`` given (it may repeat, e.g. one per algorithm): each must match the bytes."""
    declared_format: str | None = None
    """The ``format`` given, normalized (``vhd`` is ``vpc``): inspection must find it."""

    @classmethod
    def of(cls, request: Request[Any, Any, Any]) -> UploadQuery:
        """The parameters of ``request``.

        Raises:
            InvalidArgumentError: a ``digest`` that is no digest, a ``format`` that names
                no image format or is given more than once.
        """
        params = request.query_params
        formats = params.getall(FORMAT_PARAMETER, [])
        if len(formats) > 1:
            raise InvalidArgumentError("query parameter 'format' is given more than once")
        declared = _format_name(formats[0], "query parameter 'format'") if formats else None
        try:
            digests = tuple(parse_digest(text) for text in params.getall(DIGEST_PARAMETER, []))
        except ValueError as exc:
            raise InvalidArgumentError(f"query parameter 'digest': {exc}") from None
        return cls(digests, declared)


@dataclass
class _Image:
    """Where an upload's image bytes go: the staging writer, under the image size limit."""

    blobs: BlobStore
    inspector: ImageInspector
    max_image_size: int | None = None
    writer: StagingWriter | None = None

    async def open(self) -> None:
        self.writer = await self.blobs.open_staging(self.inspector.feed)

    async def write(self, chunk: bytes | bytearray) -> None:
        assert self.writer is not None
        limit = self.max_image_size
        if limit is not None and self.writer.size + len(chunk) > limit:
            raise PayloadTooLargeError(
                f"the image is larger than the limit of {limit} bytes", {"limit": limit}
            )
        await self.writer.write(chunk)
        if self.inspector.refusal is not None:  # decided by the first MiB: read no more
            raise self.inspector.refusal


@dataclass
class _Parts:
    """State of the multipart stream while it arrives."""

    image: _Image
    declared: str | None = None
    """The format the query parameter declares (already given to the inspector)."""
    meta: bytearray | None = None
    format: bytearray | None = None
    current: str | None = None
    seen: set[str] = field(default_factory=set)

    async def start(self, segment: MultipartSegment) -> None:
        name = segment.name or ""
        if not name:
            raise InvalidArgumentError("a part of the multipart body has no name")
        if name in self.seen and name in _SINGLE_PARTS:
            raise InvalidArgumentError(f"the '{name}' part appears twice")
        self.seen.add(name)
        self.current = name
        if name == "img":
            await self.image.open()
        elif name == "meta":
            self.meta = bytearray()
        elif name == "format":
            self.format = bytearray()

    async def data(self, chunk: bytes | bytearray) -> None:
        if self.current == "img":
            await self.image.write(chunk)
        elif self.current == "meta":
            assert self.meta is not None
            self.meta += chunk
            if len(self.meta) > MAX_META_BYTES:
                raise PayloadTooLargeError(f"the 'meta' part is larger than {MAX_META_BYTES} bytes")
        elif self.current == "format":
            assert self.format is not None
            self.format += chunk
            if len(self.format) > _MAX_FORMAT_BYTES:
                raise InvalidArgumentError("the 'format' part is not an image format name")
        # Parts with other names are read and dropped, as the old server did.


class _BodyForm(Protocol):
    """One way of feeding an upload's body to the staging writer."""

    @property
    def envelope(self) -> int:
        """How far a Content-Length may pass the image size limit (the body's framing)."""
        ...

    async def read(self, body: AsyncIterator[bytes], image: _Image) -> dict[str, str]:
        """Feed ``body``'s image bytes to ``image`` (opened here); the upload's metadata."""
        ...


@dataclass(frozen=True)
class _Multipart:
    """A ``multipart/form-data`` body: parts ``meta``, ``img`` and optionally ``format``."""

    content_type: str | None
    declared: str | None
    envelope: int = ENVELOPE_ALLOWANCE

    async def read(self, body: AsyncIterator[bytes], image: _Image) -> dict[str, str]:
        parts = _Parts(image, self.declared)
        parser = PushMultipartParser(
            boundary_of(self.content_type),
            max_header_size=_MAX_PART_HEADER_BYTES,
            max_segment_count=_MAX_PARTS,
        )
        async for chunk in body:
            if chunk:
                await _feed(parser, parts, chunk)
        await _feed(parser, parts, b"")
        meta = parse_meta(parts.meta)
        if image.writer is None:
            raise InvalidArgumentError("the 'img' part is missing")
        _declare_part(parts)
        return meta


@dataclass(frozen=True)
class _Raw:
    """A raw body: the image bytes themselves, the metadata given apart (a header)."""

    meta: dict[str, str]
    envelope: int = 0

    async def read(self, body: AsyncIterator[bytes], image: _Image) -> dict[str, str]:
        await image.open()
        async for chunk in body:
            await image.write(chunk)
        return self.meta


def boundary_of(content_type: str | None) -> str:
    """The multipart boundary of a ``multipart/form-data`` content type."""
    mime, options = parse_options_header(content_type or "")
    boundary = str(options.get("boundary", ""))
    if mime != "multipart/form-data" or not boundary:
        raise InvalidArgumentError(
            "the body must be multipart/form-data with parts 'meta' and 'img'"
        )
    return boundary


class Receiver:
    """One upload request while :func:`receiving` holds it: receive it, then commit it."""

    def __init__(self, request: Request[Any, Any, Any], blobs: BlobStore, settings: Settings):
        self._request = request
        self._blobs = blobs
        self._max_image_size = settings.max_image_size
        self._policy = settings.inspection_policy
        self._idle_timeout = settings.read_body_timeout_secs
        self._body: AsyncIterator[bytes] | None = None
        self._upload: Upload | None = None
        self._committed = False

    async def receive(self) -> Upload:
        """Check the request, then read its multipart ``meta`` + ``img`` body into a staging file.

        Every ``digest`` query parameter (one per algorithm may be given) must match the
        bytes; the bytes must pass inspection, as the declared format if one is given.

        Raises:
            InvalidArgumentError: a bad ``digest`` or ``format`` parameter, a malformed
                body, a missing part, bad metadata, a digest mismatch, a ``format`` part
                that names an unknown format or disagrees with the parameter.
            ImageRefusedError: the image breaks an inspection rule (``context["rule"]``).
            PayloadTooLargeError: the Content-Length or the image passed the image size
                limit, or the metadata 64 KiB.
            InsufficientStorageError: the Content-Length is over the free space, or the
                data volume filled up while the image streamed.
            RequestTimeoutError: the body stalled (see :func:`cloudimg.api.body.body_of`).
        """
        query = UploadQuery.of(self._request)
        content_type = self._request.headers.get("content-type")
        return await self._receive(_Multipart(content_type, query.declared_format), query)

    async def receive_raw(self) -> Upload:
        """Check the request, then read its body, the image itself, into a staging file.

        The metadata is the ``Cloudimg-Meta`` header (absent: none), checked as the
        multipart ``meta`` part is, before any byte of the body is read; the rest is as
        :meth:`receive` (a Content-Length over the image size limit is refused exactly).

        Raises:
            InvalidArgumentError: as :meth:`receive`, and a ``Content-Type`` other than
                ``application/octet-stream``.
            ImageRefusedError, PayloadTooLargeError, InsufficientStorageError,
            RequestTimeoutError: as :meth:`receive`.
        """
        query = UploadQuery.of(self._request)
        mime, _options = parse_options_header(self._request.headers.get("content-type", ""))
        if mime not in _RAW_CONTENT_TYPES:
            raise InvalidArgumentError(
                "the body of a PUT is the image itself: Content-Type application/octet-stream",
                {"content_type": mime[:64]},
            )
        return await self._receive(_Raw(_meta_header(self._request)), query)

    async def _receive(self, form: _BodyForm, query: UploadQuery) -> Upload:
        inspector = ImageInspector(self._policy, query.declared_format)
        await self._refuse_declared_length(form.envelope)
        self._body = body_of(self._request.receive, self._idle_timeout)
        image = _Image(self._blobs, inspector, self._max_image_size)
        try:
            self._upload = await _stage(form, self._body, image, query.digests)
        except CloudimgError as exc:
            if exc is inspector.refusal:  # answer now; the connection lingers, then closes
                linger_after(self._request.scope)
            else:
                await drain(self._body)
            raise
        return self._upload

    async def commit(
        self, catalog: Catalog, names: TagNames, options: WriteOptions = WriteOptions()
    ) -> Upload:
        """Make ``names`` name the received bytes and metadata; the staging file goes.

        ``options``: the writer's name and the request's precondition (checked under
        the catalog's lock).
        """
        assert self._upload is not None, "receive() comes first"
        self._committed = True  # commit_staged drops the staging file, whatever happens
        upload = self._upload
        await commit_staged(
            catalog,
            self._blobs,
            names,
            upload.staged,
            upload.meta,
            options=options,
            inspection=upload.inspection,
            qemu_img=self._policy.qemu_img,
        )
        return self._upload

    async def refused(self) -> None:
        """A refusal is on its way: read the body it comes ahead of, if any."""
        if self._body is None:
            await drain_refused(self._request, self._idle_timeout)

    async def close(self) -> None:
        """Drop a staging file that was received but not committed."""
        if self._upload is not None and not self._committed:
            await self._blobs.discard(self._upload.staged)

    async def _refuse_declared_length(self, envelope: int) -> None:
        """Refuse, before any byte of the body is read, a body announced larger than allowed
        (``envelope``: the room the body's framing may take beside the image)."""
        declared = declared_length(self._request)
        if declared is None:
            return  # chunked, or nonsense the server itself refuses
        limit = self._max_image_size
        if limit is not None and declared > limit + envelope:
            raise PayloadTooLargeError(
                f"the request body is larger than the image size limit of {limit} bytes",
                {"limit": limit, "content_length": declared},
            )
        free = await self._blobs.free_space()
        if free is not None and declared > free:
            raise InsufficientStorageError(
                "the data volume has no room for an upload of this size; nothing was stored",
                {"content_length": declared, "free_bytes": free},
            )


@asynccontextmanager
async def receiving(
    request: Request[Any, Any, Any], blobs: BlobStore, settings: Settings
) -> AsyncIterator[Receiver]:
    """Hold one upload request: a refusal raised inside drains the body it comes ahead of,
    and a staging file left uncommitted on the way out is dropped."""
    receiver = Receiver(request, blobs, settings)
    try:
        yield receiver
    except CloudimgError:
        await receiver.refused()
        raise
    finally:
        await receiver.close()


def _format_name(text: str, where: str) -> str:
    try:
        return normalize_format(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: {exc}", {"format": text[:64]}) from None


def _declare_part(parts: _Parts) -> None:
    """Hand the inspector the ``format`` part, which must agree with the parameter."""
    if parts.format is None:
        return
    try:
        text = parts.format.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgumentError("the 'format' part is not an image format name") from None
    name = _format_name(text, "the 'format' part")
    if parts.declared is not None and name != parts.declared:
        raise InvalidArgumentError(
            "the 'format' part and the 'format' query parameter disagree",
            {"part": name, "parameter": parts.declared},
        )
    parts.image.inspector.declare(name)


async def _stage(
    form: _BodyForm, body: AsyncIterator[bytes], image: _Image, expected: Sequence[Digest]
) -> Upload:
    """Read ``body`` in ``form`` into a staging file; check its digests, then inspect it."""
    try:
        meta = await form.read(body, image)
        assert image.writer is not None, "every body form opens the image"
        staged = await image.writer.finish()
        for digest in expected:
            _check_digest(staged, digest)
        # The last bytes were fed on the writer's thread; finishing reads the last MiB.
        inspection = await asyncio.to_thread(image.inspector.finish, staged.size)
    except BaseException:
        if image.writer is not None:
            await image.writer.abort()
        raise
    return Upload(staged, meta, inspection)


def _meta_header(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The ``Cloudimg-Meta`` header's metadata (UTF-8 JSON, as the ``meta`` part); {} if absent."""
    values = [
        value for name, value in request.scope["headers"] if name.lower() == META_HEADER.encode()
    ]
    if not values:
        return {}
    if len(values) > 1:
        raise InvalidArgumentError("the 'Cloudimg-Meta' header is given more than once")
    if len(values[0]) > MAX_META_BYTES:
        raise PayloadTooLargeError(
            f"the 'Cloudimg-Meta' header is larger than {MAX_META_BYTES} bytes"
        )
    return parse_meta(values[0], "the 'Cloudimg-Meta' header")


async def _feed(parser: PushMultipartParser, parts: _Parts, chunk: bytes) -> None:
    try:
        for event in parser.parse(chunk):
            if isinstance(event, MultipartSegment):
                await parts.start(event)
            elif event is not None:
                await parts.data(event)
    except MultipartError as exc:
        raise InvalidArgumentError(f"malformed multipart body: {exc}") from None


def _check_digest(staged: StagedBlob, expected: Digest) -> None:
    actual = staged.blake3 if expected.algorithm == "blake3" else staged.sha256
    if actual != expected.hex:
        raise DigestMismatchError(
            "the uploaded bytes do not match the digest in the request",
            {"expected": str(expected), "actual": f"{expected.algorithm}:{actual}"},
        )
