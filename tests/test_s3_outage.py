"""The S3 store in an outage: every method fails as the store's ``OSError``.

The faces answer ``BlobStoreUnavailableError`` (an ``OSError``) with 503 and
``Retry-After``; a botocore or urllib3 error that escaped the store would be a 500.
Two real outages, against a real SeaweedFS (tests/object_store.py):

- an endpoint that refuses every connection (``refusing_port``): each store method,
  called on a store pointed at it, raises the translated error;
- a store reached through a TCP relay that is cut mid-way (``_Relay``): it drops the
  connections open through it (a body being streamed breaks) and every one after, so
  the work a request already started (a reader's open body, a resumable session's
  chunk, a staging upload between parts) fails mid-way as the store's error too.

The stores here try each call once with short timeouts (``retries=1``): botocore's
backoff is tested by the SDK, not here, and would make each failure take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from cloudimg.blobstore import StagedBlob
from cloudimg.blobstore.base import BlobStoreUnavailableError
from cloudimg.blobstore.s3 import S3BlobStore, session_lock
from tests.object_store import SeaweedFS, s3_location
from tests.support import random_image, refusing_port, wait_until

MiB = 1024 * 1024
_QUICK: dict[str, Any] = {"retries": 1, "connect_timeout": 2.0, "read_timeout": 5.0}


@pytest.fixture
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket()


@pytest.fixture
def store(seaweedfs: SeaweedFS, bucket: str) -> S3BlobStore:
    return S3BlobStore(s3_location(seaweedfs, bucket), part_size=5 * MiB)


async def stage(store: S3BlobStore, data: bytes) -> StagedBlob:
    writer = await store.open_staging()
    await writer.write(data)
    return await writer.finish()


async def unavailable(work: Awaitable[object]) -> BlobStoreUnavailableError:
    """The error ``work`` fails with, which must be the store's translated one."""
    # Not InsufficientStorageError nor a plain OSError: an outage, which retrying may
    # cure. Any other error (a botocore one, even where it is an OSError) goes through.
    with pytest.raises(BlobStoreUnavailableError) as raised:
        await work
    return raised.value


async def test_every_method_on_a_refusing_endpoint_raises_the_stores_error(
    seaweedfs: SeaweedFS, bucket: str, store: S3BlobStore
) -> None:
    # Real objects in the bucket, so that each call would have something to act on.
    data = random_image(6 * MiB)
    placed = await stage(store, data)
    assert await store.place(placed) == "placed"
    staged = await stage(store, random_image(1 * MiB))
    trashed = await store.move_to_trash(placed.blake3)
    assert trashed is not None
    assert await store.restore_from_trash(trashed, placed.blake3)
    session = secrets.token_hex(16)

    with refusing_port() as port:
        location = s3_location(seaweedfs, bucket, endpoint_url=f"http://127.0.0.1:{port}", **_QUICK)
        down = S3BlobStore(location, part_size=5 * MiB)
        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("probe_writable", down.probe_writable),
            ("lock_resumable", lambda: down.lock_resumable(session)),
            ("claim_staging", lambda: down.claim_staging(session, "0" * 64, "0" * 64, 1)),
            ("drop_session", lambda: down.drop_session(session)),
            ("place", lambda: down.place(staged)),
            ("discard", lambda: down.discard(staged)),
            ("open", lambda: down.open(placed.blake3)),
            ("size_of", lambda: down.size_of(placed.blake3)),
            ("move_to_trash", lambda: down.move_to_trash(placed.blake3)),
            ("list_trash", down.list_trash),
            ("restore_from_trash", lambda: down.restore_from_trash(trashed, placed.blake3)),
            ("purge", lambda: down.purge(trashed)),
            ("list_blobs", down.list_blobs),
            ("list_staging", down.list_staging),
            ("staged_sessions", down.staged_sessions),
            ("remove_stale_staging", lambda: down.remove_stale_staging(staged.key, 0.0)),
            ("checksum", lambda: down.checksum(placed.blake3)),
            ("quarantine", lambda: down.quarantine(placed.blake3)),
        ]
        for name, work in calls:
            error = await unavailable(work())
            assert "unreachable" in str(error), name

        # A reader (open_staged asks nothing of the store) reads nothing either.
        reader = await down.open_staged(staged)
        try:
            await unavailable(asyncio.to_thread(reader.read, 64 * 1024, 0))
        finally:
            reader.close()

        # An upload: small (one PutObject at the end) and over a part (parts as it goes).
        for size in (1 * MiB, 6 * MiB):
            writer = await down.open_staging()

            async def upload(writer: Any = writer, size: int = size) -> object:
                await writer.write(random_image(size))
                return await writer.finish()

            await unavailable(upload())

    # Nothing the outage touched changed: the blob is where it was, with its bytes.
    assert await store.checksum(placed.blake3) is not None
    assert await store.size_of(placed.blake3) == len(data)


# -- cut mid-way ---------------------------------------------------------------------------


class _Relay:
    """A TCP relay on 127.0.0.1 to ``target``; ``cut`` drops every connection through it
    and makes it drop each new one at once: the store going away mid-request. With
    ``limit`` set, each connection is dropped once it relayed that many bytes of
    responses: a store that answers a GET and breaks off its body."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._cut = threading.Event()
        self._open: list[socket.socket] = []
        self._guard = threading.Lock()
        self.limit: int | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return  # closed
            if self._cut.is_set():
                _reset(client)
                continue
            upstream = socket.create_connection(self._target)
            with self._guard:
                self._open += [client, upstream]
            threading.Thread(target=_pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client, self.limit), daemon=True).start()

    def cut(self) -> None:
        self._cut.set()
        with self._guard:
            for sock in self._open:
                _reset(sock)
            self._open.clear()

    def mend(self) -> None:
        """Relay new connections again: the store is back."""
        self._cut.clear()

    def close(self) -> None:
        self.cut()
        self._listener.close()


def _reset(sock: socket.socket) -> None:
    """Drop the connection now. The shutdown wakes the relay's thread blocked in
    ``recv`` on it (a close alone would not, and the peer would see nothing until its
    read timeout); SO_LINGER 0 then makes the close a reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _pump(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
    sent = 0
    with contextlib.suppress(OSError):
        while data := source.recv(256 * 1024):
            if limit is not None and sent + len(data) > limit:
                sink.sendall(data[: limit - sent])
                _reset(sink)  # mid-body, as a store that crashed would
                _reset(source)
                return
            sink.sendall(data)
            sent += len(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def relayed(seaweedfs: SeaweedFS, bucket: str) -> Iterator[tuple[S3BlobStore, _Relay]]:
    host, _, port = seaweedfs.endpoint.removeprefix("http://").rpartition(":")
    relay = _Relay((host, int(port)))
    try:
        location = s3_location(
            seaweedfs, bucket, endpoint_url=f"http://127.0.0.1:{relay.port}", **_QUICK
        )
        yield S3BlobStore(location, part_size=5 * MiB), relay
    finally:
        relay.close()


async def test_a_read_whose_body_breaks_mid_way_raises_the_stores_error(
    seaweedfs: SeaweedFS, bucket: str, store: S3BlobStore
) -> None:
    data = random_image(24 * MiB)
    placed = await stage(store, data)
    assert await store.place(placed) == "placed"
    with relayed(seaweedfs, bucket) as (through, relay):
        reader = await through.open(placed.blake3)
        assert reader is not None
        try:
            # The first read opens one GET to the object's end and leaves it open.
            assert await asyncio.to_thread(reader.read, MiB, 0) == data[:MiB]
            relay.cut()

            async def read_on() -> None:  # past whatever the sockets buffered before the cut
                for offset in range(MiB, len(data), MiB):
                    await asyncio.to_thread(reader.read, MiB, offset)

            await unavailable(read_on())
        finally:
            reader.close()


async def test_a_get_whose_body_breaks_off_raises_the_stores_error(
    seaweedfs: SeaweedFS, bucket: str, store: S3BlobStore
) -> None:
    # The GET is answered, then its body stops: the streamed body fails, and so does
    # the ranged GET the reader retries with (the store is still reachable, so only
    # the body's own error tells what went wrong).
    data = random_image(12 * MiB)
    placed = await stage(store, data)
    assert await store.place(placed) == "placed"
    with relayed(seaweedfs, bucket) as (through, relay):
        relay.limit = 2 * MiB  # before any connection: the client reuses them
        reader = await through.open(placed.blake3)
        assert reader is not None
        try:
            await unavailable(asyncio.to_thread(reader.read, 4 * MiB, 0))
        finally:
            reader.close()


async def test_a_session_cut_mid_chunk_raises_the_stores_error(
    seaweedfs: SeaweedFS, bucket: str, store: S3BlobStore
) -> None:
    session = secrets.token_hex(16)
    with relayed(seaweedfs, bucket) as (through, relay):
        lock = await through.lock_resumable(session)
        try:
            writer = await lock.resume(0)
            await writer.write(random_image(1 * MiB))
            relay.cut()

            async def more() -> int:
                await writer.write(random_image(6 * MiB))  # a part goes out on the way
                return await lock.pause()

            await unavailable(more())
        finally:
            lock.release()
    # The bucket is reachable again (another client): nothing of the session completed.
    assert await store.claim_staging(session, "0" * 64, "0" * 64, 7 * MiB) is None


async def test_a_lock_release_the_store_missed_is_retried_until_it_lands(
    seaweedfs: SeaweedFS,
    bucket: str,
    store: S3BlobStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store goes away just as a request lets its session's lock go: the lock stands
    (another replica must wait), is retried, and goes once the store is back."""
    monkeypatch.setattr(session_lock, "RELEASE_BACKOFF", (0.2,))
    caplog.set_level(logging.INFO, logger=session_lock.__name__)
    session = secrets.token_hex(16)
    with relayed(seaweedfs, bucket) as (through, relay):
        lock = await through.lock_resumable(session)
        relay.cut()
        lock.release()
        key = through.sessions.lock_key(session)
        await wait_for(lambda: key in through.sessions.locks.unreleased, "the release missed")
        assert store.sessions.is_locked(session)  # seen from another replica: still held
        relay.mend()
        await wait_for(lambda: not store.sessions.is_locked(session), "the lock released")
        await wait_for(lambda: not through.sessions.locks.unreleased, "nothing owed")
    assert "releasing session lock" in caplog.text
    assert "released session lock" in caplog.text


async def test_a_lock_whose_release_the_store_missed_is_taken_back_here_at_once(
    seaweedfs: SeaweedFS, bucket: str, store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client retrying on the same replica after the outage resumes its session without
    waiting out the lock's expiry (LOCK_TTL): this process knows the lock is its own."""
    monkeypatch.setattr(session_lock, "RELEASE_BACKOFF", (3600.0,))  # no retry lands first
    session = secrets.token_hex(16)
    with relayed(seaweedfs, bucket) as (through, relay):
        lock = await through.lock_resumable(session)
        writer = await lock.resume(0)
        await writer.write(b"first bytes")
        assert await lock.pause() == len(b"first bytes")
        relay.cut()
        lock.release(keep=True)
        key = through.sessions.lock_key(session)
        await wait_for(lambda: key in through.sessions.locks.unreleased, "the release missed")
        relay.mend()
        assert store.sessions.is_locked(session)
        # Bounded only against a hang: without the take-back it waits LOCK_TTL (600 s).
        again = await asyncio.wait_for(through.lock_resumable(session), 120)
        assert again.length == len(b"first bytes")
        assert key not in through.sessions.locks.unreleased
        # The old ETag is dead: the sleeping retry, when it wakes, deletes nothing of ours.
        again.release()
        await wait_for(lambda: not store.sessions.is_locked(session), "the lock released")


async def wait_for(condition: Callable[[], object], what: str) -> None:
    """``wait_until`` on a thread: the condition makes blocking S3 calls."""
    await asyncio.to_thread(wait_until, condition, what)
