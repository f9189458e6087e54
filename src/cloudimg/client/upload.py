"""``push``: upload a file under a tag, verified by the server against the client's digest.

The client hashes the file first (blake3 on every core, from a memory map: several
GB/s, a small part of an upload's time) and sends the raw ``PUT`` (the file as the
body, the metadata in the ``Cloudimg-Meta`` header) with ``?digest=blake3:<hex>``: the
server hashes as it stores and refuses (400, nothing kept) bytes that arrive different
from what the client read. A server older than the raw upload answers the ``PUT`` with
405; the push then sends the multipart ``POST`` instead. A transient failure sends the
whole body again: the ``/reg`` upload has no session to resume.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import httpx

from cloudimg.client.errors import ClientError, VerificationError
from cloudimg.client.reference import ImageRef
from cloudimg.client.session import Session, repr_sha256
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["META_HEADER", "PushResult", "file_blake3", "push"]

_HASH_CHUNK = 64 * 1024 * 1024
META_HEADER = "Cloudimg-Meta"
"""The header the raw upload carries the metadata in (the server's ``api.reg.uploads`` names it too:
the client does not import the server)."""


@dataclass(frozen=True, slots=True)
class PushResult:
    """What the server stored: the digest-pinned URL and the image's digests."""

    url: str
    blake3: str
    sha256: str
    size: int


def push(
    session: Session,
    path: Path,
    ref: ImageRef,
    meta: dict[str, str],
    image_format: str | None = None,
    progress: Progress | None = None,
    on_restart: Callable[[], None] | None = None,
    precondition: dict[str, str] | None = None,
) -> PushResult:
    """Upload ``path`` as ``ref`` (a tag) with ``meta``; ``precondition`` (``If-Match`` or
    ``If-None-Match: *``) makes the write conditional (a 412 when the tag changed).

    Raises:
        VerificationError: the server stored other bytes than the client hashed.
        RefusedError, NotFoundError, ConnectionFailedError: as the session says.
    """
    size = path.stat().st_size
    digest = file_blake3(path, progress)
    params = {"digest": f"blake3:{digest}"}
    if image_format:
        params["format"] = image_format
    meter = ProgressMeter(progress, size, "pushed")
    raw = [True]  # until the server answers that it has no raw upload (405)
    extra = precondition or {}

    def attempt() -> PushResult:
        meter.done = 0
        response = _send(session, path, ref, params, meta, meter, raw=raw[0], extra=extra)
        if raw[0] and response.status_code == 405:
            raw[0] = False  # an older server: its multipart POST takes the same upload
            meter.done = 0
            response = _send(session, path, ref, params, meta, meter, raw=False, extra=extra)
        if response.status_code == 400 and _digest_mismatch(response):
            raise VerificationError(
                f"{ref}: the bytes the server received are not blake3:{digest}; nothing was stored"
            )
        session.checked(response)
        meter.finish()
        return _stored(session, response.headers, digest, size)

    return session.retrying(attempt, f"PUT {ref}", before_retry=on_restart)


def _send(
    session: Session,
    path: Path,
    ref: ImageRef,
    params: dict[str, str],
    meta: dict[str, str],
    meter: ProgressMeter,
    *,
    raw: bool,
    extra: dict[str, str],
) -> httpx.Response:
    """One request of the upload: the raw ``PUT``, or the multipart ``POST`` (``raw`` False)."""
    with _CountingFile(path, meter) as image:
        # One attempt each time: push's attempt is the unit the session retries.
        if raw:
            # json.dumps escapes every non-ASCII character, so the header is ASCII.
            headers = {
                **extra,
                "Content-Type": "application/octet-stream",
                META_HEADER: json.dumps(meta),
            }
            return session.raw(
                "PUT", ref.path, write=True, absolute=False, params=params,
                content=image, headers=headers,
            )  # fmt: skip
        return session.raw(
            "POST", ref.path, write=True, absolute=False, params=params,
            data={"meta": json.dumps(meta)},
            files={"img": (path.name, image, "application/octet-stream")}, headers=extra,
        )  # fmt: skip


def file_blake3(path: Path, progress: Progress | None = None) -> str:
    """The blake3 of the file at ``path``, hashed on every core."""
    size = path.stat().st_size
    meter = ProgressMeter(progress, size, "hashed")
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    try:
        with path.open("rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                hasher.update(chunk)
                meter.add(len(chunk))
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    meter.finish()
    return hasher.hexdigest()


def _stored(session: Session, headers: httpx.Headers, digest: str, size: int) -> PushResult:
    etag = headers.get("ETag", "").strip('"')
    if etag != f"blake3:{digest}":
        raise VerificationError(f"the server stored {etag or 'unnamed bytes'}, not blake3:{digest}")
    location = headers.get("Location")
    if not location:
        raise VerificationError("the server's answer names no Location for the stored bytes")
    return PushResult(session.absolute(location), digest, repr_sha256(headers) or "", size)


def _digest_mismatch(response: httpx.Response) -> bool:
    """A 400 whose context names the expected and the actual digest (DigestMismatchError)."""
    try:
        context = response.json().get("context") or {}
    except (ValueError, AttributeError):
        return False
    return isinstance(context, dict) and {"expected", "actual"} <= context.keys()


class _CountingFile(io.FileIO):
    """The image file, counting what httpx reads of it into the progress meter."""

    def __init__(self, path: Path, meter: ProgressMeter) -> None:
        super().__init__(path, "rb")
        self._meter = meter

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self._meter.add(len(data or b""))
        return data or b""

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        position = super().seek(offset, whence)
        if position == 0:
            self._meter.done = 0  # httpx rewinds before it sends
        return position
