"""What only maintenance asks of the S3 blob store: listings, stale staging, checksums.

Blocking functions over a ``Bucket``, run on a thread by ``S3BlobStore`` for
``MaintenanceBlobStore`` (gc, fsck); the upload and download paths never come here.
Listings are paginated (1,000 keys a request), so they cost one request per thousand
objects, plus one ``ListParts`` per multipart upload left open in staging.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import blake3
from botocore.exceptions import ClientError

from cloudimg.blobstore.base import StagingRemoval, StoredFile
from cloudimg.blobstore.s3.client import Bucket, ObjectInfo, is_missing
from cloudimg.blobstore.s3.reader import READ_BLOCK

__all__ = ["checksum", "list_area", "list_staging", "remove_stale"]


def list_area(
    bucket: Bucket, top: str, name_digest: Callable[[str], str | None]
) -> list[StoredFile]:
    """Every object under ``top``; ``name_digest`` gives the digest a name carries."""
    found = []
    for item in bucket.list(top):
        name = item.key.removeprefix(top)
        found.append(
            StoredFile(item.key, name, item.size, item.mtime, item.version, name_digest(name))
        )
    return found


def matching(pattern: re.Pattern[str]) -> Callable[[str], str | None]:
    """The first group of ``pattern`` when a name matches it, else None."""

    def digest(name: str) -> str | None:
        match = pattern.fullmatch(name)
        return match.group(1) if match else None

    return digest


def list_staging(bucket: Bucket, top: str) -> list[StoredFile]:
    """Staged objects and the multipart uploads still open under ``top`` (an upload's
    time is its last part's, so a live upload looks young)."""
    entries = list_area(bucket, top, lambda _name: None)
    stored = {entry.key for entry in entries}
    for key, upload_id, started in bucket.uploads(top):
        if key not in stored:
            stored.add(key)
            mtime = bucket.last_activity(key, upload_id, started)
            entries.append(StoredFile(key, key.removeprefix(top), 0, mtime, 0, None))
    return sorted(entries, key=lambda entry: entry.key)


def remove_stale(bucket: Bucket, key: str, cutoff: float, dry_run: bool) -> StagingRemoval:
    """Remove staged ``key`` (the object and any multipart upload open at it) unless
    it changed after ``cutoff``."""
    found = bucket.head(key)
    uploads = [
        (upload_id, started)
        for upload_key, upload_id, started in bucket.uploads(key)
        if upload_key == key
    ]
    if found is None and not uploads:
        return "gone"
    times = [found.mtime] if found is not None else []
    times += [bucket.last_activity(key, upload_id, started) for upload_id, started in uploads]
    if max(times) > cutoff:
        return "young"
    if not dry_run:
        for upload_id, _started in uploads:
            bucket.abort(key, upload_id)
        if found is not None:
            bucket.delete(key)
    return "removed"


def checksum(
    bucket: Bucket, key: str, on_bytes: Callable[[int], None] | None
) -> tuple[str, int] | None:
    """blake3 hex of object ``key``, streamed (never held whole), and its version."""
    try:
        got = bucket.client.get_object(Bucket=bucket.name, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    info = ObjectInfo(key, got["ContentLength"], got["LastModified"].timestamp(), got["ETag"])
    digest = blake3.blake3(max_threads=blake3.blake3.AUTO)
    body = got["Body"]
    try:
        while piece := body.read(READ_BLOCK):
            digest.update(piece)
            if on_bytes is not None:
                on_bytes(len(piece))
    finally:
        body.close()
    return digest.hexdigest(), info.version
