"""The life of an OCI blob upload session, as plain async code over the blob store and
the OCI store (no HTTP here: ``cloudimg.oci.http.uploads`` translates).

A blob upload is a session (``POST``, ``PATCH`` chunks at their offsets, ``PUT`` with
the digest; ``GET`` says the offset, ``DELETE`` cancels): the OCI store records each
session and its durable length, the bytes grow in a resumable staging file of the blob
store (``cloudimg.blobstore.resumable``), so a push resumes after a restart and on
another replica. Every step of a session happens under that file's lock: the lock is
taken first, then the store says where the session stands, so it cannot move
meanwhile. A finished upload has its sha256 verified against the digest the client
stated and waits, unseen by ``/reg``, until a manifest takes it; ``cloudimg gc``
removes sessions (finished or not) left alone longer than its grace.

A session of a repository under a byte quota (:mod:`cloudimg.core.quotas`) is checked
against what the quota leaves as it grows: a chunk whose announced length would take
the session past it is refused unread, one that is not announced is stopped once its
bytes do (403 ``DENIED``; the session stays as it was). A session's bytes are staged,
not yet the repository's: the manifest ``PUT`` that names them is checked again, in the
catalog's transaction, with what the repository holds then.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

from cloudimg.blobstore import BlobStore, ResumableStaging, StagingWriter
from cloudimg.core.quotas import QuotaGate, Room
from cloudimg.errors import QuotaExceededError
from cloudimg.oci.errors import OciError, parse_oci_digest
from cloudimg.oci.store import OciStore, UploadSession

__all__ = ["ChunkRange", "UploadSessions", "upload_location"]

ChunkRange = tuple[int, int]
"""The bytes a chunk says it holds (``Content-Range: <first>-<last>``, inclusive)."""


def upload_location(repo: str, image: str, session: str) -> str:
    return f"/v2/{repo}/{image}/blobs/uploads/{session}"


def _unknown_upload(session: str) -> OciError:
    return OciError(404, "BLOB_UPLOAD_UNKNOWN", "no such upload session", {"session": session[:64]})


class _RangeOverrun(Exception):
    """A chunk's body turned out longer (or shorter) than its ``Content-Range``."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received
        """The bytes of the body received when it was found out."""


class _Chunk:
    """One request's bytes appended to a session: the file's lock and its writer."""

    def __init__(self, found: UploadSession, lock: ResumableStaging, writer: StagingWriter):
        self.found = found
        self.lock = lock
        self.writer = writer
        self.offset = writer.size
        """Where the session stood when the chunk came."""


class UploadSessions:
    """The steps of a session shared by PATCH, PUT and the monolithic POST.

    A refusal is an :class:`OciError`; a 416 leaves the rest of the chunk's body unread
    (the caller reads it, so the client sees the answer).
    """

    def __init__(
        self,
        store: OciStore,
        blobs: BlobStore,
        max_image_size: int | None,
        quotas: QuotaGate | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.max_image_size = max_image_size
        self.quotas = quotas

    async def start(self, repo: str, image: str) -> str:
        """A new session of ``repo/image``; its id."""
        session = secrets.token_hex(16)
        await self.store.create_upload(session, repo, image)
        return session

    async def session(self, repo: str, image: str, session: str) -> UploadSession:
        """The open session ``session`` of ``repo/image`` (else ``BLOB_UPLOAD_UNKNOWN``)."""
        found = await self.store.get_upload(session) if len(session) == 32 else None
        if found is None or (found.repo, found.image) != (repo, image) or found.finished:
            raise _unknown_upload(session)
        return found

    async def chunk(
        self,
        found: UploadSession,
        body: AsyncIterator[bytes],
        declared: int | None,
        content_range: ChunkRange | None,
    ) -> int:
        """Append a chunk and record it (``PATCH``); the session's durable length."""
        chunk = await self._append(found, body, declared, content_range)
        kept = False
        try:
            size = await chunk.lock.pause()
            kept = await self.store.advance_upload(found.id, chunk.offset, size)
        finally:
            chunk.lock.release(keep=kept)
        if not kept:
            raise _unknown_upload(found.id)
        return size

    async def complete(
        self,
        found: UploadSession,
        body: AsyncIterator[bytes],
        declared: int | None,
        content_range: ChunkRange | None,
        digest: str,
    ) -> None:
        """Append the last chunk (maybe empty), verify the whole upload against
        ``digest`` and mark the session finished (``PUT``, a monolithic ``POST``)."""
        chunk = await self._append(found, body, declared, content_range)
        try:
            expected = parse_oci_digest(digest)
        except OciError:
            await _let_go(chunk.lock, keep=False)
            raise
        staged = await chunk.writer.finish()
        try:
            if staged.sha256 != expected:
                await self.store.drop_upload(found.id)
                raise OciError(
                    400,
                    "DIGEST_INVALID",
                    "the uploaded bytes do not match the digest",
                    {"expected": f"sha256:{expected}", "actual": f"sha256:{staged.sha256}"},
                )
            finished = await self.store.finish_upload(
                found.id, chunk.offset, staged.blake3, staged.sha256, staged.size
            )
            if not finished:
                raise _unknown_upload(found.id)
        except BaseException:
            await self.blobs.discard(staged)
            raise
        if staged.lease is not None:
            staged.lease.release()  # kept in staging for the manifest that takes it

    async def cancel(self, found: UploadSession) -> None:
        """Drop the session and its bytes (``DELETE``)."""
        await self.store.drop_upload(found.id)
        await self.blobs.drop_session(found.id)

    async def drop_finished(self, repo: str, image: str, sha256_hex: str) -> int:
        """Drop the finished uploads of these bytes to ``repo/image`` that no manifest
        took, with their bytes; how many there were."""
        sessions = await self.store.finished_uploads_of(repo, image, sha256_hex)
        for session in sessions:
            await self.store.drop_upload(session)
            await self.blobs.drop_session(session)
        return len(sessions)

    async def mountable(self, sha256_hex: str, source: str | None) -> bool:
        """Whether the registry holds these bytes already (every writer may read every image)."""
        del source  # a blob is mountable from anywhere: names do not own bytes here
        if await self.store.finished_upload(sha256_hex) is not None:
            return True
        return await self.store.sha256_stored(sha256_hex) is not None

    async def _resume(self, found: UploadSession) -> _Chunk:
        """Lock the session's file, ask the store where it stands, resume it there."""
        lock = await self.blobs.lock_resumable(found.id)
        try:
            now = await self.store.get_upload(found.id)
        except BaseException:
            lock.release()
            raise
        recorded = None if now is None or now.finished else now.size
        if recorded is None or lock.length < recorded:  # over, or gc took its bytes
            lock.release()
            await self.store.drop_upload(found.id)
            raise _unknown_upload(found.id)
        return _Chunk(found, lock, await lock.resume(recorded))

    async def _append(
        self,
        found: UploadSession,
        body: AsyncIterator[bytes],
        declared: int | None,
        content_range: ChunkRange | None,
    ) -> _Chunk:
        """Resume the session's file, check the chunk's range, stream the body in; the
        file is returned locked, its new bytes not yet durable.

        A chunk that does not start where the session stands, or whose body is not as
        long as its ``Content-Range`` says, is refused with 416 and leaves the session
        as it was.
        """
        free = await self.blobs.free_space()
        if declared is not None and free is not None and declared > free:
            raise OciError(507, "SIZE_INVALID", "the data volume has no room for this chunk")
        room = None if self.quotas is None else await self.quotas.room(found.repo)
        if room is not None and declared is not None:
            _admit(room, found.size + declared)
        chunk = await self._resume(found)
        try:
            expected = None
            if content_range is not None:
                expected = self._check_range(chunk, content_range, declared)
        except OciError:
            await _let_go(chunk.lock, keep=True)  # nothing written: the hash state stands
            raise
        try:
            await self._stream(chunk, body, expected, room)
        except _RangeOverrun as exc:
            # Bytes past the recorded offset are cut off by the next resume.
            await _let_go(chunk.lock, keep=False)
            assert content_range is not None
            raise self._range_refused(
                chunk,
                "the chunk's body is not the bytes its Content-Range names",
                {"range": "-".join(map(str, content_range)), "received": exc.received},
            ) from None
        except BaseException:
            # Bytes past the recorded offset are cut off by the next resume.
            await _let_go(chunk.lock, keep=False)
            raise
        return chunk

    def _check_range(self, chunk: _Chunk, content_range: ChunkRange, declared: int | None) -> int:
        """The length a chunk's ``Content-Range`` gives it, once it starts where the
        session stands and has a body that long."""
        first, last = content_range
        expected = last - first + 1
        if first != chunk.offset:
            raise self._range_refused(
                chunk,
                "the chunk does not start where the upload stands",
                {"offset": chunk.offset, "start": first},
            )
        if expected < 1 or (declared is not None and declared != expected):
            raise self._range_refused(
                chunk,
                "the chunk's body is not the bytes its Content-Range names",
                {"range": f"{first}-{last}", "length": declared},
            )
        return expected

    async def _stream(
        self, chunk: _Chunk, body: AsyncIterator[bytes], expected: int | None, room: Room | None
    ) -> None:
        writer, offset, limit = chunk.writer, chunk.offset, self.max_image_size
        async for piece in body:
            if expected is not None and writer.size - offset + len(piece) > expected:
                raise _RangeOverrun(writer.size - offset + len(piece))
            if limit is not None and writer.size + len(piece) > limit:
                raise OciError(
                    413, "SIZE_INVALID", f"the blob is larger than the limit of {limit} bytes"
                )
            if room is not None:
                _admit(room, writer.size + len(piece))
            await writer.write(piece)
        if expected is not None and writer.size - offset != expected:
            raise _RangeOverrun(writer.size - offset)

    @staticmethod
    def _range_refused(chunk: _Chunk, message: str, detail: dict[str, Any]) -> OciError:
        """416 with where the upload stands (the caller reads the rest of the chunk)."""
        found, offset = chunk.found, chunk.offset
        return OciError(
            416,
            "BLOB_UPLOAD_INVALID",
            message,
            detail,
            {
                "Range": f"0-{max(offset - 1, 0)}",
                "Location": upload_location(found.repo, found.image, found.id),
            },
        )


def _admit(room: Room, size: int) -> None:
    """Refuse a session that would hold more than the repository's quota leaves, as the
    spec's ``DENIED`` (the handlers read the rest of the chunk so the client sees it)."""
    try:
        room.admit(size)
    except QuotaExceededError as exc:
        raise OciError(403, "DENIED", exc.message, exc.context) from None


async def _let_go(lock: ResumableStaging, *, keep: bool) -> None:
    """Let the file go unrecorded: ``keep`` when nothing was written (the recorded
    length stands and the hash state may be kept), else the bytes past the recorded
    length are not recorded (nor the hash state kept)."""
    try:
        await lock.pause()
    finally:
        lock.release(keep=keep)
