"""The blob store on S3-compatible object storage (Ceph RGW, MinIO, SeaweedFS, buckets).

Key layout under the configured bucket and prefix::

    blobs/blake3/<blake3 hex>          blobs, written once
    staging/<32 hex>                   uploads in progress (multipart) or finished
    staging/sessions/<key>/<offset>    a resumable session's chunks (``sessions.py``)
    locks/<key>                        a resumable session's lock
    trash/<blake3 hex>.<16 hex>        blobs whose last reference went
    purged/<blake3 hex>.<16 hex>       a purged trash entry, deleted after reader_grace
    quarantine/<blake3 hex>.<16 hex>   blobs whose bytes failed a check

Only digests (hex, checked) and random names become keys; nothing a user names.

**Staging, then a copy.** The digest is known only at an upload's end, so the bytes
stream into a staging object (``writer.py``: a multipart upload, hashed on the way) and
``place`` copies it server-side to the blob's key (``CopyObject``; ``UploadPartCopy``
parts over 5 GiB) with ``If-None-Match: *``, then deletes the staging object. No byte
crosses the network twice and the blob's key is an ordinary object (a presigned URL,
``aws s3 cp``, replication all see it), but the store writes the bytes a second time:
SeaweedFS copies them (its copy of 256 MiB ran at ~150 MB/s here), stores that copy by
reference (Ceph RGW within a pool) pay less. Measured with ``benchmarks/s3_place.py
--size-mib 256 --rounds 3`` (SeaweedFS 4.48 on loopback, 2 shared cores, medians; two
runs): staging 45.5 and 53.3 MB/s, staging + place 34.8 and 32.6 MB/s, against 38.8
and 44.6 MB/s for boto3's own multipart put of the same bytes (0.90x, 0.73x) and 63.7
and 69.3 MB/s for one plain ``PutObject`` of bytes held in memory. The other way,
recording the staging key in the catalog as an indirection, needs no copy but makes
every download, gc and fsck follow the catalog to find bytes and leaves content
addressing to the catalog; left for later.

**Write-once.** ``place`` asks first (HEAD: a digest already stored costs no copy),
then copies with ``If-None-Match: *``, which S3 (since 2024) and SeaweedFS 4.48
(tested: PutObject, CopyObject and CompleteMultipartUpload answer 412) honour; two
replicas placing the same digest store one object. A store that ignored the condition
would still be safe for the catalog: callers hold the catalog's lock for the digest
when they place, and the HEAD before the copy sees a blob placed under that lock.

**Readers** (``reader.py``) read by key, one open GET for reads that follow each
other. A delete copies the blob to ``trash/`` and deletes its key: the catalog calls
``copy_to_trash`` after its commit, with no lock held, and ``forget`` under the
digest's lock (``trash_copies``; ``move_to_trash`` does both, for quarantine); a purge
writes a ``purged/`` marker and the trashed copy is
deleted only once the marker is older than ``reader_grace`` (by the next
``list_trash``, which gc calls, or a later purge), so a reader that loses its key
finds the bytes in the trashed copy for that long, on any replica.

**Staging in use.** This process's uploads hold a lease on their staging key (gc here
leaves it alone); across replicas, gc goes by age: a finished staging object's time,
or a multipart upload's last part (a live upload adds one every 16 MiB), so gc with
its grace never aborts an upload that is still sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from cloudimg.blobstore.base import PlaceOutcome, StagedBlob, StagingRemoval, StoredFile, Tap
from cloudimg.blobstore.s3 import maintenance
from cloudimg.blobstore.s3.client import (
    Bucket,
    S3Location,
    S3StoreError,
    call,
    client_for,
    code_of,
    is_missing,
)
from cloudimg.blobstore.s3.reader import S3BlobReader
from cloudimg.blobstore.s3.sessions import S3Resumable, SessionArea
from cloudimg.blobstore.s3.writer import (
    PART_SIZE,
    Lease,
    ObjectUpload,
    S3StagingWriter,
    copy_if_absent,
)
from cloudimg.blobstore.staging import StageCosts

__all__ = ["MAX_URL_EXPIRY", "S3BlobStore"]

_DIGEST = re.compile(r"[0-9a-f]{64}")
_TRASH_NAME_DIGEST = maintenance.matching(re.compile(r"([0-9a-f]{64})\.[0-9a-f]+"))
BLOBS = "blobs/blake3/"
STAGING = "staging/"
TRASH = "trash/"
PURGED = "purged/"
QUARANTINE = "quarantine/"
READER_GRACE = 6 * 3600.0
"""Seconds a purged blob's bytes stay readable for the readers still open on them."""
_SWEEP_EVERY = 60.0
MAX_URL_EXPIRY = 7 * 24 * 3600
"""The longest a presigned URL (SigV4 query signing) may live: S3 refuses longer."""


def _digest(blake3_hex: str) -> str:
    if not _DIGEST.fullmatch(blake3_hex):
        raise ValueError("not a blake3 hex digest")
    return blake3_hex


class S3BlobStore:
    """Blobs in an S3 bucket (under a prefix), by blake3 digest."""

    def __init__(
        self,
        location: S3Location,
        *,
        part_size: int = PART_SIZE,
        reader_grace: float = READER_GRACE,
    ) -> None:
        self.location = location
        self.bucket = Bucket(client_for(location), location)
        # Presigned URLs are SigV4 (``X-Amz-Expires`` bounds their life, at most 7 days):
        # botocore presigns with the legacy SigV2 for some endpoints unless told, which
        # newer stores and AWS regions refuse.
        self._presigner = client_for(location, signature_version="s3v4")
        self.part_size = part_size
        self.reader_grace = reader_grace
        self.stage_costs: StageCosts | None = None
        """Told the CPU seconds and bytes of each stage of every staging writer."""
        self._held: set[str] = set()
        """Staging keys this process's uploads hold (``Lease``)."""
        self._last_sweep = 0.0
        self.sessions = SessionArea(self.bucket, self._held, part_size)

    def _key(self, area: str, name: str = "") -> str:
        return self.bucket.key(area + name)

    def _blob_key(self, blake3_hex: str) -> str:
        return self._key(BLOBS, _digest(blake3_hex))

    def _in_area(self, key: str, *areas: str) -> str:
        """``key`` if it lies in one of ``areas`` (and names nothing above it), else
        ValueError: keys come back from callers and must be ours."""
        for area in areas:
            if key.startswith(self._key(area)) and ".." not in key.split("/"):
                return key
        raise ValueError(f"not a key of this store's {'/'.join(a.rstrip('/') for a in areas)}")

    # -- start-up ------------------------------------------------------------------

    @property
    def directories(self) -> tuple[Path, ...]:
        return ()  # nothing local: staging is in the bucket too

    def ensure_layout(self) -> None:
        """Nothing to create: keys need no directories, and the bucket is the operator's
        (``check`` says when it is missing)."""

    async def check(self) -> None:
        """Reach the bucket once (no retries): ``S3StoreError`` with a one-line reason
        when it is missing, the credentials are refused or the endpoint does not answer."""
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        where = f"bucket {self.location.bucket!r} at {self.location.endpoint_url or 'AWS'}"
        quick = client_for(
            dataclasses.replace(
                self.location,
                retries=1,
                connect_timeout=min(self.location.connect_timeout, 3.0),
                read_timeout=min(self.location.read_timeout, 10.0),
            )
        )
        try:
            quick.head_bucket(Bucket=self.location.bucket)
            quick.list_objects_v2(Bucket=self.location.bucket, Prefix=self.bucket.prefix, MaxKeys=1)
        except ClientError as exc:
            code = code_of(exc)
            if code in ("404", "NoSuchBucket"):
                raise S3StoreError(errno.ENOENT, f"no {where}") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise S3StoreError(
                    errno.EACCES, f"{where} refused the credentials ({code})"
                ) from None
            raise S3StoreError(errno.EIO, f"{where} answered {code}") from None
        except BotoCoreError as exc:
            raise S3StoreError(
                errno.EHOSTUNREACH, f"{where} is unreachable ({type(exc).__name__})"
            ) from None
        finally:
            quick.close()

    # -- uploads -------------------------------------------------------------------

    async def open_staging(self, tap: Tap | None = None) -> S3StagingWriter:
        key = self._key(STAGING, secrets.token_hex(16))
        upload = ObjectUpload(self.bucket, key, self.part_size)
        return S3StagingWriter(upload, Lease(self._held, key), tap, costs=self.stage_costs)

    async def lock_resumable(self, key: str) -> S3Resumable:
        return await self.sessions.lock(key, self.stage_costs)

    async def claim_staging(
        self, session: str, blake3_hex: str, sha256_hex: str, size: int
    ) -> StagedBlob | None:
        return await asyncio.to_thread(
            call, lambda: self.sessions.claim(session, blake3_hex, sha256_hex, size)
        )

    async def drop_session(self, session: str) -> None:
        await asyncio.to_thread(call, lambda: self.sessions.drop(session))

    async def open_staged(self, staged: StagedBlob) -> S3BlobReader:
        key = self._in_area(staged.key, STAGING)
        return S3BlobReader(self.bucket, key, staged.size)

    async def stage_link(self, source: Path) -> StagedBlob:
        raise OSError(errno.EXDEV, "an object store cannot link a local file; copy it")

    async def place(self, staged: StagedBlob, *, displace: bool = False) -> PlaceOutcome:
        key = self._in_area(staged.key, STAGING)
        try:
            return await asyncio.to_thread(call, lambda: self._place(key, staged, displace))
        finally:
            if staged.lease is not None:
                with contextlib.suppress(Exception):
                    if await asyncio.to_thread(self.bucket.head, key) is None:
                        staged.lease.release()

    def _place(self, key: str, staged: StagedBlob, displace: bool) -> PlaceOutcome:
        if self.bucket.head(key) is None:
            return "gone"  # placed by an earlier attempt (or discarded): keep what is there
        if displace:
            self._quarantine(staged.blake3, None)
        target = self._blob_key(staged.blake3)
        try:
            placed = self.bucket.head(target) is None and copy_if_absent(
                self.bucket, key, target, staged.size
            )
        except ClientError as exc:
            if is_missing(exc):
                return "gone"  # placed or discarded since the HEAD: as above
            raise
        self._drop_staging(key)
        return "placed" if placed else "present"

    def _drop_staging(self, key: str) -> None:
        for upload_key, upload_id, _started in self.bucket.uploads(key):
            if upload_key == key:
                self.bucket.abort(key, upload_id)
        self.bucket.delete(key)

    async def discard(self, staged: StagedBlob) -> None:
        key = self._in_area(staged.key, STAGING)
        await asyncio.to_thread(call, lambda: self._drop_staging(key))
        if staged.lease is not None:
            staged.lease.release()

    # -- serving -------------------------------------------------------------------

    async def open(self, blake3_hex: str) -> S3BlobReader | None:
        key = self._blob_key(blake3_hex)
        found = await asyncio.to_thread(call, lambda: self.bucket.head(key))
        if found is None:
            return None
        return S3BlobReader(
            self.bucket, key, found.size, lambda: self._relocate(blake3_hex, found.size)
        )

    def _relocate(self, blake3_hex: str, size: int) -> str | None:
        """Where else the bytes of ``blake3_hex`` are: its key again, or a trashed copy."""
        key = self._blob_key(blake3_hex)
        found = self.bucket.head(key)
        if found is not None and found.size == size:
            return key
        for copy in self.bucket.list(self._key(TRASH, blake3_hex + ".")):
            if copy.size == size:
                return copy.key
        return None

    async def size_of(self, blake3_hex: str) -> int | None:
        key = self._blob_key(blake3_hex)
        found = await asyncio.to_thread(call, lambda: self.bucket.head(key))
        return None if found is None else found.size

    async def download_url(self, blake3_hex: str, expires_in: int) -> str | None:
        if not 1 <= expires_in <= MAX_URL_EXPIRY:
            raise ValueError(f"a presigned URL lives 1 to {MAX_URL_EXPIRY} seconds")
        key = self._blob_key(blake3_hex)

        def presign() -> str:
            # Signed locally (no request), but resolving credentials may reach a metadata
            # service or an STS endpoint when they come from a role: hence the thread.
            return self._presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket.name, "Key": key},
                ExpiresIn=expires_in,
                HttpMethod="GET",
            )

        return await asyncio.to_thread(call, presign)

    async def free_space(self) -> int | None:
        return None  # a bucket has no size to tell; a full store answers its own error

    async def probe_writable(self) -> None:
        key = self._key(STAGING, f"probe-{secrets.token_hex(8)}.tmp")

        def probe() -> None:
            self.bucket.client.put_object(Bucket=self.bucket.name, Key=key, Body=b"")
            self.bucket.delete(key)

        await asyncio.to_thread(call, probe)

    # -- trash ---------------------------------------------------------------------

    trash_copies = True
    """A move to trash is a server-side copy (SeaweedFS copies the bytes): the catalog
    drops a blob with ``copy_to_trash`` after its commit and ``forget`` under its lock."""

    async def move_to_trash(self, blake3_hex: str) -> str | None:
        return await asyncio.to_thread(call, lambda: self._move_aside(blake3_hex, TRASH, None))

    async def copy_to_trash(self, blake3_hex: str) -> str | None:
        return await asyncio.to_thread(call, lambda: self._copy_aside(blake3_hex, TRASH, None))

    async def forget(self, blake3_hex: str) -> None:
        key = self._blob_key(blake3_hex)
        await asyncio.to_thread(call, lambda: self.bucket.delete(key))

    def _move_aside(self, blake3_hex: str, area: str, version: int | None) -> str | None:
        target = self._copy_aside(blake3_hex, area, version)
        if target is not None:
            self.bucket.delete(self._blob_key(blake3_hex))
        return target

    def _copy_aside(self, blake3_hex: str, area: str, version: int | None) -> str | None:
        source = self._blob_key(blake3_hex)
        found = self.bucket.head(source)
        if found is None or (version is not None and found.version != version):
            return None
        target = self._key(area, f"{blake3_hex}.{secrets.token_hex(8)}")
        try:
            copy_if_absent(self.bucket, source, target, found.size)
        except ClientError as exc:
            if is_missing(exc):
                return None  # moved by someone else meanwhile
            raise
        return target

    async def list_trash(self) -> list[StoredFile]:
        return await asyncio.to_thread(call, self._list_trash)

    def _list_trash(self) -> list[StoredFile]:
        purged = self._sweep()
        listed = maintenance.list_area(self.bucket, self._key(TRASH), _TRASH_NAME_DIGEST)
        return [entry for entry in listed if entry.name not in purged]

    def _sweep(self) -> set[str]:
        """Delete the purged copies older than ``reader_grace``; the names still waiting."""
        now = time.time()
        self._last_sweep = now
        waiting: set[str] = set()
        for marker in self.bucket.list(self._key(PURGED)):
            name = marker.key.removeprefix(self._key(PURGED))
            if marker.mtime < now - self.reader_grace:
                self.bucket.delete(self._key(TRASH, name))
                self.bucket.delete(marker.key)
            else:
                waiting.add(name)
        return waiting

    async def restore_from_trash(self, key: str, blake3_hex: str) -> bool:
        key = self._in_area(key, TRASH, QUARANTINE)
        return await asyncio.to_thread(call, lambda: self._restore(key, blake3_hex))

    def _restore(self, key: str, blake3_hex: str) -> bool:
        name = key.rsplit("/", 1)[-1]
        if self.bucket.head(self._key(PURGED, name)) is not None:
            return False  # purged: readers may still use it, the blob may not
        found = self.bucket.head(key)
        if found is None:
            return False  # restored (or purged) by someone else meanwhile
        try:
            restored = copy_if_absent(self.bucket, key, self._blob_key(blake3_hex), found.size)
        except ClientError as exc:
            if is_missing(exc):
                return False
            raise
        self.bucket.delete(key)
        return restored

    async def purge(self, key: str) -> None:
        key = self._in_area(key, TRASH)
        name = key.rsplit("/", 1)[-1]

        def purge() -> None:
            marker = self._key(PURGED, name)
            self.bucket.client.put_object(Bucket=self.bucket.name, Key=marker, Body=b"")
            if time.time() - self._last_sweep > _SWEEP_EVERY:
                self._sweep()

        await asyncio.to_thread(call, purge)

    # -- maintenance (listings, stale staging, checksums: maintenance.py) -----------

    async def list_blobs(self) -> list[StoredFile]:
        top = self._key(BLOBS)

        def listing() -> list[StoredFile]:
            # Everything under blobs/, so that a stray object there is reported too.
            found = maintenance.list_area(self.bucket, self._key("blobs/"), _blob_digest)
            return [
                dataclasses.replace(entry, name=entry.key.removeprefix(top))
                if entry.digest
                else entry
                for entry in found
            ]

        return await asyncio.to_thread(call, listing)

    async def list_staging(self) -> list[StoredFile]:
        top = self._key(STAGING)
        return await asyncio.to_thread(call, lambda: maintenance.list_staging(self.bucket, top))

    async def staged_sessions(self) -> set[str]:
        entries = await self.list_staging()
        return {
            session
            for entry in entries
            if (session := self.sessions.session_of(entry.name)) is not None
        }

    async def remove_stale_staging(
        self, key: str, cutoff: float, *, dry_run: bool = False
    ) -> StagingRemoval:
        key = self._in_area(key, STAGING)
        if key in self._held:
            return "in-use"
        return await asyncio.to_thread(call, lambda: self._remove_stale(key, cutoff, dry_run))

    def _remove_stale(self, key: str, cutoff: float, dry_run: bool) -> StagingRemoval:
        session = self.sessions.session_of(key.removeprefix(self._key(STAGING)))
        if session is not None and self.sessions.is_locked(session):
            return "in-use"  # a request on some replica writes the session now
        return maintenance.remove_stale(self.bucket, key, cutoff, dry_run)

    async def checksum(
        self, blake3_hex: str, on_bytes: Callable[[int], None] | None = None
    ) -> tuple[str, int] | None:
        key = self._blob_key(blake3_hex)
        return await asyncio.to_thread(
            call, lambda: maintenance.checksum(self.bucket, key, on_bytes)
        )

    async def quarantine(self, blake3_hex: str, version: int | None = None) -> str | None:
        return await asyncio.to_thread(call, lambda: self._quarantine(blake3_hex, version))

    def _quarantine(self, blake3_hex: str, version: int | None) -> str | None:
        return self._move_aside(blake3_hex, QUARANTINE, version)


def _blob_digest(name: str) -> str | None:
    """The digest a name under ``blobs/`` gives (``blake3/<hex>``), else None."""
    digest = name.removeprefix("blake3/")
    return digest if digest != name and _DIGEST.fullmatch(digest) else None
