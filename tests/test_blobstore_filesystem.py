"""What the file-system blob store does on disk, beyond the contract (test_blobstore_contract)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import threading
from pathlib import Path

import blake3
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


# -- the staging writer's pipeline -------------------------------------------------------


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("upload-")]


async def test_pieces_of_every_kind_are_stored_exactly(store: FilesystemBlobStore) -> None:
    """bytes are kept, anything mutable copied: a buffer reused after write() changes nothing."""
    data = os.urandom(9 * 1024 * 1024 + 5)
    writer = await store.open_staging()
    reused = bytearray(64 * 1024)
    for offset in range(0, len(data), 64 * 1024):
        piece = data[offset : offset + 64 * 1024]
        if offset % (3 * 64 * 1024) == 0:
            await writer.write(piece)
        else:
            reused[: len(piece)] = piece
            await writer.write(memoryview(reused)[: len(piece)])
            reused[:] = bytes(len(reused))  # the owner reuses its buffer at once
    staged = await writer.finish()
    assert staged.blake3 == blake3.blake3(data).hexdigest()
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert await asyncio.to_thread(Path(staged.key).read_bytes) == data
    assert _pipeline_threads() == []  # finish ended the stages' threads
    await store.discard(staged)


async def test_each_stage_reports_its_bytes_and_cpu(store: FilesystemBlobStore) -> None:
    reported: dict[str, tuple[float, int]] = {}

    def costs(stage: str, cpu: float, size: int) -> None:
        seen = reported.get(stage, (0.0, 0))
        reported[stage] = (seen[0] + cpu, seen[1] + size)

    store.stage_costs = costs
    data = os.urandom(10 * 1024 * 1024)
    writer = await store.open_staging(lambda _piece: None)
    await writer.write(data)
    staged = await writer.finish()
    assert set(reported) == {"write", "blake3", "sha256", "inspect", "receive"}
    assert all(size == len(data) for _cpu, size in reported.values())
    assert reported["sha256"][0] > 0  # 10 MiB of sha256 takes measurable CPU
    await store.discard(staged)


async def test_an_aborted_writer_leaves_no_thread_and_no_file(store: FilesystemBlobStore) -> None:
    writer = await store.open_staging()
    await writer.write(os.urandom(9 * 1024 * 1024))  # two batches in the pipeline
    await writer.abort()
    assert _pipeline_threads() == []
    assert list(store.staging_dir.iterdir()) == []
