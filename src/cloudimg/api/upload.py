"""Streaming multipart upload: the ``img`` part goes straight into a staging file.

The body is parsed as it arrives with ``multipart``'s push parser (sans-IO, no
spooling): image bytes are handed to the blob store's staging writer, which hashes
and writes them; the ``meta`` part is kept in memory up to a small limit. Any
failure (bad input, disconnect, full disk) drops the staging file.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from cloudimg.blobstore import BlobStore, StagedBlob, StagingWriter
from cloudimg.digest import Digest
from cloudimg.errors import (
    DigestMismatchError,
    InvalidArgumentError,
    PayloadTooLargeError,
)

__all__ = ["MAX_META_BYTES", "Upload", "receive_upload"]

MAX_META_BYTES = 64 * 1024
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
    writer: StagingWriter | None = None
    meta: bytearray | None = None
    current: str | None = None
    seen: set[str] = field(default_factory=set)

    async def start(self, segment: MultipartSegment) -> None:
        name = segment.name or ""
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


async def receive_upload(
    body: AsyncIterator[bytes],
    content_type: str | None,
    blobs: BlobStore,
    expected: Digest | None,
) -> Upload:
    """Read a ``meta`` + ``img`` multipart body into a staging file and check it.

    The caller owns the returned staging file (commit it or abort it).

    Raises:
        InvalidArgumentError: a malformed body, a missing part, bad metadata, a digest
            mismatch; nothing is left behind.
    """
    parser = PushMultipartParser(
        boundary_of(content_type),
        max_header_size=_MAX_PART_HEADER_BYTES,
        max_segment_count=_MAX_PARTS,
    )
    parts = _Parts(blobs)
    try:
        async for chunk in body:
            if chunk:
                await _feed(parser, parts, chunk)
        await _feed(parser, parts, b"")
        meta = _parse_meta(parts.meta)
        if parts.writer is None:
            raise InvalidArgumentError("the 'img' part is missing")
        staged = await parts.writer.finish()
        _check_digest(staged, expected)
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


def _parse_meta(raw: bytearray | None) -> dict[str, str]:
    if raw is None:
        raise InvalidArgumentError("the 'meta' part is missing")
    try:
        meta: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"the 'meta' part is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise InvalidArgumentError("the 'meta' part must be a JSON object")
    bad = [key for key, value in meta.items() if not isinstance(value, str)]
    if bad:
        raise InvalidArgumentError("metadata values must be strings", {"keys": bad[:20]})
    return meta


def _check_digest(staged: StagedBlob, expected: Digest | None) -> None:
    if expected is None:
        return
    actual = staged.blake3 if expected.algorithm == "blake3" else staged.sha256
    if actual != expected.hex:
        raise DigestMismatchError(
            "the uploaded bytes do not match the digest in the request",
            {"expected": str(expected), "actual": f"{expected.algorithm}:{actual}"},
        )
