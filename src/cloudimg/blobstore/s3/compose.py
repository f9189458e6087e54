"""One object made of others (a resumable session's chunks), with as few bytes moved
through this process as S3's part rules allow.

A multipart upload's parts must be 5 MiB or more, all but the last, and there may be
10,000 of them. A source of 5 MiB or more is copied server-side (``UploadPartCopy``, in
ranges of at most ``COPY_PART``); smaller sources (a client's small PATCH chunks) are
read and gathered into parts of the store's part size, then uploaded. A part is never
left under 5 MiB unless it is the last: a copied range's tail that would be goes into
the gathered bytes instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cloudimg.blobstore.s3.client import Bucket
from cloudimg.blobstore.s3.reader import READ_BLOCK
from cloudimg.blobstore.s3.writer import COPY_PART

if TYPE_CHECKING:
    from types_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["Composer", "pieces"]

MIN_COPY_PART = 5 * 1024 * 1024


def pieces(bucket: Bucket, key: str, start: int, end: int) -> Iterator[bytes]:
    """The bytes ``start`` to ``end`` of an object, streamed in pieces (blocking)."""
    if end <= start:
        return
    got = bucket.client.get_object(Bucket=bucket.name, Key=key, Range=f"bytes={start}-{end - 1}")
    body = got["Body"]
    try:
        while piece := body.read(READ_BLOCK):
            yield piece
    finally:
        body.close()


class Composer:
    """Builds one object from ranges of others: server-side copies of the ranges that
    can be whole parts (5 MiB or more), the small ones read and uploaded again."""

    def __init__(self, bucket: Bucket, key: str, part_size: int) -> None:
        self.bucket = bucket
        self.key = key
        self.part_size = part_size
        self.buffer = bytearray()
        self.parts: list[CompletedPartTypeDef] = []
        self.upload_id = ""

    def build(self, ranges: list[tuple[str, int]]) -> None:
        client = self.bucket.client
        self.upload_id = client.create_multipart_upload(Bucket=self.bucket.name, Key=self.key)[
            "UploadId"
        ]
        try:
            for source, size in ranges:
                self._add(source, 0, size)
            if self.buffer or not self.parts:
                self._send()
            client.complete_multipart_upload(
                Bucket=self.bucket.name,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.bucket.abort(self.key, self.upload_id)
            raise

    def _add(self, source: str, start: int, end: int) -> None:
        while start < end:
            if not self.buffer and end - start >= MIN_COPY_PART:
                # The tail of a copied range must stay a whole part too, or go to the buffer.
                stop = min(end, start + COPY_PART)
                self._copy(source, start, stop)
                start = stop
                continue
            stop = min(end, start + self.part_size - len(self.buffer))
            for piece in pieces(self.bucket, source, start, stop):
                self.buffer += piece
            start = stop
            if len(self.buffer) >= self.part_size:
                self._send()

    def _copy(self, source: str, start: int, stop: int) -> None:
        number = len(self.parts) + 1
        copied = self.bucket.client.upload_part_copy(
            Bucket=self.bucket.name,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket.name, "Key": source},
            CopySourceRange=f"bytes={start}-{stop - 1}",
        )
        self.parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})

    def _send(self) -> None:
        number = len(self.parts) + 1
        sent = self.bucket.client.upload_part(
            Bucket=self.bucket.name,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self.buffer),
        )
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self.buffer.clear()
