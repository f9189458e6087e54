"""A resumable push through the OCI face's blob upload sessions (``/v2``).

The bytes go in ``PATCH`` chunks into a session the server keeps in its catalog and
on its data volume; the session's URL is remembered in the user's cache directory, so
a push that was killed, or whose connection broke, asks the server how far it got
(``GET`` on the session) and sends only the rest. The client hashes the bytes as the
server confirms them (after a resume, the part the server has is hashed from the local
file, which costs no transfer); the final ``PUT ?digest=sha256:<hex>`` makes the
server check the whole upload against that digest. A ``/reg`` retag of that sha256
with the metadata then commits the finished upload under the tag as a ``/reg`` upload
does (inspection included), bytes and metadata in one write, so the push is one entry
of the tag's history; and the stored bytes are checked by their digest reference
against the client's blake3. A server older than that commit (its retag answers 404)
gets a disk-artifact manifest ``PUT`` under the tag instead, and the metadata, which a
manifest does not carry, by a second retag.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import httpx

from cloudimg.client.errors import ClientError, VerificationError
from cloudimg.client.reference import ImageRef
from cloudimg.client.session import Session, repr_sha256
from cloudimg.client.upload import PushResult
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["DEFAULT_CHUNK", "push_resumable", "state_directory"]

DEFAULT_CHUNK = 32 * 1024 * 1024
_PIECE = 1024 * 1024
_EMPTY_CONFIG = b"{}"
_DISK_TYPE = "application/vnd.cloudimg.disk.v1"


def state_directory() -> Path:
    """Where unfinished pushes are remembered: ``$XDG_CACHE_HOME/cloudimg/pushes``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cloudimg" / "pushes"


@dataclass
class _Upload:
    """One file's upload: its session, how far the server has it, the hashes so far."""

    session: Session
    path: Path
    ref: ImageRef
    size: int
    chunk: int
    meter: ProgressMeter
    location: str = ""
    hashed: int = 0
    resumed_from: int = 0
    blake3: blake3.blake3 = field(default_factory=lambda: blake3.blake3())
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def v2(self) -> str:
        return f"/v2/{self.ref.repo}/{self.ref.image}"

    @property
    def state_file(self) -> Path:
        stat = self.path.stat()
        # Not the server's URL: a session of another server is a 404 there, and starts anew.
        key = json.dumps([str(self.ref), str(self.path.resolve()), stat.st_size, stat.st_mtime_ns])
        return state_directory() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def push_resumable(
    session: Session,
    path: Path,
    ref: ImageRef,
    meta: dict[str, str],
    progress: Progress | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[PushResult, int]:
    """Upload ``path`` as ``ref`` (a tag), resuming an earlier push of the same file.

    Returns what was stored and the offset the push resumed from (0: a new upload).

    Raises:
        VerificationError: the server's bytes are not the file's.
        RefusedError, NotFoundError, ConnectionFailedError: as the session says.
    """
    size = path.stat().st_size
    upload = _Upload(session, path, ref, size, chunk, ProgressMeter(progress, size, "pushed"))
    session.retrying(lambda: _send(upload), f"PATCH {ref}")
    upload.meter.finish()
    sha256 = upload.sha256.hexdigest()
    _finish(upload, sha256)
    upload.state_file.unlink(missing_ok=True)
    if not _commit_with_meta(upload, sha256, meta):
        _commit(upload, sha256)  # an older server: the manifest, then the metadata
        if meta:
            body = {"digest": f"sha256:{sha256}", "meta": meta}
            session.request("POST", f"{ref.path}/retag", write=True, json=body)
    return _check_stored(upload, sha256), upload.resumed_from


def _send(upload: _Upload) -> None:
    """Bring the session to the whole file; called again after a transient failure."""
    offset = _offset(upload)
    if offset is None:
        _start(upload)
        offset = 0
    if offset > upload.size:
        raise ClientError(f"{upload.ref}: the server holds more bytes than {upload.path} has")
    if upload.hashed == 0 and offset > 0 and upload.resumed_from == 0:
        upload.resumed_from = offset
    _hash_up_to(upload, offset)
    upload.meter.done = offset
    while offset < upload.size:
        length = min(upload.chunk, upload.size - offset)
        # One attempt: a failure goes back to _send, which asks the server's offset first.
        response = upload.session.raw(
            "PATCH",
            upload.location,
            write=True,
            content=_pieces(upload, offset, length),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                "Content-Range": f"{offset}-{offset + length - 1}",
            },
        )
        upload.session.checked(response)
        upload.location = response.headers.get("Location", upload.location)
        confirmed = _range_end(response)
        if confirmed != offset + length:
            raise ClientError(
                f"{upload.ref}: the server took {confirmed - offset} bytes of {length}"
            )
        offset = confirmed
        _hash_up_to(upload, offset)


def _offset(upload: _Upload) -> int | None:
    """How many bytes the remembered session holds; None when there is no usable session."""
    if not upload.location:
        try:
            upload.location = json.loads(upload.state_file.read_text())["location"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    response = upload.session.raw("GET", upload.location, write=True)
    if response.status_code == 404:  # finished, cancelled or collected: start anew
        upload.location = ""
        upload.hashed = 0
        upload.blake3, upload.sha256 = blake3.blake3(), hashlib.sha256()
        return None
    if upload.session.checked(response).headers.get("Range") == "0-0":
        return 0  # nothing yet (or one byte: sent again, as the server refuses the overlap)
    return _range_end(response)


def _start(upload: _Upload) -> None:
    response = upload.session.checked(
        upload.session.raw("POST", f"{upload.v2}/blobs/uploads/", write=True)
    )
    upload.location = response.headers["Location"]
    upload.state_file.parent.mkdir(parents=True, exist_ok=True)
    upload.state_file.write_text(json.dumps({"location": upload.location, "ref": str(upload.ref)}))


def _pieces(upload: _Upload, offset: int, length: int) -> Iterator[bytes]:
    """The chunk's bytes from the file, counted as they go out."""
    with upload.path.open("rb") as file:
        file.seek(offset)
        left = length
        while left > 0:
            piece = file.read(min(_PIECE, left))
            if not piece:
                raise ClientError(f"{upload.path} shrank while it was pushed")
            left -= len(piece)
            upload.meter.add(len(piece))
            yield piece


def _hash_up_to(upload: _Upload, offset: int) -> None:
    """Hash the file from what is hashed to ``offset`` (the bytes the server has)."""
    if offset < upload.hashed:
        raise ClientError(f"{upload.ref}: the server lost bytes it had confirmed; push again")
    with upload.path.open("rb") as file:
        file.seek(upload.hashed)
        while upload.hashed < offset:
            piece = file.read(min(16 * _PIECE, offset - upload.hashed))
            if not piece:
                raise ClientError(f"{upload.path} shrank while it was pushed")
            upload.blake3.update(piece)
            upload.sha256.update(piece)
            upload.hashed += len(piece)


def _range_end(response: httpx.Response) -> int:
    """The session's length from its ``Range: 0-<last>`` header."""
    text = response.headers.get("Range", "")
    first, _dash, last = text.partition("-")
    if first != "0" or not last.isdigit():
        raise ClientError(f"the server's upload session answered no Range ({text!r})")
    return int(last) + 1


def _finish(upload: _Upload, sha256: str) -> None:
    response = upload.session.raw(
        "PUT", upload.location, write=True, params={"digest": f"sha256:{sha256}"}, content=b""
    )
    if response.status_code == 400 and "DIGEST_INVALID" in response.text:
        upload.state_file.unlink(missing_ok=True)
        raise VerificationError(
            f"{upload.ref}: the bytes the server received are not sha256:{sha256}; "
            "nothing was stored"
        )
    upload.session.checked(response)


def _commit_with_meta(upload: _Upload, sha256: str, meta: dict[str, str]) -> bool:
    """Retag ``sha256:<hex>`` under the tag with ``meta``: the server commits the finished
    upload, as an upload; False when it answers 404 or 405 (a server older than that
    commit, which names by retag only bytes it stores)."""
    session, ref = upload.session, upload.ref
    body = {"digest": f"sha256:{sha256}", "meta": meta}

    def attempt() -> httpx.Response:
        response = session.raw("POST", f"{ref.path}/retag", write=True, absolute=False, json=body)
        return response if response.status_code in (404, 405) else session.checked(response)

    return session.retrying(attempt, f"POST {ref}/retag").status_code not in (404, 405)


def _commit(upload: _Upload, sha256: str) -> None:
    """The disk-artifact manifest under the tag: the server commits the disk."""
    config = hashlib.sha256(_EMPTY_CONFIG).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": _DISK_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": f"sha256:{config}",
            "size": len(_EMPTY_CONFIG),
        },
        "layers": [{"mediaType": _DISK_TYPE, "digest": f"sha256:{sha256}", "size": upload.size}],
    }
    upload.session.request(
        "PUT",
        f"{upload.v2}/manifests/{upload.ref.tag}",
        write=True,
        absolute=True,
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )


def _check_stored(upload: _Upload, sha256: str) -> PushResult:
    """The stored bytes by digest reference: their blake3 must be the client's."""
    image = f"/{upload.ref.repo}/{upload.ref.image}"
    path = f"{image}/sha256:{sha256}"
    headers = upload.session.request("HEAD", path).headers
    expected = upload.blake3.hexdigest()
    if headers.get("ETag", "").strip('"') != f"blake3:{expected}":
        raise VerificationError(
            f"{upload.ref}: the server stored other bytes than blake3:{expected}"
        )
    if repr_sha256(headers) != sha256:
        raise VerificationError(f"{upload.ref}: the server stored other bytes than sha256:{sha256}")
    url = upload.session.url(f"{image}/blake3:{expected}")
    return PushResult(url, expected, sha256, upload.size)
