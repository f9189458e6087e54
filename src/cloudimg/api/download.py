"""Range-aware, conditional download of a blob (RFC 9110 ranges and preconditions).

Every body, whole file or range, is read in ``pread`` calls on a thread pool of its own
(the next chunk is read while one goes out) and the stream stops when the server
reports that the client has gone. Granian holds about seven sent chunks per download
in its buffers when the client reads slower than the file is read, so the chunk size
decides what a slow reader costs: ~8 MiB at 1 MiB chunks, ~0.5 MiB at 64 KiB. Chunks
start at 64 KiB and double (up to the 1 MiB a fast client needs for full speed) each
time 4 MiB have gone out without a send waiting for room; a send that waits halves
them (:class:`_ChunkSizer`). The blob file is opened before the response starts,
so a delete that commits while a download runs cannot take the bytes away from it.

Granian offers ASGI ``http.response.pathsend``, which keeps the bytes out of Python,
but measured slower here: it reads 128 KiB pieces on its thread pool instead of using
sendfile (0.77x nginx against 1.15x for this path; docs/performance.md).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from cloudimg.api.errors import error_body
from cloudimg.catalog import BlobRef
from cloudimg.errors import NotFoundError, PreconditionFailedError

__all__ = [
    "BlobResponse",
    "ByteRange",
    "Unsatisfiable",
    "etag_of",
    "parse_range",
    "prepare_download",
    "repr_digest_of",
]

_MAX_CHUNK = 1024 * 1024
_MIN_CHUNK = 64 * 1024
# A send that takes longer than this waited for room in the server's buffers: the
# client reads slower than the file is read, so smaller chunks lose no speed.
# (Sends to a fast client on loopback take 0.1 ms, but one in a hundred takes 5-20 ms.)
_SEND_BACKED_UP_SECS = 0.02
# Bytes that go out without a send waiting before the chunk size doubles: about what
# the kernel takes from a connection whose client has stopped reading (~4 MiB on
# loopback), so such a download stops at 128 KiB chunks, and a fast one reaches 1 MiB
# after 16 MiB.
_GROW_AFTER = 4 * 1024 * 1024
# Blob reads have their own threads: hundreds of downloads queueing reads must not
# delay the probes, uploads and catalog work that use the default executor.
_READ_THREADS = 16
_readers: ThreadPoolExecutor | None = None
_NO_WAIT: int = getattr(os, "RWF_NOWAIT", 0)
# Chunks up to this size are read on the event loop when the page cache has them; the
# large chunks of a fast client are read on a thread, overlapping the send.
_INLINE_READ = 256 * 1024
# The range unit is case-insensitive (RFC 9110 section 14.1); positions are ASCII digits.
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
# A position with more digits than this is past the end of any blob; int() refuses
# strings over 4300 digits, and a client must not turn that into a 500.
_MAX_POSITION_DIGITS = 20
_PAST_ANY_END: int = 10**_MAX_POSITION_DIGITS


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``first``..``last`` of a representation."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class Unsatisfiable(Exception):
    """The Range header is well formed but selects no byte of the representation."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a ``Range`` header asks for, or None to send everything.

    Multiple ranges and malformed headers are ignored (RFC 9110 allows it), so the
    client gets the whole representation with 200.

    Raises:
        Unsatisfiable: when the range starts beyond the end, or asks for zero bytes.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = _position(last_text)
        if suffix == 0:
            raise Unsatisfiable
        if size == 0:
            # Satisfiable (RFC 9110 section 14.1.1), but no 206 can carry zero bytes.
            return None
        return ByteRange(max(0, size - suffix), size - 1)
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # invalid range-spec: ignore the header
    if first >= size:
        raise Unsatisfiable
    return ByteRange(first, min(last, size - 1))


def _position(digits: str) -> int:
    stripped = digits.lstrip("0")
    if len(stripped) > _MAX_POSITION_DIGITS:
        return _PAST_ANY_END
    return int(stripped or "0")


def _etag_list(header: str) -> list[str]:
    return [part.strip() for part in header.split(",") if part.strip()]


def _strong_match(header: str, etag: str) -> bool:
    return any(tag == "*" or tag == etag for tag in _etag_list(header))


def _weak_match(header: str, etag: str) -> bool:
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in _etag_list(header))


def _http_date_secs(text: str) -> int | None:
    """Seconds since the epoch of an HTTP-date, or None when ``text`` is no date."""
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000" or an unknown zone: HTTP dates are GMT
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp())
    except (TypeError, ValueError, OverflowError):
        return None


def _not_after(header: str | None, last_modified_secs: int) -> bool | None:
    """Whether the representation is unmodified since ``header``; None if it is no date."""
    if header is None:
        return None
    since = _http_date_secs(header)
    if since is None:
        return None
    return last_modified_secs <= since


class BlobResponse(ASGIResponse):
    """Sends a blob (or one range of it) from an open file descriptor."""

    def __init__(
        self,
        *,
        fd: int,
        status_code: int,
        headers: dict[str, str],
        byte_range: ByteRange | None,
        is_head_response: bool,
    ) -> None:
        super().__init__(
            status_code=status_code,
            headers=headers,
            media_type="application/octet-stream",
            is_head_response=is_head_response,
            content_length=0,
        )
        self._fd = fd
        self._range = byte_range

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self._fd)

    async def send_body(self, send: Send, receive: Receive) -> None:
        """Send the bytes, reading the next chunk while one goes out; stop if the client goes.

        A server may accept ``send`` after the client has gone (Granian does, and reports
        the disconnect to ``receive``), so without the watch an aborted download of a
        large range would still read all of it from the disk. The notice can take a few
        milliseconds to reach the event loop; what is read meanwhile is the only waste.
        """
        offset, remaining = (self._range.first, self._range.length) if self._range else (0, -1)
        if remaining < 0:
            remaining = os.fstat(self._fd).st_size
        disconnected = asyncio.Event()
        watch = asyncio.ensure_future(_watch_disconnect(receive, disconnected))
        loop = asyncio.get_running_loop()
        sizer = _ChunkSizer()
        next_read: asyncio.Future[bytes] | None = self._read(min(sizer.size, remaining), offset)
        try:
            while next_read is not None:
                # Shielded: a cancelled wait must not orphan a thread that uses the fd.
                chunk = await asyncio.shield(next_read)
                next_read = None
                offset += len(chunk)
                remaining -= len(chunk)
                more = remaining > 0 and bool(chunk)
                if disconnected.is_set():
                    return
                if more:  # read ahead while this chunk goes out
                    next_read = self._read(min(sizer.size, remaining), offset)
                started = loop.time()
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                sizer.sent(len(chunk), waited=loop.time() - started > _SEND_BACKED_UP_SECS)
        finally:
            watch.cancel()
            if next_read is not None:
                # The worker thread still uses the descriptor; __call__ closes it after us.
                await asyncio.wait([next_read])
                if not next_read.cancelled():
                    next_read.exception()  # retrieved: an error here is of no interest now

    def _read(self, size: int, offset: int) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        cached = _read_cached(self._fd, size, offset) if size <= _INLINE_READ else None
        if cached is not None:
            done: asyncio.Future[bytes] = loop.create_future()
            done.set_result(cached)
            return done
        return asyncio.ensure_future(
            loop.run_in_executor(_blob_readers(), os.pread, self._fd, size, offset)
        )


def _read_cached(fd: int, size: int, offset: int) -> bytes | None:
    """The bytes at ``offset`` if the page cache has them (no disk wait), else None.

    Hundreds of slow clients booting from one image read it from memory in small chunks;
    such a read on the event loop costs a copy, where a hop to a thread and back costs
    several times that and delays every other request on the loop.
    """
    buffer = bytearray(size)
    try:
        length = os.preadv(fd, [buffer], offset, _NO_WAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: a file system without RWF_NOWAIT
        return None
    return bytes(memoryview(buffer)[:length])


class _ChunkSizer:
    """Size of the next read: small while a client falls behind, large once it keeps up."""

    def __init__(self) -> None:
        self.size = _MIN_CHUNK
        self._unhindered = 0  # bytes sent since a send last waited

    def sent(self, length: int, waited: bool) -> None:
        if waited:  # halve: a slow client gets to 64 KiB in a few sends, a fast one recovers
            self.size, self._unhindered = max(self.size // 2, _MIN_CHUNK), 0
            return
        self._unhindered += length
        if self._unhindered >= _GROW_AFTER:
            self.size, self._unhindered = min(self.size * 2, _MAX_CHUNK), 0


def _blob_readers() -> ThreadPoolExecutor:
    """The pool that reads blobs, made on first use (in the worker process that serves)."""
    global _readers
    if _readers is None:
        _readers = ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="cloudimg-blob-read")
    return _readers


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    """Set ``disconnected`` once the server says the client has gone."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server whose receive fails here gives no notice: stream on
        return
    disconnected.set()


def _open_blob(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        # The reference was deleted between the catalog read and now.
        raise NotFoundError("image not found") from None


def etag_of(blake3_hex: str) -> str:
    """The strong ETag of a blob's bytes, the same under every tag and digest reference."""
    return f'"blake3:{blake3_hex}"'


def repr_digest_of(sha256_hex: str) -> str:
    """The ``Repr-Digest`` field (RFC 9530) of a blob: its sha-256 as a byte sequence."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


async def prepare_download(
    request: Request[Any, Any, Any], ref: BlobRef, path: Path, immutable: bool
) -> ASGIResponse:
    """Evaluate preconditions and Range for ``ref`` and build the response."""
    etag = etag_of(ref.digest)
    modified_secs = int(ref.last_modified.timestamp())
    headers = {
        "ETag": etag,
        "Last-Modified": format_datetime(ref.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Repr-Digest": repr_digest_of(ref.sha256),
        "Cache-Control": "public, max-age=31536000, immutable" if immutable else "no-cache",
    }
    status, byte_range = _evaluate(request, ref.size, etag, modified_secs)
    if status == 412:
        raise PreconditionFailedError("the image does not match the request's preconditions")
    if status == 416:
        return _unsatisfiable(headers, ref.size, is_head=request.method == "HEAD")
    if status == 304:
        return ASGIResponse(status_code=304, headers=headers)
    if byte_range is not None:
        headers["Content-Range"] = f"bytes {byte_range.first}-{byte_range.last}/{ref.size}"
    headers["Content-Length"] = str(byte_range.length if byte_range else ref.size)
    fd = await asyncio.to_thread(_open_blob, path)
    return BlobResponse(
        fd=fd,
        status_code=status,
        headers=headers,
        byte_range=byte_range,
        is_head_response=request.method == "HEAD",
    )


def _unsatisfiable(headers: dict[str, str], size: int, is_head: bool) -> ASGIResponse:
    """416 with ``Content-Range: bytes */size`` and the JSON error shape."""
    headers["Content-Range"] = f"bytes */{size}"
    headers["Content-Type"] = "application/json"
    # An error about one request's Range is no representation to keep for a year.
    headers["Cache-Control"] = "no-cache"
    body = error_body("OUT_OF_RANGE", "range not satisfiable", {"size": size})
    return ASGIResponse(
        body=b"" if is_head else msgspec.json.encode(body),
        status_code=416,
        headers=headers,
        media_type="application/json",
        is_head_response=is_head,
    )


def _evaluate(
    request: Request[Any, Any, Any], size: int, etag: str, modified_secs: int
) -> tuple[int, ByteRange | None]:
    """RFC 9110 section 13.2.2: preconditions first, then Range (and If-Range)."""
    h = request.headers
    if_match = h.get("if-match")
    if if_match is not None and not _strong_match(if_match, etag):
        return 412, None
    if if_match is None and _not_after(h.get("if-unmodified-since"), modified_secs) is False:
        return 412, None
    if_none_match = h.get("if-none-match")
    if if_none_match is not None:
        if _weak_match(if_none_match, etag):
            return 304, None
    elif _not_after(h.get("if-modified-since"), modified_secs):
        return 304, None
    if request.method != "GET":
        # RFC 9110 section 14.2: GET is the only method with range handling; a HEAD
        # with Range gets the headers of the whole representation.
        return 200, None
    if_range = h.get("if-range")
    if if_range is not None and not _if_range_holds(if_range, etag, modified_secs):
        return 200, None
    try:
        byte_range = parse_range(h.get("range"), size)
    except Unsatisfiable:
        return 416, None
    return (206, byte_range) if byte_range else (200, None)


def _if_range_holds(if_range: str, etag: str, modified_secs: int) -> bool:
    if if_range.startswith('"') or if_range.startswith("W/"):
        return if_range == etag  # strong comparison; a weak tag never matches
    return _http_date_secs(if_range) == modified_secs
