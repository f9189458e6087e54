"""The contract every blob store backend must keep, through the interfaces only.

The fixture names each backend; everything else speaks ``MaintenanceBlobStore`` (digests,
readers and opaque keys), so a second backend runs through this file unchanged. What
one backend does on its own medium is tested beside it (tests/test_blobstore_filesystem.py).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import httpx
import pytest

from cloudimg.blobstore import FilesystemBlobStore, MaintenanceBlobStore, StagedBlob
from cloudimg.blobstore.s3 import S3BlobStore
from tests.object_store import SeaweedFS, s3_location

Reopen = Callable[[], MaintenanceBlobStore]
"""Another store over the same medium (another process's, or one after a restart)."""


@pytest.fixture(params=["filesystem", "s3"])
def medium(request: pytest.FixtureRequest, tmp_path: Path) -> Reopen:
    if request.param == "filesystem":

        def filesystem() -> MaintenanceBlobStore:
            fs = FilesystemBlobStore(tmp_path / "data")
            fs.ensure_layout()
            return fs

        return filesystem
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    location = s3_location(server, server.new_bucket())
    return lambda: S3BlobStore(location)


@pytest.fixture
def store(medium: Reopen) -> MaintenanceBlobStore:
    return medium()


async def stage(store: MaintenanceBlobStore, data: bytes, chunk: int = 100_000) -> StagedBlob:
    writer = await store.open_staging()
    for start in range(0, len(data), chunk):
        await writer.write(data[start : start + chunk])
    return await writer.finish()


async def stored_bytes(store: MaintenanceBlobStore, digest: str) -> bytes | None:
    """The stored blob's bytes as a download reads them; None when there is no blob."""
    reader = await store.open(digest)
    if reader is None:
        return None
    try:
        return reader.read(reader.size + 1, 0)
    finally:
        reader.close()


async def test_staging_hashes_what_streams(store: MaintenanceBlobStore) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)  # more than one write batch, not a multiple
    staged = await stage(store, data)
    assert staged.size == len(data)
    assert staged.blake3 == blake3.blake3(data).hexdigest()
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    await store.discard(staged)


async def test_tap_sees_every_byte_in_order_on_another_thread(
    store: MaintenanceBlobStore,
) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)
    seen = bytearray()
    threads: set[int] = set()

    def tap(piece: memoryview) -> None:
        seen.extend(piece)
        threads.add(threading.get_ident())

    writer = await store.open_staging(tap)
    for start in range(0, len(data), 100_000):
        await writer.write(data[start : start + 100_000])
    staged = await writer.finish()
    assert bytes(seen) == data
    assert threading.get_ident() not in threads  # the event loop never runs it
    await store.discard(staged)


async def test_a_failing_tap_fails_the_write(store: MaintenanceBlobStore) -> None:
    def tap(piece: memoryview) -> None:
        raise ValueError("the tap refuses")

    writer = await store.open_staging(tap)
    await writer.write(os.urandom(5 * 1024 * 1024))  # a batch: written on a thread
    with pytest.raises(ValueError, match="the tap refuses"):
        await writer.finish()
    await writer.abort()
    assert await store.list_staging() == []


async def test_empty_blob_has_the_empty_digests(store: MaintenanceBlobStore) -> None:
    staged = await stage(store, b"")
    assert staged.size == 0
    assert staged.blake3 == blake3.blake3(b"").hexdigest()
    assert await store.place(staged) == "placed"
    assert await store.size_of(staged.blake3) == 0
    assert await stored_bytes(store, staged.blake3) == b""


async def test_place_stores_the_bytes_under_the_digest(store: MaintenanceBlobStore) -> None:
    data = os.urandom(1000)
    staged = await stage(store, data)
    assert await store.place(staged) == "placed"
    assert await stored_bytes(store, staged.blake3) == data
    assert await store.size_of(staged.blake3) == len(data)
    assert await store.list_staging() == []
    assert [f.digest for f in await store.list_blobs()] == [staged.blake3]
    assert await store.place(staged) == "gone"  # a retry finds its bytes placed already


async def test_existing_digest_is_never_rewritten(store: MaintenanceBlobStore) -> None:
    data = os.urandom(1000)
    first = await stage(store, data)
    await store.place(first)
    version = (await store.list_blobs())[0].version
    second = await stage(store, data)
    assert await store.place(second) == "present"
    assert [f.version for f in await store.list_blobs()] == [version]
    assert await store.list_staging() == []


async def test_abort_leaves_nothing_staged(store: MaintenanceBlobStore) -> None:
    writer = await store.open_staging()
    await writer.write(os.urandom(5 * 1024 * 1024))
    await writer.abort()
    await writer.abort()  # idempotent
    assert await store.list_staging() == []


async def test_discard_drops_finished_staged_bytes(store: MaintenanceBlobStore) -> None:
    staged = await stage(store, b"abc")
    await store.discard(staged)
    await store.discard(staged)
    assert await store.list_staging() == []
    assert await store.size_of(staged.blake3) is None
    assert await store.place(staged) == "gone"


async def test_trash_restore_and_purge(store: MaintenanceBlobStore) -> None:
    staged = await stage(store, b"some bytes")
    await store.place(staged)
    trash = await store.move_to_trash(staged.blake3)
    assert trash is not None
    assert await store.size_of(staged.blake3) is None
    assert [(f.key, f.digest) for f in await store.list_trash()] == [(trash, staged.blake3)]
    assert await store.restore_from_trash(trash, staged.blake3)
    assert await stored_bytes(store, staged.blake3) == b"some bytes"
    assert not await store.restore_from_trash(trash, staged.blake3)  # gone: restored already
    trash = await store.move_to_trash(staged.blake3)
    assert trash is not None
    await store.purge(trash)
    await store.purge(trash)
    assert await store.list_trash() == []
    assert await store.move_to_trash(staged.blake3) is None


async def test_restore_drops_the_trashed_copy_when_the_blob_is_back(
    store: MaintenanceBlobStore,
) -> None:
    staged = await stage(store, b"twice")
    await store.place(staged)
    trash = await store.move_to_trash(staged.blake3)
    assert trash is not None
    await store.place(await stage(store, b"twice"))
    assert not await store.restore_from_trash(trash, staged.blake3)
    assert await store.list_trash() == []
    assert await stored_bytes(store, staged.blake3) == b"twice"


async def test_a_reader_reads_ranges_and_outlives_a_delete(store: MaintenanceBlobStore) -> None:
    data = os.urandom(300_000)
    staged = await stage(store, data)
    await store.place(staged)
    reader = await store.open(staged.blake3)
    assert reader is not None
    try:
        assert reader.size == len(data)
        assert reader.read(1000, 5000) == data[5000:6000]
        assert reader.read(1000, len(data) - 10) == data[-10:]  # short only at the end
        cached = reader.read_nowait(1000, 100)
        assert cached is None or cached == data[100:1100]
        fd = reader.fileno()
        assert fd is None or os.pread(fd, 10, 0) == data[:10]
        trash = await store.move_to_trash(staged.blake3)
        assert trash is not None
        await store.purge(trash)
        assert await store.open(staged.blake3) is None
        assert reader.read(100, 200_000) == data[200_000:200_100]
    finally:
        reader.close()
        reader.close()  # idempotent


async def test_a_copy_to_trash_keeps_the_blob_and_readers_outlive_forget(
    store: MaintenanceBlobStore,
) -> None:
    """The two steps of a delete on a store whose trash is a copy (used by the catalog
    when ``trash_copies``; both stores implement them alike)."""
    data = os.urandom(200_000)
    staged = await stage(store, data)
    await store.place(staged)
    reader = await store.open(staged.blake3)
    assert reader is not None
    try:
        copy = await store.copy_to_trash(staged.blake3)
        assert copy is not None
        assert await stored_bytes(store, staged.blake3) == data  # still in service
        assert [(f.key, f.digest) for f in await store.list_trash()] == [(copy, staged.blake3)]
        await store.forget(staged.blake3)
        await store.forget(staged.blake3)  # already gone is fine
        await store.purge(copy)
        assert await store.open(staged.blake3) is None
        assert await store.list_trash() == []
        assert reader.read(100, 150_000) == data[150_000:150_100]
    finally:
        reader.close()
    assert await store.copy_to_trash(staged.blake3) is None


async def test_a_download_url_is_none_or_gets_the_bytes_and_their_ranges_alone(
    store: MaintenanceBlobStore,
) -> None:
    data = os.urandom(200_000)
    staged = await stage(store, data)
    await store.place(staged)
    url = await store.download_url(staged.blake3, 60)
    if url is None:  # a store without an address of its own: the server sends the bytes
        return
    # No credentials of ours go with it: the URL's own signature is the authorisation.
    async with httpx.AsyncClient(timeout=30) as http:
        whole = await http.get(url)
        assert whole.status_code == 200, whole.text
        assert whole.content == data
        part = await http.get(url, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206
        assert part.content == data[1000:2000]
        assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        # Signed for GET only: a client cannot turn it into a write or a delete.
        assert (await http.put(url, content=b"x")).status_code == 403
        assert (await http.delete(url)).status_code == 403
    assert await stored_bytes(store, staged.blake3) == data


async def test_checksum_and_quarantine_by_version(store: MaintenanceBlobStore) -> None:
    staged = await stage(store, b"suspect")
    await store.place(staged)
    result = await store.checksum(staged.blake3)
    assert result is not None
    digest, version = result
    assert digest == staged.blake3
    assert await store.quarantine(staged.blake3, version + 1) is None  # not the copy found bad
    moved = await store.quarantine(staged.blake3, version)
    assert moved is not None
    assert await store.checksum(staged.blake3) is None
    assert await store.open(staged.blake3) is None
    # An fsck whose transaction fails puts the blob back.
    assert await store.restore_from_trash(moved, staged.blake3)
    assert await stored_bytes(store, staged.blake3) == b"suspect"


async def test_stale_staging_is_removed_unless_an_upload_holds_it(
    store: MaintenanceBlobStore,
) -> None:
    staged = await stage(store, b"in progress")
    [entry] = await store.list_staging()
    future = time.time() + 3600
    assert await store.remove_stale_staging(entry.key, future) == "in-use"
    assert await store.remove_stale_staging(entry.key, 0) in ("in-use", "young")
    # The upload's lease ends (a crash of its process): the staged bytes are stale now.
    assert staged.lease is not None
    staged.lease.release()
    assert await store.remove_stale_staging(entry.key, 0) == "young"
    assert await store.remove_stale_staging(entry.key, future, dry_run=True) == "removed"
    assert await store.remove_stale_staging(entry.key, future) == "removed"
    assert await store.list_staging() == []
    assert await store.remove_stale_staging(entry.key, future) == "gone"


# -- resumable uploads (OCI sessions) ----------------------------------------------------


@pytest.mark.parametrize("same_store", [True, False], ids=["paused-here", "another-process"])
async def test_a_resumed_session_hashes_all_its_bytes_and_drops_unrecorded_ones(
    store: MaintenanceBlobStore, medium: Reopen, same_store: bool
) -> None:
    session = "ab" * 16
    first, lost, second = os.urandom(5 * 1024 * 1024), os.urandom(1000), os.urandom(3000)
    lock = await store.lock_resumable(session)
    assert lock.length == 0
    writer = await lock.resume(0)
    await writer.write(first)
    assert await lock.pause() == len(first)
    lock.release(keep=True)  # recorded
    # A chunk that dies half-way: written, never recorded.
    lock = await store.lock_resumable(session)
    writer = await lock.resume(len(first))
    await writer.write(lost)
    assert await lock.pause() == len(first) + len(lost)
    lock.release(keep=False)
    # Resumed at the recorded length (here or in a store that never saw the session).
    other = store if same_store else medium()
    lock = await other.lock_resumable(session)
    assert lock.length == len(first) + len(lost)
    writer = await lock.resume(len(first))
    assert writer.size == len(first)
    await writer.write(second)
    staged = await writer.finish()
    assert staged.sha256 == hashlib.sha256(first + second).hexdigest()
    assert staged.blake3 == blake3.blake3(first + second).hexdigest()
    reader = await other.open_staged(staged)
    try:
        assert reader.read(staged.size + 1, 0) == first + second
    finally:
        reader.close()
    await other.discard(staged)


async def test_a_session_that_is_over_or_lost_its_bytes_does_not_resume(
    store: MaintenanceBlobStore,
) -> None:
    session = "cd" * 16
    # The caller's record says the session is over: let go without resuming.
    (await store.lock_resumable(session)).release()
    # The record says 100 bytes, the file has none (gc took it): gone.
    lock = await store.lock_resumable(session)
    assert lock.length < 100
    lock.release()
    assert await store.claim_staging(session, "0" * 64, "0" * 64, 100) is None
    assert await store.list_staging() == []  # no debris of the attempts
    await store.drop_session(session)
    with pytest.raises(ValueError, match="session"):
        await store.lock_resumable("../../etc")


async def test_staged_sessions_name_the_sessions_whose_bytes_are_staged(
    store: MaintenanceBlobStore,
) -> None:
    """What gc asks before it drops a session's catalog row: are its bytes still there?"""
    session = "ef" * 16
    assert await store.staged_sessions() == set()
    lock = await store.lock_resumable(session)
    writer = await lock.resume(0)
    await writer.write(b"some bytes")
    assert await lock.pause() == len(b"some bytes")
    lock.release(keep=True)
    assert session in await store.staged_sessions()
    await store.drop_session(session)
    assert session not in await store.staged_sessions()
