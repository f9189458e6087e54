"""Where the S3 store's objects live, the client that reaches them, and its errors.

The client is boto3's (botocore underneath), called on threads: the AWS SDK that every
S3-compatible store (Ceph RGW, MinIO, SeaweedFS) tests against, kept by AWS, with typed
stubs (``types-boto3[s3]``). Its calls block, and that fits this store: the staging
writer already runs its work on threads of its own (``cloudimg.blobstore.staging``),
so a part's upload is one more blocking step on the write stage's thread, and a
reader's ranged GET runs where a file read would, on the download's thread pool.
aiobotocore would put the calls on the event loop instead, with a second HTTP stack
(aiohttp) and a library that pins botocore to exact versions.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cloudimg.blobstore.base import BlobStoreUnavailableError
from cloudimg.errors import InsufficientStorageError

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

__all__ = [
    "MISSING_CODES",
    "STORE_ERRORS",
    "Bucket",
    "ObjectInfo",
    "S3Location",
    "S3StoreError",
    "call",
    "client_for",
    "code_of",
    "translated",
]

T = TypeVar("T")

MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
"""What S3 answers for a key (or a multipart upload) that does not exist."""
_PRECONDITION_CODES = frozenset({"412", "PreconditionFailed", "ConditionalRequestConflict"})
_DENIED_CODES = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
)
_FULL_CODES = frozenset({"507", "InsufficientStorage", "QuotaExceeded", "XMinioStorageFull"})
STORE_ERRORS: tuple[type[Exception], ...] = (
    ClientError,
    BotoCoreError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
)
"""What a call to the object store, or a read of a streamed body, raises besides an
``OSError``: botocore's errors, and urllib3's and http.client's from a body that breaks
mid-way (botocore wraps only a read timeout and a protocol error of a body; a decode or
SSL error, or an ``IncompleteRead``, come through as they are). ``translated`` turns
each into what callers expect."""


class S3StoreError(BlobStoreUnavailableError):
    """The object store cannot be used as configured (bucket, credentials, endpoint)."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """The bucket (and prefix in it) that holds a store's objects, and how to reach it."""

    bucket: str
    prefix: str = ""
    """Prepended to every key, e.g. ``cloudimg/``; empty: the bucket's top."""
    endpoint_url: str | None = None
    """None: AWS's own endpoint for the region."""
    region: str | None = None
    path_style: bool = False
    """Address buckets as ``endpoint/bucket`` (most self-hosted stores) rather than
    ``bucket.endpoint``."""
    access_key: str | None = None
    """None: boto3's usual chain (``AWS_*`` variables, shared files, a role)."""
    secret_key: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    retries: int = 5
    """Attempts per call with botocore's backoff (its "standard" mode)."""

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return (
            f"S3Location(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )


def client_for(location: S3Location, *, signature_version: str | None = None) -> S3Client:
    """A thread-safe client for ``location`` (one per store, shared by its threads);
    ``signature_version`` (``s3v4``) for one that presigns URLs."""
    config = Config(
        signature_version=signature_version,
        connect_timeout=location.connect_timeout,
        read_timeout=location.read_timeout,
        retries={"max_attempts": location.retries, "mode": "standard"},
        s3={"addressing_style": "path" if location.path_style else "auto"},
        # A part is hashed by the store's own pipeline already; the SDK's extra CRC of
        # every body (its default since 2025) costs CPU and some stores refuse it.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=64,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=location.endpoint_url,
        region_name=location.region or "us-east-1",
        aws_access_key_id=location.access_key,
        aws_secret_access_key=location.secret_key,
        config=config,
    )


def code_of(exc: ClientError) -> str:
    error: Any = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    return code or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def is_missing(exc: ClientError) -> bool:
    return code_of(exc) in MISSING_CODES


def is_precondition(exc: ClientError) -> bool:
    return code_of(exc) in _PRECONDITION_CODES


def translated(exc: BaseException) -> BaseException:
    """What callers expect instead of a botocore error: ``InsufficientStorageError`` when
    the store says it is full, else a ``BlobStoreUnavailableError`` (an ``OSError``; the
    faces answer it 503 with ``Retry-After``) with a one-line reason. botocore has retried
    by then (``S3Location.retries``)."""
    if isinstance(exc, ClientError):
        code = code_of(exc)
        if code in _FULL_CODES:
            return InsufficientStorageError("the object store is full")
        if code in _DENIED_CODES:
            return S3StoreError(errno.EACCES, f"the object store refused the credentials ({code})")
        if code == "NoSuchBucket":
            return S3StoreError(errno.ENOENT, "the object store has no such bucket")
        return BlobStoreUnavailableError(errno.EIO, f"the object store answered {code}")
    if isinstance(exc, BotoCoreError):
        return BlobStoreUnavailableError(
            errno.EIO, f"the object store is unreachable ({type(exc).__name__})"
        )
    if isinstance(exc, urllib3.exceptions.HTTPError | http.client.HTTPException):
        return BlobStoreUnavailableError(
            errno.EIO, f"the object store broke off a response ({type(exc).__name__})"
        )
    return exc


def call(work: Callable[[], T]) -> T:
    """Run ``work`` (blocking S3 calls), botocore's errors translated for callers."""
    try:
        return work()
    except STORE_ERRORS as exc:
        raise translated(exc) from exc


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a listing or a HEAD tells of one object."""

    key: str
    size: int
    mtime: float
    etag: str

    @property
    def version(self) -> int:
        """Tells this copy from one stored later under the same key: its ETag and its
        second of writing (a listing and a HEAD agree on both; a HEAD has no finer time)."""
        return int(hashlib.sha256(f"{self.etag}:{int(self.mtime)}".encode()).hexdigest()[:15], 16)


class Bucket:
    """A bucket and prefix, with the blocking calls the store makes (on threads)."""

    def __init__(self, client: S3Client, location: S3Location) -> None:
        self.client = client
        self.name = location.bucket
        self.prefix = location.prefix

    def key(self, name: str) -> str:
        return self.prefix + name

    def head(self, key: str) -> ObjectInfo | None:
        try:
            found = self.client.head_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return ObjectInfo(
            key, found["ContentLength"], found["LastModified"].timestamp(), found["ETag"]
        )

    def delete(self, key: str) -> None:
        """Delete ``key``; already gone is fine (S3 answers a delete of nothing with 204)."""
        self.client.delete_object(Bucket=self.name, Key=key)

    def list(self, under: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``under``, in key order, page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.name, Prefix=under)
        for page in pages:
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    item["Key"], item["Size"], item["LastModified"].timestamp(), item["ETag"]
                )

    def uploads(self, under: str) -> Iterator[tuple[str, str, float]]:
        """Multipart uploads not completed nor aborted under ``under``: key, id, start."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.name, Prefix=under
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"], upload["Initiated"].timestamp()

    def last_activity(self, key: str, upload_id: str, started: float) -> float:
        """When a multipart upload last got a part (a live upload adds one every part
        size), or started when it has none: its age for gc."""
        latest = started
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.name, Key=key, UploadId=upload_id
            )
            for page in pages:
                for part in page.get("Parts", []):
                    latest = max(latest, part["LastModified"].timestamp())
        except ClientError as exc:
            if not is_missing(exc):
                raise
        return latest

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if not is_missing(exc):
                raise
