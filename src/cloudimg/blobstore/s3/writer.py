"""Bytes into objects: the staging writer (an upload streamed into a multipart upload,
hashed on the way) and the server-side copies that move staged bytes to their key.

An upload's bytes go through the same pipeline as on the file system
(``cloudimg.blobstore.staging.HashingWriter``: blake3, sha256 and the tap each on a
thread of its own, at most a few batches in flight); only its ``write`` stage differs:
it gathers the batches into parts of ``part_size`` bytes and uploads each part as it
fills. The multipart upload is created with the first full part, so an upload smaller
than a part is one ``PutObject`` and an upload aborted early leaves nothing behind.
Memory per upload: one part being gathered plus the pipeline's batches in flight,
whatever the upload's size; nothing is spooled to a local disk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from cloudimg.blobstore.base import StagedBlob, Tap
from cloudimg.blobstore.s3.client import Bucket, call, is_precondition
from cloudimg.blobstore.staging import HashingWriter, StageCosts, _HashState

if TYPE_CHECKING:
    from types_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = [
    "COPY_PART",
    "MAX_COPY",
    "PART_SIZE",
    "Lease",
    "ObjectUpload",
    "S3StagingWriter",
    "copy_if_absent",
]

PART_SIZE = 16 * 1024 * 1024
"""Parts of a staging upload: S3 wants 5 MiB at least (but the last) and 10,000 at most,
so 16 MiB parts allow 160 GiB uploads."""
MAX_COPY = 5 * 1024**3
"""The largest object one ``CopyObject`` copies; larger ones are copied in parts."""
COPY_PART = 1024**3
"""Parts of a copy in parts (``UploadPartCopy``), each a server-side copy of a range."""


class Lease:
    """This process's hold on a staging key: gc here leaves the key alone while it is
    held (other replicas go by the key's age: see ``S3BlobStore.remove_stale_staging``)."""

    __slots__ = ("_held", "_key")

    def __init__(self, held: set[str], key: str) -> None:
        self._held = held
        self._key: str | None = key
        held.add(key)

    def release(self) -> None:
        key, self._key = self._key, None
        if key is not None:
            self._held.discard(key)


class ObjectUpload:
    """One object written in order, a part at a time (blocking: call it on a thread)."""

    def __init__(
        self,
        bucket: Bucket,
        key: str,
        part_size: int = PART_SIZE,
        on_part: Callable[[], None] | None = None,
    ) -> None:
        self.bucket = bucket
        self._on_part = on_part
        self.key = key
        self._part_size = part_size
        self._held: list[bytes] = []
        self._held_size = 0
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self.completed = False

    def add(self, pieces: Sequence[bytes]) -> None:
        for piece in pieces:
            self._held.append(piece)
            self._held_size += len(piece)
        while self._held_size >= self._part_size:
            joined = b"".join(self._held)
            whole = len(joined) == self._part_size  # then no second copy for the slice
            self._send(joined if whole else joined[: self._part_size])
            rest = joined[self._part_size :]
            self._held, self._held_size = ([rest] if rest else []), len(rest)

    def _send(self, body: bytes) -> None:
        client = self.bucket.client
        if self._upload_id is None:
            created = client.create_multipart_upload(Bucket=self.bucket.name, Key=self.key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = client.upload_part(
            Bucket=self.bucket.name,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        if self._on_part is not None:
            self._on_part()

    def complete(self) -> None:
        """Store what was added as the object (a single PUT when it is under a part)."""
        body = b"".join(self._held)
        self._held, self._held_size = [], 0
        client = self.bucket.client
        if self._upload_id is None:
            client.put_object(Bucket=self.bucket.name, Key=self.key, Body=body)
        else:
            if body:
                self._send(body)
            client.complete_multipart_upload(
                Bucket=self.bucket.name,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._upload_id = None
        self.completed = True

    def abort(self) -> None:
        """Drop what was sent: the multipart upload, or the object once completed."""
        self._held, self._held_size = [], 0
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            self.bucket.abort(self.key, upload_id)
        if self.completed:
            self.bucket.delete(self.key)


class S3StagingWriter(HashingWriter):
    """Streams an upload into a staging object while computing blake3 and sha256."""

    def __init__(
        self,
        upload: ObjectUpload,
        lease: Lease,
        tap: Tap | None = None,
        resumed: _HashState | None = None,
        costs: StageCosts | None = None,
        on_finish: Callable[[S3StagingWriter], StagedBlob] | None = None,
    ) -> None:
        super().__init__(tap, resumed, costs)
        self.upload = upload
        self.lease = lease
        self._on_finish = on_finish

    @property
    def key(self) -> str:
        return self.upload.key

    def digests(self) -> tuple[str, str, int]:
        """blake3 hex, sha256 hex and size of what was drained."""
        return self._blake3.hexdigest(), self._sha256.hexdigest(), self._size

    async def finish(self) -> StagedBlob:
        await self.complete()
        if self._on_finish is not None:
            return await asyncio.to_thread(self._on_finish, self)
        blake3_hex, sha256_hex, size = self.digests()
        return StagedBlob(blake3_hex, sha256_hex, size, self.key, self.lease)

    async def complete(self) -> None:
        """Every byte hashed and stored as the staging object."""
        try:
            await self._drain()
            await asyncio.to_thread(call, self.upload.complete)
        except BaseException:
            await self.abort()
            raise

    async def sync(self) -> _HashState:
        """Store what was written as the object (a resumable session's chunk); the hash
        state so far."""
        await self.complete()
        return self._hash_state()

    def release(self) -> None:
        self.lease.release()

    async def abort(self) -> None:
        # The upload is failing anyway; a write error of the last batches changes nothing.
        with contextlib.suppress(Exception):
            await self._end_pipeline()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.upload.abort)
        self.lease.release()

    def _write(self, pieces: Sequence[bytes]) -> None:
        # On the write stage's thread; a part's upload (and a session's lock renewal
        # after it, ``on_part``) fails as the store's OSError, which the pipeline hands
        # to the event loop.
        call(lambda: self.upload.add(pieces))


def copy_if_absent(bucket: Bucket, source: str, target: str, size: int) -> bool:
    """Copy object ``source`` to ``target`` inside the bucket unless ``target`` exists
    (``If-None-Match: *``); False when it did. Blocking."""
    client = bucket.client
    try:
        if size <= MAX_COPY:
            client.copy_object(
                Bucket=bucket.name,
                Key=target,
                CopySource={"Bucket": bucket.name, "Key": source},
                IfNoneMatch="*",
            )
            return True
        upload_id = client.create_multipart_upload(Bucket=bucket.name, Key=target)["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            for number, start in enumerate(range(0, size, COPY_PART), 1):
                end = min(size, start + COPY_PART) - 1
                copied = client.upload_part_copy(
                    Bucket=bucket.name,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": bucket.name, "Key": source},
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            client.complete_multipart_upload(
                Bucket=bucket.name,
                Key=target,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            # A refused completion leaves the upload open (SeaweedFS does): never debris.
            with contextlib.suppress(Exception):
                bucket.abort(target, upload_id)
            raise
        return True
    except ClientError as exc:
        if is_precondition(exc):
            return False
        raise
