"""What the S3 blob store does on object storage, beyond the contract (test_blobstore_contract).

Against a real SeaweedFS (tests/object_store.py), a bucket per test.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest

from cloudimg.blobstore import StagedBlob
from cloudimg.blobstore.s3 import S3BlobStore, S3StoreError
from cloudimg.blobstore.s3 import sessions as s3_sessions
from cloudimg.blobstore.s3 import writer as s3_writer
from cloudimg.blobstore.s3.store import READER_GRACE
from tests.object_store import SeaweedFS, s3_location
from tests.support import random_image, refusing_port

MiB = 1024 * 1024


@pytest.fixture
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket()


@pytest.fixture
def store(seaweedfs: SeaweedFS, bucket: str) -> S3BlobStore:
    return S3BlobStore(s3_location(seaweedfs, bucket), part_size=5 * MiB)


def replica(seaweedfs: SeaweedFS, bucket: str, reader_grace: float = READER_GRACE) -> S3BlobStore:
    """Another store over the same bucket: what a second replica (or a restart) sees."""
    location = s3_location(seaweedfs, bucket)
    return S3BlobStore(location, part_size=5 * MiB, reader_grace=reader_grace)


async def stage(store: S3BlobStore, data: bytes, chunk: int = 1 * MiB) -> StagedBlob:
    writer = await store.open_staging()
    for start in range(0, len(data), chunk):
        await writer.write(data[start : start + chunk])
    return await writer.finish()


def objects(store: S3BlobStore, area: str) -> list[str]:
    return [item.key for item in store.bucket.list(store.bucket.key(area))]


def open_uploads(store: S3BlobStore) -> list[str]:
    return [key for key, _id, _started in store.bucket.uploads(store.bucket.key(""))]


async def test_a_blob_is_one_object_under_its_digest(store: S3BlobStore) -> None:
    data = random_image(6 * MiB + 3)  # more than a part: a multipart upload
    staged = await stage(store, data)
    assert await store.place(staged) == "placed"
    assert objects(store, "blobs/") == [store.bucket.key(f"blobs/blake3/{staged.blake3}")]
    assert objects(store, "staging/") == []
    assert open_uploads(store) == []


async def test_two_replicas_placing_the_same_bytes_store_one_object(
    seaweedfs: SeaweedFS, bucket: str
) -> None:
    data = random_image(6 * MiB)
    one, two = replica(seaweedfs, bucket), replica(seaweedfs, bucket)
    first, second = await asyncio.gather(stage(one, data), stage(two, data))
    outcomes = await asyncio.gather(one.place(first), two.place(second))
    assert sorted(outcomes) == ["placed", "present"]
    [blob] = await one.list_blobs()
    assert blob.digest == first.blake3
    assert await one.list_staging() == []


async def test_the_final_key_is_created_only_if_absent(store: S3BlobStore) -> None:
    """If-None-Match on the copy: the store refuses to rewrite an existing key, also
    when the HEAD before it missed the blob (a replica placed it in between)."""
    staged = await stage(store, b"first bytes")
    await store.place(staged)
    other = await stage(store, b"other bytes")
    target = store.bucket.key(f"blobs/blake3/{staged.blake3}")
    copied = s3_writer.copy_if_absent(store.bucket, other.key, target, other.size)
    assert not copied
    reader = await store.open(staged.blake3)
    assert reader is not None
    assert reader.read(100, 0) == b"first bytes"
    await store.discard(other)


async def test_a_copy_in_parts_for_objects_over_the_copy_limit(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects over 5 GiB are copied by UploadPartCopy; the limit lowered to see it."""
    monkeypatch.setattr(s3_writer, "MAX_COPY", 1 * MiB)
    monkeypatch.setattr(s3_writer, "COPY_PART", 5 * MiB)
    data = random_image(12 * MiB + 5)
    staged = await stage(store, data)
    assert await store.place(staged) == "placed"
    reader = await store.open(staged.blake3)
    assert reader is not None
    assert reader.read(len(data), 0) == data
    assert await store.place(await stage(store, data)) == "present"
    assert open_uploads(store) == []


async def test_an_abandoned_multipart_upload_is_aborted_after_the_cutoff_only(
    store: S3BlobStore,
) -> None:
    writer = await store.open_staging()
    before = time.time() - 60
    await writer.write(random_image(6 * MiB))  # a part goes up: a multipart upload
    for _ in range(600):
        if open_uploads(store):
            break
        await asyncio.sleep(0.05)
    # The upload's process dies: no abort, no lease, the multipart upload stays.
    await writer._end_pipeline()
    writer.lease.release()
    [entry] = await store.list_staging()
    assert entry.key == writer.key
    assert await store.remove_stale_staging(entry.key, before) == "young"
    assert open_uploads(store) == [writer.key]
    assert await store.remove_stale_staging(entry.key, time.time() + 60, dry_run=True) == "removed"
    assert open_uploads(store) == [writer.key]
    assert await store.remove_stale_staging(entry.key, time.time() + 60) == "removed"
    assert open_uploads(store) == []
    assert await store.list_staging() == []


async def test_an_upload_in_progress_here_is_never_removed(store: S3BlobStore) -> None:
    writer = await store.open_staging()
    await writer.write(random_image(6 * MiB))
    for _ in range(600):
        if open_uploads(store):
            break
        await asyncio.sleep(0.05)
    assert await store.remove_stale_staging(writer.key, time.time() + 60) == "in-use"
    await writer.abort()
    assert open_uploads(store) == []


@pytest.mark.slow
async def test_an_upload_is_never_buffered_whole(seaweedfs: SeaweedFS, bucket: str) -> None:
    size = 320 * MiB
    store = S3BlobStore(s3_location(seaweedfs, bucket))  # the default 16 MiB parts
    piece = random_image(1 * MiB)
    tracemalloc.start()
    try:
        writer = await store.open_staging()
        for _ in range(size // len(piece)):
            await writer.write(bytes(piece))  # a new object each time, as a body's pieces
        staged = await writer.finish()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert staged.size == size
    # One part gathered and sent, the pipeline's batches in flight: far below the body.
    assert peak < 96 * MiB, f"peak {peak / MiB:.0f} MiB for a {size // MiB} MiB upload"
    await store.discard(staged)


async def test_a_reader_keeps_reading_after_another_replica_trashes_the_blob(
    seaweedfs: SeaweedFS, bucket: str
) -> None:
    here, there = replica(seaweedfs, bucket), replica(seaweedfs, bucket)
    data = random_image(300_000)
    staged = await stage(here, data)
    await here.place(staged)
    reader = await here.open(staged.blake3)
    assert reader is not None
    try:
        assert reader.read(10, 0) == data[:10]
        trash = await there.move_to_trash(staged.blake3)
        assert trash is not None
        assert reader.read(1000, 1000) == data[1000:2000]
        await there.purge(trash)
        assert await there.list_trash() == []
        assert reader.read(1000, 299_500) == data[299_500:]
    finally:
        reader.close()


async def test_a_download_read_in_pieces_is_one_get_and_a_seek_opens_another(
    store: S3BlobStore,
) -> None:
    """A ranged GET per piece ran at a tenth of one GET of the object: reads that follow
    each other share one open body; a read elsewhere, or beside another, still works."""
    data = random_image(3 * MiB + 123)
    staged = await stage(store, data)
    await store.place(staged)
    gets: list[str] = []
    store.bucket.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: gets.append(params["headers"]["Range"])
    )
    reader = await store.open(staged.blake3)
    assert reader is not None
    try:
        pieces, offset, piece = [], 100, 64 * 1024
        while chunk := reader.read(piece, offset):
            pieces.append(chunk)
            offset += len(chunk)
            piece = min(piece * 2, MiB)
        assert b"".join(pieces) == data[100:]
        assert gets == ["bytes=100-"]
        assert reader.read(10, 5) == data[5:15]  # a seek back: the body opens there
        assert gets == ["bytes=100-", "bytes=5-"]

        def read_at(start: int) -> bytes:
            return reader.read(50_000, start)

        starts = list(range(0, len(data), 250_000))
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(read_at, starts)) == [data[s : s + 50_000] for s in starts]
    finally:
        reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read(1, 0)


async def test_purged_bytes_are_deleted_after_the_reader_grace(
    seaweedfs: SeaweedFS, bucket: str
) -> None:
    store = replica(seaweedfs, bucket)  # the default grace: hours
    staged = await stage(store, b"going away")
    await store.place(staged)
    trash = await store.move_to_trash(staged.blake3)
    assert trash is not None
    await store.purge(trash)
    assert await store.list_trash() == []
    assert objects(store, "trash/") == [trash]  # kept for the readers still open
    assert not await store.restore_from_trash(trash, staged.blake3)
    # gc on a replica whose grace is over (0 s, past the marker's second of writing).
    await asyncio.sleep(1.1)
    assert await replica(seaweedfs, bucket, reader_grace=0.0).list_trash() == []
    assert objects(store, "trash/") == []
    assert objects(store, "purged/") == []


async def test_a_wrong_bucket_is_one_clear_error(seaweedfs: SeaweedFS) -> None:
    store = S3BlobStore(s3_location(seaweedfs, "no-such-bucket-here"))
    with pytest.raises(S3StoreError, match="no bucket 'no-such-bucket-here'") as raised:
        await store.check()
    assert raised.value.errno == errno.ENOENT


async def test_wrong_credentials_are_one_clear_error(seaweedfs: SeaweedFS, bucket: str) -> None:
    store = S3BlobStore(s3_location(seaweedfs, bucket, secret_key="not-the-secret"))
    with pytest.raises(S3StoreError, match="refused the credentials") as raised:
        await store.check()
    assert raised.value.errno == errno.EACCES
    assert "not-the-secret" not in str(raised.value)
    assert "not-the-secret" not in repr(store.location)


async def test_an_unreachable_endpoint_is_one_clear_error(
    seaweedfs: SeaweedFS, bucket: str
) -> None:
    with refusing_port() as port:
        endpoint = f"http://127.0.0.1:{port}"
        store = S3BlobStore(s3_location(seaweedfs, bucket, endpoint_url=endpoint))
        with pytest.raises(S3StoreError, match="is unreachable"):
            await store.check()
        with pytest.raises(OSError, match="unreachable"):
            await store.probe_writable()


async def test_a_good_bucket_checks_and_probes(store: S3BlobStore) -> None:
    await store.check()
    await store.probe_writable()
    assert await store.free_space() is None
    assert await store.list_staging() == []


async def test_keys_from_callers_must_be_the_stores_own(store: S3BlobStore) -> None:
    with pytest.raises(ValueError, match="not a key"):
        await store.purge("cloudimg/blobs/blake3/" + "0" * 64)
    with pytest.raises(ValueError, match="not a key"):
        await store.remove_stale_staging("cloudimg/staging/../blobs/x", 0)
    with pytest.raises(ValueError, match="digest"):
        await store.open("../../etc/passwd")


# -- resumable sessions --------------------------------------------------------------------


async def write_chunk(store: S3BlobStore, session: str, offset: int, data: bytes) -> int:
    lock = await store.lock_resumable(session)
    writer = await lock.resume(offset)
    await writer.write(data)
    length = await lock.pause()
    lock.release(keep=True)
    return length


async def test_a_session_of_chunks_of_any_size_composes_into_its_bytes(
    seaweedfs: SeaweedFS, bucket: str
) -> None:
    session = "12" * 16
    chunks = [random_image(n) for n in (2 * MiB, 7 * MiB, 1000, 3 * MiB, 6 * MiB, 10)]
    offset = 0
    for number, chunk in enumerate(chunks):
        # Each chunk on a replica that never saw the session: the hashes are read again.
        store = replica(seaweedfs, bucket)
        offset = await write_chunk(store, session, offset, chunk)
        assert offset == sum(len(c) for c in chunks[: number + 1])
    whole = b"".join(chunks)

    store = replica(seaweedfs, bucket)
    assert await store.staged_sessions() == {session}
    staged = await store.claim_staging(
        session, blake3.blake3(whole).hexdigest(), hashlib.sha256(whole).hexdigest(), len(whole)
    )
    assert staged is not None
    reader = await store.open_staged(staged)
    assert reader.read(len(whole) + 1, 0) == whole
    assert await store.place(staged) == "placed"
    assert await store.size_of(staged.blake3) == len(whole)
    await store.drop_session(session)
    assert await store.list_staging() == []
    assert open_uploads(store) == []


async def test_a_second_replica_waits_for_the_session_lock(
    seaweedfs: SeaweedFS, bucket: str
) -> None:
    session = "34" * 16
    one, two = replica(seaweedfs, bucket), replica(seaweedfs, bucket)
    held = await one.lock_resumable(session)
    waiting = asyncio.create_task(two.lock_resumable(session))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    held.release()
    lock = await asyncio.wait_for(waiting, 60)
    lock.release()


async def test_an_expired_session_lock_is_taken_over(store: S3BlobStore) -> None:
    """A replica that crashed holding a session's lock does not hold it forever."""
    session = "56" * 16
    key = store.bucket.key(f"locks/{session}")
    expired = json.dumps({"owner": "crashed", "expires": time.time() - 1}).encode()
    store.bucket.client.put_object(Bucket=store.bucket.name, Key=key, Body=expired)
    assert await store.remove_stale_staging(store.bucket.key("staging/x"), 0) == "gone"
    lock = await asyncio.wait_for(store.lock_resumable(session), 60)
    assert lock.length == 0
    held = json.loads(
        store.bucket.client.get_object(Bucket=store.bucket.name, Key=key)["Body"].read()
    )
    assert held["owner"] != "crashed"
    lock.release()


async def test_a_locked_sessions_chunks_are_in_use_for_gc(store: S3BlobStore) -> None:
    session = "78" * 16
    await write_chunk(store, session, 0, b"some bytes")
    [entry] = await store.list_staging()
    other = S3BlobStore(store.location)  # gc in another process: no lease of ours
    lock = await other.lock_resumable(session)
    assert await other.remove_stale_staging(entry.key, time.time() + 60) == "in-use"
    lock.release()
    for _ in range(200):  # the release deletes the lock on a thread
        if not store.sessions.is_locked(session):
            break
        await asyncio.sleep(0.05)
    assert await other.remove_stale_staging(entry.key, time.time() + 60) == "removed"
    assert await store.staged_sessions() == set()


async def test_a_writer_renews_its_session_lock_and_still_lets_it_go(
    store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_sessions, "_RENEW_AFTER", 0.0)  # renew after every part
    session = "9a" * 16
    key = store.bucket.key(f"locks/{session}")

    def lock_etag() -> str | None:
        found = store.bucket.head(key)
        return None if found is None else found.etag

    lock = await store.lock_resumable(session)
    taken = lock_etag()
    writer = await lock.resume(0)
    await writer.write(random_image(11 * MiB))  # two 5 MiB parts go up while writing
    assert await lock.pause() == 11 * MiB
    assert lock_etag() not in (None, taken)
    lock.release(keep=True)
    for _ in range(200):  # the release deletes the lock on a thread
        if lock_etag() is None:
            break
        await asyncio.sleep(0.05)
    assert lock_etag() is None  # deleted with the renewed ETag: it was still ours
