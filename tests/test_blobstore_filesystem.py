"""What the file-system blob store does on disk, beyond the contract (test_blobstore_contract)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cloudimg.blobstore import FilesystemBlobStore, StagedBlob


@pytest.fixture
def store(tmp_path: Path) -> FilesystemBlobStore:
    fs = FilesystemBlobStore(tmp_path / "data")
    fs.ensure_layout()
    return fs


async def stage(store: FilesystemBlobStore, data: bytes) -> StagedBlob:
    writer = await store.open_staging()
    await writer.write(data)
    return await writer.finish()


async def test_a_blob_is_a_read_only_file_under_its_fanned_out_digest(
    store: FilesystemBlobStore,
) -> None:
    data = os.urandom(1000)
    staged = await stage(store, data)
    assert await store.place(staged) == "placed"
    path = store.blob_path(staged.blake3)
    assert path == store.blobs_dir / staged.blake3[:2] / staged.blake3[2:]
    assert path.read_bytes() == data
    assert not stat.S_IMODE(path.stat().st_mode) & 0o222
    assert list(store.staging_dir.iterdir()) == []


async def test_an_existing_blob_file_keeps_its_inode(store: FilesystemBlobStore) -> None:
    data = os.urandom(1000)
    first = await stage(store, data)
    await store.place(first)
    inode = store.blob_path(first.blake3).stat().st_ino
    assert await store.place(await stage(store, data)) == "present"
    assert store.blob_path(first.blake3).stat().st_ino == inode
    assert [f.version for f in await store.list_blobs()] == [inode]
    assert list(store.staging_dir.iterdir()) == []


async def test_displace_quarantines_the_suspect_file(store: FilesystemBlobStore) -> None:
    data = os.urandom(1000)
    staged = await stage(store, data)
    await store.place(staged)
    path = store.blob_path(staged.blake3)
    path.chmod(0o644)
    path.write_bytes(b"rotten")  # what a failing disk leaves
    assert await store.place(await stage(store, data), displace=True) == "placed"
    assert path.read_bytes() == data
    [kept] = store.quarantine_dir.iterdir()
    assert kept.name.startswith(staged.blake3 + ".")
    assert kept.read_bytes() == b"rotten"


async def test_a_purged_trash_file_is_gone_from_disk(store: FilesystemBlobStore) -> None:
    staged = await stage(store, b"bytes")
    await store.place(staged)
    trash = await store.move_to_trash(staged.blake3)
    assert trash is not None
    assert Path(trash).parent == store.trash_dir
    await store.purge(trash)
    assert list(store.trash_dir.iterdir()) == []


async def test_keys_outside_the_store_are_refused(
    store: FilesystemBlobStore, tmp_path: Path
) -> None:
    outside = tmp_path / "precious"
    outside.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="not a key"):
        await store.purge(str(outside))
    with pytest.raises(ValueError, match="not a key"):
        await store.remove_stale_staging(str(outside), 0)
    with pytest.raises(ValueError, match="not a key"):
        await store.restore_from_trash(str(outside), "0" * 64)
    assert outside.read_bytes() == b"keep me"
