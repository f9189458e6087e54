"""The ``/reg`` uploads over HTTP: the two body forms of the registry core's upload use case.

:func:`receiving` is an async context manager around one upload request. Inside it a
handler validates its names, calls :meth:`Receiver.multipart` or :meth:`Receiver.raw`,
then the core's :meth:`cloudimg.core.Reception.receive` and
:meth:`cloudimg.core.Reception.commit`; the context manager does the rest. This module
turns the request into what the core's reception takes (an
:class:`cloudimg.core.ImageBody`: the image's bytes as they arrive, then the metadata),
and its refusals into what HTTP needs:

- pre-checks before any byte is read: the query parameters (:class:`UploadQuery`, the
  one parser of ``digest`` and ``format``), a Content-Length over the image size limit
  (413), over the free space (507) or over what the repository's quota leaves (403),
  which the core decides;
- reading: one of two body forms hands the image bytes to the core, which stages,
  hashes and inspects them (:mod:`cloudimg.core.ingest`). A multipart body (``POST``,
  :meth:`Receiver.multipart`) is parsed as it arrives with ``multipart``'s push parser
  (sans-IO, no spooling), its ``meta`` and ``format`` parts kept in memory up to a
  small limit; a raw body (``PUT``, :meth:`Receiver.raw`) is the image itself,
  handed over as it arrives, its metadata in the ``Cloudimg-Meta`` header;
- a refusal's drain: a refusal ahead of the body (a bad name, a pre-check) drains it
  with :func:`cloudimg.api.body.drain_refused`, one while it streams drains the rest,
  and one the image's first MiB decided answers at once and lingers
  (:func:`cloudimg.api.body.linger_after`);
- staging cleanup on exit: a staging file not committed (bad input, disconnect, full
  disk, a failed commit) is dropped by the core's reception.

Bodies are read only through :mod:`cloudimg.api.body`, so each obeys
``--read-body-timeout-secs``; the commit is the core's (:func:`cloudimg.core.commit_staged`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from litestar import Request, Response
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from cloudimg.api.body import body_of, declared_length, drain, drain_refused, linger_after
from cloudimg.api.conditional import etag_of, repr_digest_of
from cloudimg.core import BodyDetails, ImageBody, Reception, Uploads
from cloudimg.digest import Digest, parse_digest
from cloudimg.errors import CloudimgError, InvalidArgumentError, PayloadTooLargeError
from cloudimg.images import normalize_format
from cloudimg.meta import MAX_META_BYTES, parse_meta

__all__ = [
    "DIGEST_PARAMETER",
    "ENVELOPE_ALLOWANCE",
    "FORMAT_PARAMETER",
    "MAX_META_BYTES",
    "META_HEADER",
    "Receiver",
    "UploadQuery",
    "created",
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
class _Parts:
    """State of the multipart stream while it arrives."""

    declared: str | None = None
    """The format the query parameter declares (already given to the inspector)."""
    meta: bytearray | None = None
    format: bytearray | None = None
    current: str | None = None
    seen: set[str] = field(default_factory=set)

    def start(self, segment: MultipartSegment) -> bool:
        """A part begins; True when it is the image's."""
        name = segment.name or ""
        if not name:
            raise InvalidArgumentError("a part of the multipart body has no name")
        if name in self.seen and name in _SINGLE_PARTS:
            raise InvalidArgumentError(f"the '{name}' part appears twice")
        self.seen.add(name)
        self.current = name
        if name == "meta":
            self.meta = bytearray()
        elif name == "format":
            self.format = bytearray()
        return name == "img"

    def data(self, chunk: bytes | bytearray) -> bool:
        """A piece of the current part, kept if it is ``meta`` or ``format``; True when it
        is the image's (the caller hands it on)."""
        if self.current == "img":
            return True
        if self.current == "meta":
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
        return False


class _BodyForm(ImageBody, Protocol):
    """One way of reading an upload's body: the core's :class:`cloudimg.core.ImageBody`
    over the request's body."""

    @property
    def body(self) -> AsyncIterator[bytes]:
        """The request's body (:func:`cloudimg.api.body.body_of`), drained on a refusal."""
        ...

    @property
    def envelope(self) -> int:
        """How far a Content-Length may pass the image size limit (the body's framing)."""
        ...


@dataclass(frozen=True)
class _Multipart:
    """A ``multipart/form-data`` body: parts ``meta``, ``img`` and optionally ``format``."""

    body: AsyncIterator[bytes]
    content_type: str | None
    parts: _Parts
    envelope: int = ENVELOPE_ALLOWANCE

    async def image(self) -> AsyncIterator[bytes | bytearray]:
        parser = PushMultipartParser(
            boundary_of(self.content_type),
            max_header_size=_MAX_PART_HEADER_BYTES,
            max_segment_count=_MAX_PARTS,
        )
        async for chunk in self.body:
            if chunk:
                for piece in _image_pieces(parser, self.parts, chunk):
                    yield piece
        for piece in _image_pieces(parser, self.parts, b""):
            yield piece

    def details(self) -> BodyDetails:
        meta = parse_meta(self.parts.meta)
        if "img" not in self.parts.seen:
            raise InvalidArgumentError("the 'img' part is missing")
        return BodyDetails(meta, _format_part(self.parts))


@dataclass(frozen=True)
class _Raw:
    """A raw body: the image bytes themselves, the metadata given apart (a header)."""

    body: AsyncIterator[bytes]
    meta: dict[str, str]
    envelope: int = 0

    async def image(self) -> AsyncIterator[bytes | bytearray]:
        yield b""  # the image starts with the body
        async for chunk in self.body:
            yield chunk

    def details(self) -> BodyDetails:
        return BodyDetails(self.meta)


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
    """One upload request while :func:`receiving` holds it: check it, then hand its body to
    the core's reception (the handler calls :meth:`cloudimg.core.Reception.receive` and
    :meth:`cloudimg.core.Reception.commit` itself, so the core's calls into the body form
    come from the handler, not back through here)."""

    def __init__(
        self, request: Request[Any, Any, Any], uploads: Uploads, idle_timeout: float | None
    ) -> None:
        self._request = request
        self._uploads = uploads
        self._idle_timeout = idle_timeout
        self._form: _BodyForm | None = None
        self._reception: Reception | None = None

    async def multipart(self, repo: str) -> tuple[Reception, ImageBody]:
        """Check the request, then give its multipart ``meta`` + ``img`` body to receive
        into ``repo`` (validated; its quota is checked).

        Every ``digest`` query parameter (one per algorithm may be given) must match the
        bytes; the bytes must pass inspection, as the declared format if one is given.
        What receiving the body raises, besides the core's refusals:

        - InvalidArgumentError: a bad ``digest`` or ``format`` parameter, a malformed
          body, a missing part, bad metadata, a ``format`` part that names an unknown
          format or disagrees with the parameter;
        - PayloadTooLargeError: the Content-Length passed the image size limit, or the
          metadata 64 KiB;
        - InsufficientStorageError: the Content-Length is over the free space;
        - QuotaExceededError: the image cannot fit in what ``repo``'s quota leaves;
        - RequestTimeoutError: the body stalled (see :func:`cloudimg.api.body.body_of`).
        """
        query = UploadQuery.of(self._request)
        content_type = self._request.headers.get("content-type")
        parts = _Parts(query.declared_format)
        return await self._checked(_Multipart(self._body(), content_type, parts), query, repo)

    async def raw(self, repo: str) -> tuple[Reception, ImageBody]:
        """Check the request, then give its body, the image itself, to receive.

        The metadata is the ``Cloudimg-Meta`` header (absent: none), checked as the
        multipart ``meta`` part is, before any byte of the body is read; the rest is as
        :meth:`multipart` (a Content-Length over the image size limit is refused exactly),
        and a ``Content-Type`` other than ``application/octet-stream`` is refused.
        """
        query = UploadQuery.of(self._request)
        mime, _options = parse_options_header(self._request.headers.get("content-type", ""))
        if mime not in _RAW_CONTENT_TYPES:
            raise InvalidArgumentError(
                "the body of a PUT is the image itself: Content-Type application/octet-stream",
                {"content_type": mime[:64]},
            )
        return await self._checked(_Raw(self._body(), _meta_header(self._request)), query, repo)

    async def refused(self, exc: CloudimgError) -> None:
        """``exc`` is on its way: read the body it comes ahead of, drain the rest of one it
        stopped, or have the connection linger after a refusal of the image's first MiB."""
        if self._form is None:
            await drain_refused(self._request, self._idle_timeout)
        elif self._reception is not None and exc is self._reception.refusal:
            linger_after(self._request.scope)  # answer now; the connection lingers, then closes
        else:
            await drain(self._form.body)

    async def close(self) -> None:
        """Drop a staging file that was received but not committed."""
        if self._reception is not None:
            await self._reception.close()

    def _body(self) -> AsyncIterator[bytes]:
        return body_of(self._request.receive, self._idle_timeout)

    async def _checked(
        self, form: _BodyForm, query: UploadQuery, repo: str
    ) -> tuple[Reception, ImageBody]:
        uploads = self._uploads
        reception = self._reception = uploads.reception(query.digests, query.declared_format, repo)
        await reception.admit(declared_length(self._request), form.envelope)
        self._form = form  # from here a refusal drains the body, or lingers after it
        return reception, form


@asynccontextmanager
async def receiving(
    request: Request[Any, Any, Any], uploads: Uploads, idle_timeout: float | None
) -> AsyncIterator[Receiver]:
    """Hold one upload request: a refusal raised inside drains the body it comes ahead of
    (or the rest of it), and a staging file left uncommitted on the way out is dropped.

    ``idle_timeout``: how long the body may send nothing (``--read-body-timeout-secs``).
    """
    receiver = Receiver(request, uploads, idle_timeout)
    try:
        yield receiver
    except CloudimgError as exc:
        await receiver.refused(exc)
        raise
    finally:
        await receiver.close()


def created(
    api_base: str, repo: str, image: str, blake3_hex: str, sha256_hex: str
) -> Response[dict[str, Any]]:
    """The 201 of a write that made a tag name bytes: an upload, or a retag answered as one.

    What was stored, as RFC 9110 has a 201 say it: the digest-pinned URL of the bytes
    (under ``api_base``), and their ETag and Repr-Digest as a download of them answers.
    """
    headers = {
        "Location": f"{api_base}/{repo}/{image}/blake3:{blake3_hex}",
        "ETag": etag_of(blake3_hex),
        "Repr-Digest": repr_digest_of(sha256_hex),
    }
    return Response({"success": True, "data": None}, status_code=201, headers=headers)


def _format_name(text: str, where: str) -> str:
    try:
        return normalize_format(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: {exc}", {"format": text[:64]}) from None


def _format_part(parts: _Parts) -> str | None:
    """The format the ``format`` part names (None: no such part); it must agree with the
    parameter."""
    if parts.format is None:
        return None
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
    return name


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


def _image_pieces(
    parser: PushMultipartParser, parts: _Parts, chunk: bytes
) -> Iterator[bytes | bytearray]:
    """Parse ``chunk``: the pieces of the image it holds (an empty one where the image starts)."""
    try:
        for event in parser.parse(chunk):
            if isinstance(event, MultipartSegment):
                if parts.start(event):
                    yield b""
            elif event is not None and parts.data(event):
                yield event
    except MultipartError as exc:
        raise InvalidArgumentError(f"malformed multipart body: {exc}") from None
