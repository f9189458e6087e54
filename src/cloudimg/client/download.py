"""``pull``: download an image by tag or digest, resumably, verified, sparse.

The bytes go into a hidden partial file next to the destination, named after the
digest the server gave them (its ETag, ``"blake3:<hex>"``). A later pull of the same
destination sends ``Range`` from the partial's length with ``If-Range`` set to that
ETag: the server sends the rest (206) if the reference still names those bytes, or
the whole new image (200) if a tag moved meanwhile, and the old partial is dropped.
At the end the whole file is hashed; only a file whose blake3 (and, for a sha256
reference, sha256) is the expected one is renamed into place. Runs of zero bytes are
not written but left as holes, so a raw image takes only the space of its data.

A server that redirects downloads to its object store (``307``) names the digest in the
redirect; the bytes come from the store, asked without the registry's credentials
(``Session.follow``), and are verified against the redirect's digest as above.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3
import httpx

from cloudimg.client.browse import describe
from cloudimg.client.errors import (
    ClientError,
    ConnectionFailedError,
    UsageError,
    VerificationError,
)
from cloudimg.client.reference import ImageRef
from cloudimg.client.session import Session
from cloudimg.client.upload import file_blake3
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["PullResult", "check_destination", "has_digest", "pull", "wanted_blake3"]

_HOLE_BLOCK = 64 * 1024
_ZEROS = bytes(_HOLE_BLOCK)
_TASK = "pulled"


@dataclass(frozen=True, slots=True)
class PullResult:
    """What was written: the digests checked and how many bytes this run fetched."""

    blake3: str
    sha256: str | None
    size: int
    fetched: int
    resumed_from: int


def pull(
    session: Session, ref: ImageRef, dest: Path | None, progress: Progress | None = None
) -> PullResult:
    """Download ``ref`` into ``dest`` (``None``: stdout), verified.

    Raises:
        VerificationError: the bytes do not hash to the digest (no file is left).
        ClientError: the destination cannot be written (its ``strerror``).
        NotFoundError, RefusedError, ConnectionFailedError: as the session says.
    """
    try:
        return _Pull(session, ref, dest, progress).run()
    except OSError as exc:
        where = "stdout" if dest is None else str(dest)
        raise ClientError(f"cannot write {where}: {exc.strerror or exc}") from None


def check_destination(dest: Path) -> bool:
    """Whether ``dest`` exists (a regular file); it must be one or be creatable by name.

    Raises:
        UsageError: its directory does not exist or is no directory, or ``dest`` exists
            and is not a regular file (a directory, a device: ``-`` is stdout).
    """
    parent = dest.parent
    if not parent.is_dir():
        why = "does not exist" if not parent.exists() else "is not a directory"
        raise UsageError(f"cannot write {dest}: the directory {parent} {why}")
    if dest.exists() and not dest.is_file():
        raise UsageError(f"{dest} exists and is not a regular file (- writes to stdout)")
    return dest.exists()


def wanted_blake3(session: Session, ref: ImageRef) -> str:
    """The ``blake3:<hex>`` of the bytes ``ref`` names now (a tag's ``/meta``, a digest's
    ``HEAD``), to compare a local file with before downloading."""
    digest = describe(session, ref).get("digest")
    if not isinstance(digest, str) or not digest.startswith("blake3:"):
        raise VerificationError(f"{ref}: the server named no blake3 digest to compare with")
    return digest


def has_digest(path: Path, blake3_digest: str, progress: Progress | None = None) -> bool:
    """Whether the file at ``path`` hashes to ``blake3_digest`` (``blake3:<hex>``)."""
    return f"blake3:{file_blake3(path, progress)}" == blake3_digest


class _Pull:
    def __init__(
        self, session: Session, ref: ImageRef, dest: Path | None, progress: Progress | None
    ) -> None:
        self.session, self.ref, self.dest, self.progress = session, ref, dest, progress
        self.etag: str | None = None
        self.offset = 0
        self.fetched = 0
        self.resumed_from = 0
        self.size: int | None = None
        self.meter: ProgressMeter | None = None
        # stdout cannot be read back: it is hashed as it is written.
        self.stream_hash = blake3.blake3() if dest is None else None
        self.stream_sha256 = hashlib.sha256() if dest is None else None
        if dest is not None:
            self._pick_partial()
            self.resumed_from = self.offset

    def run(self) -> PullResult:
        self.session.retrying(self._attempt, f"GET {self.ref}")
        if self.meter is not None:
            self.meter.finish()
        return self._verify()

    # -- one attempt: a request for what is missing, appended --

    def _attempt(self) -> None:
        headers = {}
        if self.etag is not None and self.offset > 0:
            headers = {"Range": f"bytes={self.offset}-", "If-Range": self.etag}
        if self.size is not None and self.offset == self.size:
            return  # a retry after the last byte arrived
        with self.session.stream("GET", self.ref.path, headers=headers) as response:
            if not response.is_redirect:
                self._take(response, response.headers.get("ETag"))
                return
            # A server with --redirect-downloads sends the GET to the object store. Its
            # answer carries the store's ETag, not the registry's: the bytes are verified
            # against the ETag of the registry's 307. The store is asked for the same
            # range, without If-Range: the registry evaluated it (206 only if it held), and
            # the URL names those bytes and no others.
            etag = response.headers.get("ETag")
            same = "Range" in headers and etag == self.etag
            # Other bytes than the partial's (a moved tag): all of them, from the start.
            ranged = {"Range": headers["Range"]} if same else {}
            with self.session.follow(response, ranged) as stored:
                self._take(stored, etag)

    def _take(self, response: httpx.Response, etag: str | None) -> None:
        """Append a 206 that continues the partial, or start over with a 200."""
        if response.status_code == 206 and self._continues(response, etag):
            self._receive(response, self.offset)
        elif response.status_code == 200:
            self._start_over(response, etag)
            self._receive(response, 0)
        else:
            raise ConnectionFailedError(f"GET {self.ref}: unexpected answer {response.status_code}")

    def _continues(self, response: httpx.Response, etag: str | None) -> bool:
        content_range = response.headers.get("Content-Range", "")
        start = content_range.removeprefix("bytes ").partition("-")[0]
        total = content_range.rpartition("/")[2]
        if start != str(self.offset) or etag != self.etag:
            raise ConnectionFailedError(f"GET {self.ref}: the server sent another range")
        self.size = int(total) if total.isdigit() else None
        return True

    def _start_over(self, response: httpx.Response, etag: str | None) -> None:
        if self.dest is None and self.offset > 0:
            # Bytes went to stdout already and the image changed since: cannot take back.
            raise ConnectionFailedError(f"{self.ref} changed during the download; pull again")
        if self.dest is not None:
            self._drop_partials()
        self.etag, self.offset, self.resumed_from = etag, 0, 0
        length = response.headers.get("Content-Length")
        self.size = int(length) if length is not None and length.isdigit() else None
        if self.meter is not None:
            self.meter.done = 0

    def _receive(self, response: httpx.Response, start: int) -> None:
        if self.meter is None:
            self.meter = ProgressMeter(self.progress, self.size or 0, _TASK)
            self.meter.done = start
        if self.dest is None:
            self._to_stdout(response)
            return
        with _open_partial(self._partial_path()) as file:
            writer = _SparseWriter(file, start)
            try:
                # As the bytes arrive (no buffering to a size): a broken connection keeps all.
                for chunk in response.iter_bytes():
                    writer.write(chunk)
                    self._count(len(chunk))
            finally:
                writer.close()  # the length covers trailing holes, also of a partial

    def _to_stdout(self, response: httpx.Response) -> None:
        assert self.stream_hash is not None
        assert self.stream_sha256 is not None
        out = os.fdopen(os.dup(1), "wb")
        with out:
            for chunk in response.iter_bytes():
                out.write(chunk)
                self.stream_hash.update(chunk)
                self.stream_sha256.update(chunk)
                self._count(len(chunk))

    def _count(self, count: int) -> None:
        self.offset += count
        self.fetched += count
        assert self.meter is not None
        self.meter.add(count)

    # -- the partial file --

    def _partial_path(self) -> Path:
        assert self.dest is not None
        tag = (self.etag or '"unknown"').strip('"').replace(":", "-")
        return self.dest.with_name(f".{self.dest.name}.{tag}.part")

    def _partials(self) -> list[Path]:
        assert self.dest is not None
        pattern = glob.escape(str(self.dest.with_name(f".{self.dest.name}."))) + "*.part"
        return [Path(p) for p in glob.glob(pattern)]

    def _pick_partial(self) -> None:
        """Resume the newest partial of this destination; the others are stale."""
        found = sorted(self._partials(), key=lambda p: p.stat().st_mtime)
        if not found:
            return
        newest = found[-1]
        for stale in found[:-1]:
            stale.unlink(missing_ok=True)
        assert self.dest is not None
        digest = newest.name.removeprefix(f".{self.dest.name}.").removesuffix(".part")
        algorithm, _dash, hex_part = digest.partition("-")
        self.etag = f'"{algorithm}:{hex_part}"'
        self.offset = newest.stat().st_size

    def _drop_partials(self) -> None:
        for partial in self._partials():
            partial.unlink(missing_ok=True)

    # -- the end: verify, then put in place --

    def _verify(self) -> PullResult:
        expected = _expected_blake3(self.etag, self.ref)
        want_sha256 = self.ref.digest is not None and self.ref.digest.algorithm == "sha256"
        sha256: str | None
        if self.dest is None:
            assert self.stream_hash is not None
            assert self.stream_sha256 is not None
            actual, sha256 = self.stream_hash.hexdigest(), self.stream_sha256.hexdigest()
        else:
            actual, sha256 = _hash_file(self._partial_path(), want_sha256)
        problem = None
        if actual != expected:
            problem = f"the bytes hash to blake3:{actual}, the server named blake3:{expected}"
        elif want_sha256 and self.ref.digest is not None and sha256 != self.ref.digest.hex:
            problem = f"the bytes hash to sha256:{sha256}, not {self.ref.digest}"
        if problem is not None:
            if self.dest is not None:
                self._drop_partials()
            raise VerificationError(f"{self.ref}: {problem}; nothing was kept")
        if self.dest is not None:
            partial = self._partial_path()
            with partial.open("rb") as file:
                os.fsync(file.fileno())
            os.replace(partial, self.dest)
        return PullResult(actual, sha256, self.offset, self.fetched, self.resumed_from)


def _expected_blake3(etag: str | None, ref: ImageRef) -> str:
    """The blake3 the bytes must have: the ETag's, which a blake3 reference must equal."""
    named = (etag or "").strip('"')
    algorithm, _colon, hex_part = named.partition(":")
    if algorithm != "blake3" or len(hex_part) != 64:
        raise VerificationError(f"{ref}: the server gave no blake3 digest to verify against")
    if ref.digest is not None and ref.digest.algorithm == "blake3" and ref.digest.hex != hex_part:
        raise VerificationError(f"{ref}: the server sent bytes named blake3:{hex_part}")
    return hex_part


def _hash_file(path: Path, sha256: bool) -> tuple[str, str | None]:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    if not sha256:
        return hasher.hexdigest(), None
    with path.open("rb") as file:
        return hasher.hexdigest(), hashlib.file_digest(file, "sha256").hexdigest()


def _open_partial(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    return os.fdopen(fd, "wb")  # no O_TRUNC: the writer keeps what is there


class _SparseWriter:
    """Writes at absolute offsets and skips aligned all-zero blocks (they stay holes)."""

    def __init__(self, file: BinaryIO, start: int) -> None:
        self._fd = file.fileno()
        self._position = start
        os.ftruncate(self._fd, start)  # drop anything past what is known good

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for piece in _aligned(view, self._position):
            if piece != _ZEROS[: len(piece)]:
                _pwrite_all(self._fd, piece, self._position)
            self._position += len(piece)

    def close(self) -> None:
        # Trailing holes: the file's length is where the bytes end, written or not.
        if os.fstat(self._fd).st_size < self._position:
            os.ftruncate(self._fd, self._position)


def _aligned(view: memoryview, position: int) -> Iterator[memoryview]:
    """``view`` cut at multiples of the hole block (counted from the file's start)."""
    at = 0
    while at < len(view):
        end = at + _HOLE_BLOCK - (position + at) % _HOLE_BLOCK
        yield view[at:end]
        at = end


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
