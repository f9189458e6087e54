"""The response of a blob download: RFC 9110's verdict (``cloudimg.api.rfc9110``) sent.

Every body, whole blob or range, is read from a :class:`~cloudimg.blobstore.BlobReader`
in positional reads on a thread pool of its own (the next chunk is read while one goes
out) and the stream stops when the server reports that the client has gone. Granian
holds about seven sent chunks per download in its buffers when the client reads slower
than the blob is read, so the chunk size decides what a slow reader costs: ~8 MiB at
1 MiB chunks, ~0.5 MiB at 64 KiB. Chunks start at 64 KiB and double (up to the 1 MiB a
fast client needs for full speed) each time 4 MiB have gone out without a send waiting
for room; a send that waits halves them (:class:`_ChunkSizer`). The blob is opened
before the response starts, so a delete that commits while a download runs cannot take
the bytes away from it.

Granian offers ASGI ``http.response.pathsend``, which keeps the bytes out of Python,
but measured slower here: it reads 128 KiB pieces on its thread pool instead of using
sendfile (0.77x nginx against 1.15x for this path; docs/performance.md). A reader that
exposes ``fileno()`` keeps such a zero-copy send possible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import Any

import msgspec
from litestar import Request
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from cloudimg.api.conditional import etag_of, repr_digest_of
from cloudimg.api.errors import error_body
from cloudimg.api.rfc9110 import ByteRange, evaluate
from cloudimg.blobstore import BlobReader, BlobStore
from cloudimg.catalog import BlobRef
from cloudimg.errors import NotFoundError, PreconditionFailedError

__all__ = [
    "BlobResponse",
    "Redirect",
    "Redirects",
    "Representation",
    "prepare_download",
    "prepare_representation",
    "representation_of",
]

Redirect = Callable[[], Awaitable[str | None]]
"""Gives the URL to send a GET of the bytes to (``BlobStore.download_url``), or None to
send them from here."""

# What a 307 to the object store keeps of the representation's fields: the client learns
# from the registry which bytes to expect and how to verify them (the store's own ETag is
# its MD5 or multipart checksum, never ours), and a client that follows the redirect
# keeps none of them, so they are for those that look (cloudimg pull, curl -v).
_REDIRECT_KEEPS = ("ETag", "Last-Modified", "Repr-Digest")

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
# Chunks up to this size are read on the event loop when the page cache has them
# (``BlobReader.read_nowait``); the large chunks of a fast client are read on a
# thread, overlapping the send. Hundreds of slow clients booting from one image read
# it from memory in small chunks: such a read on the event loop costs a copy, where a
# hop to a thread and back costs several times that and delays every other request.
_INLINE_READ = 256 * 1024


class BlobResponse(ASGIResponse):
    """Sends a blob (or one range of it) from an open reader, closing it at the end."""

    def __init__(
        self,
        *,
        reader: BlobReader,
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
        self._reader = reader
        self._range = byte_range

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._reader.close()

    async def send_body(self, send: Send, receive: Receive) -> None:
        """Send the bytes, reading the next chunk while one goes out; stop if the client goes.

        A server may accept ``send`` after the client has gone (Granian does, and reports
        the disconnect to ``receive``), so without the watch an aborted download of a
        large range would still read all of it from the disk. The notice can take a few
        milliseconds to reach the event loop; what is read meanwhile is the only waste.
        """
        byte_range = self._range or ByteRange(0, self._reader.size - 1)
        offset, remaining = byte_range.first, byte_range.length
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
                # The worker thread still uses the reader; __call__ closes it after us.
                await asyncio.wait([next_read])
                if not next_read.cancelled():
                    next_read.exception()  # retrieved: an error here is of no interest now

    def _read(self, size: int, offset: int) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        reader = self._reader
        cached = reader.read_nowait(size, offset) if size <= _INLINE_READ else None
        if cached is not None:
            done: asyncio.Future[bytes] = loop.create_future()
            done.set_result(cached)
            return done
        return asyncio.ensure_future(
            loop.run_in_executor(_blob_readers(), reader.read, size, offset)
        )


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


async def prepare_download(
    request: Request[Any, Any, Any], ref: BlobRef, reader: BlobReader, immutable: bool
) -> ASGIResponse:
    """Evaluate preconditions and Range for ``ref``, whose bytes ``reader`` holds open
    (``Catalog.open_blob``), and build the response; it owns the reader from here on."""
    taken = False

    async def take_reader() -> BlobReader | None:
        nonlocal taken
        taken = True
        return reader

    try:
        return await prepare_representation(request, representation_of(ref, immutable), take_reader)
    finally:
        if not taken:  # 304, 412, 416: no body to send
            reader.close()


def representation_of(ref: BlobRef, immutable: bool) -> Representation:
    """The representation ``/reg`` serves of a blob (by tag, or ``immutable`` by digest)."""
    return Representation(
        size=ref.size,
        etag=etag_of(ref.digest),
        last_modified=ref.last_modified,
        sha256=ref.sha256,
        immutable=immutable,
    )


@dataclass(frozen=True, slots=True)
class Redirects:
    """``--redirect-downloads``: where a GET of a stored blob's bytes is sent instead."""

    blobs: BlobStore
    expires_in: int
    enabled: bool

    def of(self, blake3_hex: str, *, seen: bool) -> Redirect | None:
        """The redirect of a GET of stored blob ``blake3_hex``; None when they are off.

        ``seen``: the caller found the object a moment ago (``resolve(present=True)``).
        Otherwise the redirect asks the store first (a HEAD) and, when the object is
        missing, gives no URL: the caller's reader then finds it missing and answers the
        registry's own 404, never the object store's (an XML body at another address).
        """
        if not self.enabled:
            return None

        async def url() -> str | None:
            if not seen and await self.blobs.size_of(blake3_hex) is None:
                return None
            return await self.blobs.download_url(blake3_hex, self.expires_in)

        return url


@dataclass(frozen=True, slots=True)
class Representation:
    """What RFC 9110 needs to know of the bytes a GET or HEAD sends."""

    size: int
    etag: str
    last_modified: datetime
    sha256: str
    immutable: bool
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    """More response fields (``Docker-Content-Digest``)."""


async def prepare_representation(
    request: Request[Any, Any, Any],
    rep: Representation,
    open_reader: Callable[[], Awaitable[BlobReader | None]],
    redirect: Redirect | None = None,
) -> ASGIResponse:
    """Evaluate preconditions and Range for ``rep``; the body is read from ``open_reader``'s
    reader (a blob, or bytes framed around one), opened only when bytes go out.

    ``redirect`` (a stored blob, redirects on): a GET whose answer would be the bytes
    (200, 206) and that the object store answers alike (:func:`_store_answers_alike`)
    gets ``307`` to the URL it gives instead. Everything before (the caller's auth,
    blocked and quarantine checks, the preconditions, 304, 412, 416) is decided here.
    """
    headers = {
        "ETag": rep.etag,
        "Last-Modified": format_datetime(rep.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Type": rep.content_type,
        "Repr-Digest": repr_digest_of(rep.sha256),
        "Cache-Control": "public, max-age=31536000, immutable" if rep.immutable else "no-cache",
        **rep.headers,
    }
    modified_secs = int(rep.last_modified.timestamp())
    status, byte_range = evaluate(
        request.method, request.headers, rep.size, rep.etag, modified_secs
    )
    if status == 412:
        raise PreconditionFailedError("the image does not match the request's preconditions")
    if status == 416:
        return _unsatisfiable(headers, rep.size, is_head=request.method == "HEAD")
    if status == 304:
        return ASGIResponse(status_code=304, headers=headers)
    if byte_range is not None:
        headers["Content-Range"] = f"bytes {byte_range.first}-{byte_range.last}/{rep.size}"
    if (
        redirect is not None
        and request.method == "GET"
        and _store_answers_alike(request.headers, status)
        and (url := await redirect()) is not None
    ):
        return _redirected(url, headers)
    headers["Content-Length"] = str(byte_range.length if byte_range else rep.size)
    reader = await open_reader()
    if reader is None:
        # The reference was deleted between the catalog read and now.
        raise NotFoundError("image not found")
    return BlobResponse(
        reader=reader,
        status_code=status,
        headers=headers,
        byte_range=byte_range,
        is_head_response=request.method == "HEAD",
    )


def _store_answers_alike(h: Mapping[str, str], status: int) -> bool:
    """Whether the object store, given this request's headers (a redirect keeps them, but
    for credentials), answers what this server would: the same bytes or the same range.

    The store's validators are not ours (its ETag is an MD5 or a multipart checksum, its
    Last-Modified the object's), so a request whose answer depends on them is answered
    here: ``If-Match`` (SeaweedFS answers 412 to ours), ``If-Unmodified-Since``,
    ``If-Modified-Since``, and a ``Range`` this server does not honour (an ``If-Range``
    that does not hold, several ranges: 200 here, maybe a 206 there). An ``If-Range``
    that holds is safe: a store that ignores it (SeaweedFS 4.48 does) sends the range,
    one that compares it with its own ETag sends all of the same bytes with 200. An
    ``If-None-Match`` that did not match here matches no ETag of the store either.
    """
    if any(name in h for name in ("if-match", "if-unmodified-since", "if-modified-since")):
        return False
    return status == 206 or "range" not in h


def _redirected(url: str, headers: dict[str, str]) -> ASGIResponse:
    """``307 Temporary Redirect`` to ``url`` (same method, same headers: the client asks
    the store for the same bytes or range). Never cached: the URL expires."""
    kept = {name: headers[name] for name in _REDIRECT_KEEPS if name in headers}
    kept.update({name: value for name, value in headers.items() if name.startswith("Docker-")})
    kept.update({"Location": url, "Cache-Control": "no-store"})
    return ASGIResponse(status_code=307, headers=kept, body=b"", media_type="text/plain")


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
