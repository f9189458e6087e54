"""Reading stored objects: ranged GETs, and a reader that outlives a delete.

A blob's reader holds no descriptor; it reads ranges of the blob's key. A delete
moves the blob to ``trash/`` (a server-side copy, then a delete of the blob's key)
and a purge deletes the trashed copy only after the store's ``reader_grace``
(``S3BlobStore``), so a reader that finds its key gone reads the same bytes from the
blob's key again (put back or uploaded anew) or from a trashed copy: every object
named by the digest holds the same bytes, content addressing says so. Quarantined
copies are never read (their bytes failed a check).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from cloudimg.blobstore.s3.client import Bucket, is_missing, translated

__all__ = ["READ_BLOCK", "S3BlobReader"]

READ_BLOCK = 8 * 1024 * 1024
"""Bytes read from a streamed body at a time (checksums, compositions)."""


class S3BlobReader:
    """Ranged reads of one object; ``relocate`` names where its bytes went if it is gone."""

    __slots__ = ("_bucket", "_key", "_relocate", "size")

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

    def fileno(self) -> int | None:
        return None  # no descriptor: the bytes are behind HTTP, sent from read()'s pieces

    def read_nowait(self, size: int, offset: int) -> bytes | None:
        return None  # every read is a request: never on the event loop

    def read(self, size: int, offset: int) -> bytes:
        if self._key is None:
            raise ValueError("read of a closed blob reader")
        end = min(self.size, offset + size)
        if end <= offset:
            return b""
        for _attempt in range(3):
            key = self._key
            try:
                got = self._bucket.client.get_object(
                    Bucket=self._bucket.name, Key=key, Range=f"bytes={offset}-{end - 1}"
                )
                return got["Body"].read()
            except ClientError as exc:
                if not is_missing(exc) or self._relocate is None:
                    raise translated(exc) from exc
            except BotoCoreError as exc:
                raise translated(exc) from exc
            try:
                moved = self._relocate()
            except (ClientError, BotoCoreError) as exc:
                raise translated(exc) from exc
            if moved is None:
                break
            self._key = moved
        raise OSError(errno.ENOENT, "the blob's bytes are gone from the object store")

    def close(self) -> None:
        self._key = None
