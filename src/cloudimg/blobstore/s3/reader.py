"""Reading stored objects: one streamed GET for sequential reads, and a reader that
outlives a delete.

A blob's reader holds no descriptor. A download reads its range front to back in
pieces (64 KiB growing to 1 MiB): a ranged GET per piece ran at a tenth of one GET of
the object on SeaweedFS (a request's round trip and the store's lookup per MiB), so
the reader keeps one GET open from the first offset to the object's end and serves
each read that continues where the last one stopped from that body. A read elsewhere
(a seek, a second range) opens the body again there; a read while another thread
holds the body (reads may overlap) is a ranged GET of its own; a body that fails
mid-way (an error, or an end before its length) is dropped and the read is retried as
a ranged GET, whose errors (its body's too) are the store's translated ones.

A delete moves the blob to ``trash/`` (a server-side copy, then a delete of the blob's
key) and a purge deletes the trashed copy only after the store's ``reader_grace``
(``S3BlobStore``), so a reader that finds its key gone reads the same bytes from the
blob's key again (put back or uploaded anew) or from a trashed copy: every object
named by the digest holds the same bytes, content addressing says so. Quarantined
copies are never read (their bytes failed a check).
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable

from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from cloudimg.blobstore.s3.client import STORE_ERRORS, Bucket, is_missing, translated

__all__ = ["READ_BLOCK", "S3BlobReader"]

READ_BLOCK = 8 * 1024 * 1024
"""Bytes read from a streamed body at a time (checksums, compositions)."""


class S3BlobReader:
    """Reads of one object; ``relocate`` names where its bytes went if it is gone."""

    __slots__ = ("_body", "_bucket", "_key", "_lock", "_position", "_relocate", "size")

    def __init__(
        self,
        bucket: Bucket,
        key: str,
        size: int,
        relocate: Callable[[], str | None] | None = None,
    ) -> None:
        self._bucket = bucket
        self._key: str | None = key
        self._relocate = relocate
        self.size = size
        self._lock = threading.Lock()
        self._body: StreamingBody | None = None
        """The open GET's streamed body, or None."""
        self._position = 0
        """The offset the open body reads next."""

    def fileno(self) -> int | None:
        return None  # no descriptor: the bytes are behind HTTP, sent from read()'s pieces

    def read_nowait(self, size: int, offset: int) -> bytes | None:
        return None  # every read may wait for the network: never on the event loop

    def read(self, size: int, offset: int) -> bytes:
        if self._key is None:
            raise ValueError("read of a closed blob reader")
        end = min(self.size, offset + size)
        if end <= offset:
            return b""
        if not self._lock.acquire(blocking=False):
            return self._ranged(offset, end - offset)  # another read holds the body
        try:
            return self._streamed(offset, end - offset)
        finally:
            self._lock.release()

    def close(self) -> None:
        self._key = None
        with self._lock:
            self._drop_body()

    def _streamed(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` from the open body, opened there if it is not."""
        if self._body is None or self._position != offset:
            self._drop_body()
            self._body = self._get(f"bytes={offset}-")
            self._position = offset
        try:
            data = self._body.read(length)
        except Exception:  # the connection broke mid-way: one ranged GET says what is wrong
            self._drop_body()
            return self._ranged(offset, length)
        if len(data) != length:
            # A body cut off mid-way ends early without an error (botocore checks the
            # length only of a read to the end): the ranged GET tells a broken
            # connection (the store's error) from an object shorter than this reader's.
            self._drop_body()
            return self._ranged(offset, length)
        self._position += length
        return data

    def _ranged(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` from a GET of their own. Its body is read here,
        after ``_get`` returned, so its errors (a connection that breaks mid-body) are
        translated here too: the caller sees the store's ``OSError``, never urllib3's."""
        body = self._get(f"bytes={offset}-{offset + length - 1}")
        try:
            data = body.read()  # to its end: botocore raises if it ends before its length
        except STORE_ERRORS as exc:
            raise translated(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                body.close()
        if len(data) != length:  # the object ended early: not the bytes this reader is of
            raise OSError(errno.EIO, "the object store sent fewer bytes than the blob holds")
        return data

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):  # an unfinished body just drops its connection
                body.close()

    def _get(self, byte_range: str) -> StreamingBody:
        """The body of a GET of ``byte_range`` of the blob, wherever its bytes are now."""
        for _attempt in range(3):
            key = self._key
            if key is None:
                raise ValueError("read of a closed blob reader")
            try:
                got = self._bucket.client.get_object(
                    Bucket=self._bucket.name, Key=key, Range=byte_range
                )
                return got["Body"]
            except ClientError as exc:
                if not is_missing(exc) or self._relocate is None:
                    raise translated(exc) from exc
            except STORE_ERRORS as exc:
                raise translated(exc) from exc
            try:
                moved = self._relocate()
            except STORE_ERRORS as exc:
                raise translated(exc) from exc
            if moved is None:
                break
            self._key = moved
        raise OSError(errno.ENOENT, "the blob's bytes are gone from the object store")
