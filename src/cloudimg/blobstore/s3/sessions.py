"""Resumable staging on object storage: a session's bytes as chunk objects.

On S3 the parts of a multipart upload cannot be read back before it completes, a hash
state cannot be saved, and parts need 5 MiB (but the last) while a client's PATCH
chunks may be any size. So each stretch a request writes (from ``resume`` to
``pause``) is an object of its own, ``staging/sessions/<key>/<offset>``, the offset
in 20 digits so that a listing gives the chunks in order:

- the session's length is the end of its contiguous chunks;
- ``resume(offset)`` deletes chunks past ``offset`` (bytes no request recorded) and
  rewrites one that straddles it with its first bytes; the hashes go on from the state
  this process paused at that length, or are computed again by reading the chunks
  (another replica, a restart): the running hashes come from the bytes themselves;
- ``finish`` (and ``claim_staging``) composes the chunks into one object,
  ``staging/sessions/<key>/blob``, which ``place`` copies like any staged upload: a
  chunk of 5 MiB or more is copied server-side (``UploadPartCopy``), smaller ones are
  read and uploaded again in parts of the store's part size. A session of one chunk
  is not composed at all.

**The lock** is an object, ``locks/<key>`` (``session_lock.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import blake3

from cloudimg.blobstore.base import StagedBlob
from cloudimg.blobstore.s3.client import Bucket, ObjectInfo, call
from cloudimg.blobstore.s3.compose import Composer, pieces
from cloudimg.blobstore.s3.session_lock import LOCK_TTL, SessionLocks
from cloudimg.blobstore.s3.writer import (
    Lease,
    ObjectUpload,
    S3StagingWriter,
)
from cloudimg.blobstore.staging import StageCosts, _HashState

__all__ = ["LOCK_TTL", "SESSIONS", "S3Resumable", "SessionArea"]

SESSIONS = "staging/sessions/"
LOCKS = "locks/"
_RENEW_AFTER = LOCK_TTL / 3
"""A writer renews its lock this long after it took or last renewed it."""
_SESSION = re.compile(r"[0-9a-f]{32}")
_CHUNK = re.compile(r"[0-9]{20}")
_COMPOSED = "blob"
_LOCK_POLL = 0.05


@dataclass(frozen=True, slots=True)
class _Chunk:
    start: int
    info: ObjectInfo

    @property
    def end(self) -> int:
        return self.start + self.info.size


class SessionArea:
    """The resumable sessions of one store: their chunks, composition and locks."""

    def __init__(self, bucket: Bucket, held: set[str], part_size: int) -> None:
        self.bucket = bucket
        self.held = held
        self.part_size = part_size
        self.locks = SessionLocks(bucket)
        self.paused: dict[str, _HashState] = {}
        """Hash states of sessions this process paused: resumed here at that length,
        a session goes on without reading its bytes again."""

    # -- keys ------------------------------------------------------------------------

    def prefix(self, session: str) -> str:
        if not _SESSION.fullmatch(session):
            raise ValueError("not a session id")
        return self.bucket.key(f"{SESSIONS}{session}/")

    def chunk_key(self, session: str, start: int) -> str:
        return f"{self.prefix(session)}{start:020d}"

    def composed_key(self, session: str) -> str:
        return self.prefix(session) + _COMPOSED

    def lock_key(self, session: str) -> str:
        self.prefix(session)
        return self.bucket.key(LOCKS + session)

    @staticmethod
    def session_of(name: str) -> str | None:
        """The session a staging entry (its name under ``staging/``) belongs to."""
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "sessions" and _SESSION.fullmatch(parts[1]):
            return parts[1]
        return None

    def chunks(self, session: str) -> list[_Chunk]:
        """The session's contiguous chunks from offset 0, in order (blocking)."""
        found = []
        prefix = self.prefix(session)
        for item in self.bucket.list(prefix):
            name = item.key.removeprefix(prefix)
            if _CHUNK.fullmatch(name):
                found.append(_Chunk(int(name), item))
        contiguous: list[_Chunk] = []
        for chunk in found:
            if chunk.start != (contiguous[-1].end if contiguous else 0):
                break
            contiguous.append(chunk)
        return contiguous

    # -- the lock ----------------------------------------------------------------------

    async def lock(self, session: str, costs: StageCosts | None) -> S3Resumable:
        key = self.lock_key(session)
        owner = secrets.token_hex(16)
        # Polled: the holder may be another replica, which can tell us nothing.
        etag = await asyncio.to_thread(call, lambda: self.locks.try_lock(key, owner))
        while etag is None:
            await asyncio.sleep(_LOCK_POLL)
            etag = await asyncio.to_thread(call, lambda: self.locks.try_lock(key, owner))
        try:
            chunks = await asyncio.to_thread(call, lambda: self.chunks(session))
        except BaseException:
            self.locks.unlock(key, etag)
            raise
        length = chunks[-1].end if chunks else 0
        return S3Resumable(self, session, key, (owner, etag), length, costs)

    def is_locked(self, session: str) -> bool:
        """Whether a request holds the session's lock now (blocking)."""
        return self.locks.is_locked(self.lock_key(session))

    # -- bytes ---------------------------------------------------------------------------

    def rehash(self, session: str, offset: int) -> _HashState:
        """Hashes of the session's first ``offset`` bytes, read from its chunks (blocking)."""
        state = _HashState(0, blake3.blake3(max_threads=blake3.blake3.AUTO), hashlib.sha256())
        for chunk in self.chunks(session):
            if chunk.start >= offset:
                break
            for piece in self._read(chunk.info.key, 0, min(chunk.end, offset) - chunk.start):
                state.blake3.update(piece)
                state.sha256.update(piece)
                state.size += len(piece)
        if state.size != offset:
            raise OSError("a resumed session's chunks are shorter than recorded")
        return state

    def _read(self, key: str, start: int, end: int) -> Iterator[bytes]:
        return pieces(self.bucket, key, start, end)

    def cut(self, session: str, offset: int) -> None:
        """Drop the session's bytes past ``offset`` (blocking)."""
        for chunk in self.chunks(session):
            if chunk.start >= offset:
                self.bucket.delete(chunk.info.key)
            elif chunk.end > offset:  # rewrite it with its first bytes
                upload = ObjectUpload(self.bucket, chunk.info.key, self.part_size)
                try:
                    for piece in self._read(chunk.info.key, 0, offset - chunk.start):
                        upload.add([piece])
                    upload.complete()
                except BaseException:
                    upload.abort()
                    raise
        prefix = self.prefix(session)
        for item in self.bucket.list(prefix):  # chunks past a gap, a stale composition
            name = item.key.removeprefix(prefix)
            if not _CHUNK.fullmatch(name) or int(name) >= offset:
                self.bucket.delete(item.key)

    def compose(self, session: str, size: int) -> str | None:
        """One object of the session's bytes (its chunks, ``size`` in all): its key, or
        None when the chunks do not add up to ``size`` (blocking)."""
        composed = self.bucket.head(self.composed_key(session))
        if composed is not None:
            return composed.key if composed.size == size else None
        chunks = [chunk for chunk in self.chunks(session) if chunk.info.size]
        if (chunks[-1].end if chunks else 0) != size:
            return None
        if len(chunks) == 1:
            return chunks[0].info.key
        key = self.composed_key(session)
        Composer(self.bucket, key, self.part_size).build(
            [(chunk.info.key, chunk.info.size) for chunk in chunks]
        )
        for chunk in self.chunks(session):
            self.bucket.delete(chunk.info.key)
        return key

    def claim(self, session: str, blake3_hex: str, sha256_hex: str, size: int) -> StagedBlob | None:
        key = self.compose(session, size)
        if key is None:
            return None
        return StagedBlob(blake3_hex, sha256_hex, size, key, Lease(self.held, key))

    def drop(self, session: str) -> None:
        self.paused.pop(session, None)
        for item in self.bucket.list(self.prefix(session)):
            for upload_key, upload_id, _started in self.bucket.uploads(item.key):
                if upload_key == item.key:
                    self.bucket.abort(item.key, upload_id)
            self.bucket.delete(item.key)
        for upload_key, upload_id, _started in self.bucket.uploads(self.prefix(session)):
            self.bucket.abort(upload_key, upload_id)


class S3Resumable:
    """A resumable session, locked by this request until :meth:`release`."""

    def __init__(
        self,
        area: SessionArea,
        session: str,
        lock_key: str,
        held: tuple[str, str],
        length: int,
        costs: StageCosts | None,
    ) -> None:
        self._area = area
        self._session = session
        self._lock_key = lock_key
        self._owner, etag = held
        self._etag: str | None = etag
        self._renewed = time.monotonic()
        self._costs = costs
        self._writer: S3StagingWriter | None = None
        self._state: _HashState | None = None
        self.length = length
        """The session's length when it was locked."""

    async def resume(self, offset: int) -> S3StagingWriter:
        area, session = self._area, self._session
        if offset > self.length:
            raise ValueError("resumed past the session's length")
        try:
            state = area.paused.pop(session, None)
            if state is None or state.size != offset:
                state = await asyncio.to_thread(call, lambda: area.rehash(session, offset))
            await asyncio.to_thread(call, lambda: area.cut(session, offset))
        except BaseException:
            self._unlock()
            raise
        key = area.chunk_key(session, offset)
        upload = ObjectUpload(area.bucket, key, area.part_size, on_part=self._renew)
        self._writer = S3StagingWriter(
            upload,
            Lease(area.held, key),
            None,
            state,
            self._costs,
            on_finish=self._finished,
        )
        return self._writer

    def _finished(self, writer: S3StagingWriter) -> StagedBlob:
        """The whole session as one staged object (blocking; the lock goes with it)."""
        blake3_hex, sha256_hex, size = writer.digests()
        key = call(lambda: self._area.compose(self._session, size))
        if key is None:
            raise OSError("a finished session's chunks do not add up to its length")
        writer.lease.release()
        return StagedBlob(
            blake3_hex, sha256_hex, size, key, _SessionLease(self._area.held, key, self._unlock)
        )

    async def pause(self) -> int:
        assert self._writer is not None, "resumed first"
        self._state = await self._writer.sync()
        return self._state.size

    def release(self, *, keep: bool = False) -> None:
        if self._writer is not None:
            if keep and self._state is not None:
                self._area.paused[self._session] = self._state
            self._writer.release()
        self._unlock()

    def _renew(self) -> None:
        """On the write stage's thread, after each part: keep the lock while writing."""
        etag = self._etag
        if etag is None or time.monotonic() - self._renewed < _RENEW_AFTER:
            return
        self._etag = self._area.locks.renew(self._lock_key, etag, self._owner)
        self._renewed = time.monotonic()

    def _unlock(self) -> None:
        etag, self._etag = self._etag, None
        if etag is not None:
            self._area.locks.unlock(self._lock_key, etag)


class _SessionLease(Lease):
    """A staging key's lease that also lets the session's lock go."""

    __slots__ = ("_then",)

    def __init__(self, held: set[str], key: str, then: Callable[[], None]) -> None:
        super().__init__(held, key)
        self._then: Callable[[], None] | None = then

    def release(self) -> None:
        super().release()
        then, self._then = self._then, None
        if then is not None:
            then()
