"""Streaming multipart upload: the ``img`` part goes straight into a staging file.

The body is parsed as it arrives with ``multipart``'s push parser (sans-IO, no
spooling): image bytes are handed to the blob store's staging writer, which hashes
and writes them; the ``meta`` part is kept in memory up to a small limit. Any
failure (bad input, disconnect, full disk) drops the staging file.

A refused request's body is read to its end (up to a limit) before the error goes
out: Granian closes a connection whose body was not read without saying so in a
``Connection: close`` header, so a client's next request on it would fail.

Every read of a request body, an upload's or a refused request's (the write-token
guard's too), goes through :func:`body_of`, so each obeys ``--read-body-timeout-secs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from litestar.connection import ASGIConnection
from litestar.types import Receive
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from cloudimg.blobstore import BlobStore, StagedBlob, StagingWriter
from cloudimg.digest import Digest
from cloudimg.errors import (
    ClientDisconnectedError,
    CloudimgError,
    DigestMismatchError,
    InsufficientStorageError,
    InvalidArgumentError,
    PayloadTooLargeError,
    RequestTimeoutError,
)

__all__ = [
    "ENVELOPE_ALLOWANCE",
    "MAX_DRAIN_BYTES",
    "MAX_META_BYTES",
    "Upload",
    "body_of",
    "declared_size",
    "drain",
    "drain_refused",
    "parse_meta",
    "receive_upload",
    "refuse_declared_length",
]

MAX_META_BYTES = 64 * 1024
MAX_DRAIN_BYTES = 64 * 1024 * 1024
ENVELOPE_ALLOWANCE = 1024 * 1024
"""Room for the ``meta`` part and the multipart framing around the image: a body whose
Content-Length passes the image size limit by more than this is refused unread."""
_MAX_PARTS = 16
_MAX_PART_HEADER_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True)
class Upload:
    """A received upload: its staged bytes and its metadata."""

    staged: StagedBlob
    meta: dict[str, str]


@dataclass
class _Parts:
    """State of the multipart stream while it arrives."""

    blobs: BlobStore
    max_image_size: int | None = None
    writer: StagingWriter | None = None
    meta: bytearray | None = None
    current: str | None = None
    seen: set[str] = field(default_factory=set)

    async def start(self, segment: MultipartSegment) -> None:
        name = segment.name or ""
        if not name:
            raise InvalidArgumentError("a part of the multipart body has no name")
        if name in self.seen and name in ("img", "meta"):
            raise InvalidArgumentError(f"the '{name}' part appears twice")
        self.seen.add(name)
        self.current = name
        if name == "img":
            self.writer = await self.blobs.open_staging()
        elif name == "meta":
            self.meta = bytearray()

    async def data(self, chunk: bytes | bytearray) -> None:
        if self.current == "img":
            assert self.writer is not None
            limit = self.max_image_size
            if limit is not None and self.writer.size + len(chunk) > limit:
                raise PayloadTooLargeError(
                    f"the image is larger than the limit of {limit} bytes", {"limit": limit}
                )
            await self.writer.write(chunk)
        elif self.current == "meta":
            assert self.meta is not None
            self.meta += chunk
            if len(self.meta) > MAX_META_BYTES:
                raise PayloadTooLargeError(f"the 'meta' part is larger than {MAX_META_BYTES} bytes")
        # Parts with other names are read and dropped, as the old server did.


def boundary_of(content_type: str | None) -> str:
    """The multipart boundary of a ``multipart/form-data`` content type."""
    mime, options = parse_options_header(content_type or "")
    boundary = str(options.get("boundary", ""))
    if mime != "multipart/form-data" or not boundary:
        raise InvalidArgumentError(
            "the body must be multipart/form-data with parts 'meta' and 'img'"
        )
    return boundary


async def body_of(receive: Receive, idle_timeout: float | None) -> AsyncIterator[bytes]:
    """A request body as the server hands it over; a client that leaves is no server error.

    A client that sends nothing for ``idle_timeout`` seconds gets ``RequestTimeoutError``,
    so a stalled body holds no staging file, task or connection forever.
    """
    while True:
        try:
            # asyncio.timeout, not wait_for: no task per chunk on the upload's hot path.
            async with asyncio.timeout(idle_timeout):
                message = await receive()
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body sent nothing for {idle_timeout:g} seconds"
            ) from None
        if message["type"] != "http.request":
            raise ClientDisconnectedError("the client disconnected before the body was complete")
        if message["body"]:
            yield message["body"]
        if not message.get("more_body", False):
            return


def declared_size(connection: ASGIConnection[Any, Any, Any, Any]) -> int:
    """The request's Content-Length, 0 when it has none (or none that makes sense)."""
    text = connection.headers.get("content-length", "")
    return int(text) if text.isdigit() and len(text) < 20 else 0


async def drain(body: AsyncIterator[bytes], limit: int = MAX_DRAIN_BYTES) -> None:
    """Read and drop the rest of a refused request's body, up to ``limit`` bytes.

    Past the limit, when the body stalls past its timeout or when the client goes away,
    the connection is left to close.
    """
    received = 0
    with contextlib.suppress(Exception):
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                return


async def drain_refused(
    connection: ASGIConnection[Any, Any, Any, Any], idle_timeout: float | None
) -> None:
    """Before a refusal that comes ahead of the body: read and drop the body if it is worth it.

    Not when the client waits for ``100 Continue`` (it has not sent the body; answering
    now spares it the upload) and not when it announced more than ``MAX_DRAIN_BYTES``
    (the server closes the connection instead of reading it).
    """
    if "100-continue" in connection.headers.get("expect", "").lower():
        return
    if declared_size(connection) <= MAX_DRAIN_BYTES:
        await drain(body_of(connection.receive, idle_timeout))


async def refuse_declared_length(
    content_length: str | None, max_image_size: int | None, blobs: BlobStore
) -> None:
    """Refuse, before any byte of the body is read, a body announced larger than allowed.

    Raises:
        PayloadTooLargeError: the Content-Length passes the image size limit (plus
            ``ENVELOPE_ALLOWANCE``), so the image must too.
        InsufficientStorageError: the Content-Length is more than the data volume's
            free space.
    """
    if content_length is None or not content_length.isdigit() or not content_length.isascii():
        return  # chunked, or nonsense the server itself refuses
    declared = int(content_length)
    if max_image_size is not None and declared > max_image_size + ENVELOPE_ALLOWANCE:
        raise PayloadTooLargeError(
            f"the request body is larger than the image size limit of {max_image_size} bytes",
            {"limit": max_image_size, "content_length": declared},
        )
    free = await blobs.free_space()
    if free is not None and declared > free:
        raise InsufficientStorageError(
            "the data volume has no room for an upload of this size; nothing was stored",
            {"content_length": declared, "free_bytes": free},
        )


async def receive_upload(
    body: AsyncIterator[bytes],
    content_type: str | None,
    blobs: BlobStore,
    expected: Sequence[Digest] = (),
    *,
    max_image_size: int | None = None,
) -> Upload:
    """Read a ``meta`` + ``img`` multipart body into a staging file and check it.

    Every digest in ``expected`` must match the bytes. The caller owns the returned
    staging file (commit it or abort it). On a refusal the staging file is gone and
    the rest of ``body`` has been drained.

    Raises:
        InvalidArgumentError: a malformed body, a missing part, bad metadata, a digest
            mismatch; nothing is left behind.
        PayloadTooLargeError: the image passed ``max_image_size`` or the metadata 64 KiB.
        InsufficientStorageError: the data volume filled up while the image streamed.
        RequestTimeoutError: the body stalled (see ``body_of``).
    """
    try:
        return await _receive(body, content_type, blobs, expected, max_image_size)
    except CloudimgError:
        await drain(body)
        raise


async def _receive(
    body: AsyncIterator[bytes],
    content_type: str | None,
    blobs: BlobStore,
    expected: Sequence[Digest],
    max_image_size: int | None,
) -> Upload:
    parser = PushMultipartParser(
        boundary_of(content_type),
        max_header_size=_MAX_PART_HEADER_BYTES,
        max_segment_count=_MAX_PARTS,
    )
    parts = _Parts(blobs, max_image_size)
    try:
        async for chunk in body:
            if chunk:
                await _feed(parser, parts, chunk)
        await _feed(parser, parts, b"")
        meta = parse_meta(parts.meta)
        if parts.writer is None:
            raise InvalidArgumentError("the 'img' part is missing")
        staged = await parts.writer.finish()
        for digest in expected:
            _check_digest(staged, digest)
    except BaseException:
        if parts.writer is not None:
            await parts.writer.abort()
        raise
    return Upload(staged, meta)


async def _feed(parser: PushMultipartParser, parts: _Parts, chunk: bytes) -> None:
    try:
        for event in parser.parse(chunk):
            if isinstance(event, MultipartSegment):
                await parts.start(event)
            elif event is not None:
                await parts.data(event)
    except MultipartError as exc:
        raise InvalidArgumentError(f"malformed multipart body: {exc}") from None


class _NotText:
    """What a JSON number or constant parses to: never a valid metadata value.

    Numbers are not converted, so a 5,000-digit one costs nothing and cannot hit
    Python's int-digit limit; the value check below refuses it like any non-string.
    """


def _not_text(_literal: str) -> _NotText:
    return _NotText()


def parse_meta(raw: bytes | bytearray | None) -> dict[str, str]:
    """The ``meta`` part as a flat JSON object of strings.

    Raises:
        InvalidArgumentError: for every other input (``None``: the part is missing);
            its message and context are valid Unicode, so any answer can carry them.
    """
    if raw is None:
        raise InvalidArgumentError("the 'meta' part is missing")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The codec's own message quotes the byte; the offset is enough.
        raise InvalidArgumentError(
            f"the 'meta' part is not UTF-8 (invalid byte at offset {exc.start})"
        ) from None
    if text.startswith("\ufeff"):
        raise InvalidArgumentError(
            "the 'meta' part starts with a byte order mark; send UTF-8 JSON without one"
        )
    try:
        meta: Any = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_int=_not_text,
            parse_float=_not_text,
            parse_constant=_not_text,
        )
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"the 'meta' part is not valid JSON: {exc}") from None
    except RecursionError:
        # Deep nesting ([[[[... or {"a":{"a":...) exhausts the parser's stack; a flat
        # object of strings never comes near it.
        raise InvalidArgumentError(
            "the 'meta' part nests too deeply; it must be a flat JSON object of strings"
        ) from None
    if not isinstance(meta, dict):
        raise InvalidArgumentError("the 'meta' part must be a JSON object")
    # JSON escapes can spell lone surrogates, which no UTF-8 response can carry back
    # (not even in an error's context): check the keys before naming any of them.
    if not all(_is_unicode(key) for key in meta):
        raise InvalidArgumentError("metadata keys and values must be valid Unicode text")
    bad = [key for key, value in meta.items() if not isinstance(value, str)]
    if bad:
        raise InvalidArgumentError("metadata values must be strings", {"keys": bad[:20]})
    if not all(_is_unicode(value) for value in meta.values()):
        raise InvalidArgumentError("metadata keys and values must be valid Unicode text")
    return meta


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: parsers disagree on which duplicate wins, so refuse them."""
    result = dict(pairs)
    if len(result) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        duplicates = sorted(key for key, count in counts.items() if count > 1)
        raise InvalidArgumentError(
            "the 'meta' part repeats a key",
            {"keys": [key for key in duplicates[:20] if _is_unicode(key)]},
        )
    return result


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_digest(staged: StagedBlob, expected: Digest) -> None:
    actual = staged.blake3 if expected.algorithm == "blake3" else staged.sha256
    if actual != expected.hex:
        raise DigestMismatchError(
            "the uploaded bytes do not match the digest in the request",
            {"expected": str(expected), "actual": f"{expected.algorithm}:{actual}"},
        )
