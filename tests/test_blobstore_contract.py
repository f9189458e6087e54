"""The contract every blob store backend must keep (one backend today: the file system)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from cloudimg.blobstore import BlobStore, FilesystemBlobStore, StagedBlob


@pytest.fixture(params=["filesystem"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        fs = FilesystemBlobStore(tmp_path / "data")
        fs.ensure_layout()
        yield fs


async def stage(store: BlobStore, data: bytes, chunk: int = 100_000) -> StagedBlob:
    writer = await store.open_staging()
    for start in range(0, len(data), chunk):
        await writer.write(data[start : start + chunk])
    return await writer.finish()


async def test_staging_hashes_what_streams(store: BlobStore) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)  # more than one write batch, not a multiple
    staged = await stage(store, data)
    assert staged.size == len(data)
    assert staged.blake3 == blake3.blake3(data).hexdigest()
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    await store.discard(staged)


async def test_empty_blob_has_the_empty_digests(store: BlobStore) -> None:
    staged = await stage(store, b"")
    assert staged.size == 0
    assert staged.blake3 == blake3.blake3(b"").hexdigest()
    assert await store.place(staged)
    assert await store.size_of(staged.blake3) == 0


async def test_place_puts_read_only_bytes_under_the_digest(store: BlobStore) -> None:
    data = os.urandom(1000)
    staged = await stage(store, data)
    assert await store.place(staged) is True
    path = store.blob_path(staged.blake3)
    assert path.read_bytes() == data
    assert path.parent.name == staged.blake3[:2]
    assert path.name == staged.blake3[2:]
    assert not stat.S_IMODE(path.stat().st_mode) & 0o222
    assert not staged.path.exists()


async def test_existing_digest_is_never_rewritten(store: BlobStore) -> None:
    data = os.urandom(1000)
    first = await stage(store, data)
    await store.place(first)
    inode = store.blob_path(first.blake3).stat().st_ino
    second = await stage(store, data)
    assert await store.place(second) is False
    assert store.blob_path(first.blake3).stat().st_ino == inode
    assert not second.path.exists()


async def test_abort_leaves_no_staging_file(store: BlobStore) -> None:
    writer = await store.open_staging()
    await writer.write(os.urandom(5 * 1024 * 1024))
    await writer.abort()
    await writer.abort()  # idempotent
    assert isinstance(store, FilesystemBlobStore)
    assert list(store.staging_dir.iterdir()) == []


async def test_discard_drops_a_finished_staging_file(store: BlobStore) -> None:
    staged = await stage(store, b"abc")
    await store.discard(staged)
    await store.discard(staged)
    assert not staged.path.exists()
    assert await store.size_of(staged.blake3) is None


async def test_trash_restore_and_purge(store: BlobStore) -> None:
    staged = await stage(store, b"some bytes")
    await store.place(staged)
    trash = await store.move_to_trash(staged.blake3)
    assert trash is not None
    assert await store.size_of(staged.blake3) is None
    assert await store.restore_from_trash(trash, staged.blake3)
    assert store.blob_path(staged.blake3).read_bytes() == b"some bytes"
    assert not await store.restore_from_trash(trash, staged.blake3)  # gone: restored already
    trash = await store.move_to_trash(staged.blake3)
    assert trash is not None
    await store.purge(trash)
    await store.purge(trash)
    assert not trash.exists()
    assert await store.move_to_trash(staged.blake3) is None
