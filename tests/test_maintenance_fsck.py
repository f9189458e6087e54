"""fsck: problems are found and named; corrupt blobs are quarantined and healed by a re-upload."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloudimg.catalog import Catalog
from cloudimg.digest import Digest
from cloudimg.errors import BlobCorruptError
from cloudimg.maintenance import check
from tests.maintenance_support import cli, cli_json, open_test_catalog, put, sql, store_of
from tests.support import random_image


@pytest.fixture
async def catalog(tmp_path: Path, backend: str) -> AsyncIterator[Catalog]:
    async with open_test_catalog(tmp_path / "data", backend) as opened:
        yield opened


def flip_a_byte(path: Path, offset: int = 0) -> None:
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    path.chmod(0o444)


async def test_clean_store(catalog: Catalog) -> None:
    await put(catalog, "repo/img/v1", random_image(20_000))
    await put(catalog, "repo/img/v2", random_image(20_000))
    report = await check(catalog, store_of(catalog), checksum=True)
    assert report.ok
    assert (report.blobs, report.tags, report.bytes_hashed) == (2, 2, 40_000)


async def test_flipped_byte_is_found_by_checksum_and_quarantined(catalog: Catalog) -> None:
    data = random_image(50_000)
    digest = await put(catalog, "repo/img/v1", data)
    await put(catalog, "other/img/pinned", data)
    store = store_of(catalog)
    flip_a_byte(store.blob_path(digest), 12_345)
    assert (await check(catalog, store_of(catalog))).ok  # sizes only: the flip goes unseen

    report = await check(catalog, store_of(catalog), checksum=True)
    assert [(p.kind, p.digest, p.quarantined) for p in report.problems] == [
        ("checksum", digest, True)
    ]
    assert report.problems[0].tags == ("other/img:pinned", "repo/img:v1")
    assert not store.blob_path(digest).exists()
    assert [p.name.split(".")[0] for p in store.quarantine_dir.iterdir()] == [digest]
    with pytest.raises(BlobCorruptError, match=digest):
        await catalog.reads.resolve("repo", "img", "v1")
    with pytest.raises(BlobCorruptError, match=digest):
        await catalog.reads.resolve("repo", "img", Digest("blake3", digest))
    with pytest.raises(BlobCorruptError):
        await catalog.reads.get_tag("other", "img", "pinned")

    again = await check(catalog, store_of(catalog), checksum=True)
    assert [p.kind for p in again.problems] == ["quarantined"]

    await put(catalog, "repo/img/v1", data)  # uploading the image again heals it
    assert store.blob_path(digest).read_bytes() == data
    assert (await catalog.reads.resolve("other", "img", "pinned")).digest == digest
    assert (await check(catalog, store_of(catalog), checksum=True)).ok


async def test_truncated_blob_is_found_without_checksum(catalog: Catalog) -> None:
    digest = await put(catalog, "repo/img/v1", random_image(10_000))
    path = store_of(catalog).blob_path(digest)
    path.chmod(0o644)
    os.truncate(path, 4000)
    report = await check(catalog, store_of(catalog))
    assert [(p.kind, p.quarantined) for p in report.problems] == [("size", True)]
    assert "4000 bytes, the catalog says 10000" in report.problems[0].detail
    with pytest.raises(BlobCorruptError):
        await catalog.reads.resolve("repo", "img", "v1")


async def test_missing_blob_file_is_a_problem(catalog: Catalog) -> None:
    digest = await put(catalog, "repo/img/v1", b"soon gone")
    store_of(catalog).blob_path(digest).unlink()
    report = await check(catalog, store_of(catalog))
    assert [(p.kind, p.digest, p.tags) for p in report.problems] == [
        ("missing", digest, ("repo/img:v1",))
    ]


async def test_wrong_refcount_is_a_problem(catalog: Catalog) -> None:
    digest = await put(catalog, "repo/img/v1", b"counted")
    sql(store_of(catalog).root, "UPDATE blobs SET refcount = 4")
    report = await check(catalog, store_of(catalog))
    assert [(p.kind, p.digest) for p in report.problems] == [("refcount", digest)]
    assert "refcount 4, 1 tag(s)" in report.problems[0].detail


async def test_stray_files_and_unreferenced_blobs(catalog: Catalog) -> None:
    store = store_of(catalog)
    await put(catalog, "repo/img/v1", b"fine")
    (store.blobs_dir / "README").write_text("not a blob")
    (store.blobs_dir / "ab").mkdir(exist_ok=True)
    (store.blobs_dir / "ab" / "short").write_text("not a blob either")
    orphan = store.blobs_dir / "cd" / ("e" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_text("no row")
    report = await check(catalog, store_of(catalog))
    assert sorted(Path(p.path or "").name for p in report.problems if p.kind == "stray") == [
        "README",
        "short",
    ]
    assert [p.digest for p in report.unreferenced] == ["cd" + "e" * 62]


def test_cli_names_ten_problems_of_a_kind_then_counts(tmp_path: Path) -> None:
    root = tmp_path / "data"

    async def fill() -> list[str]:
        async with open_test_catalog(root) as catalog:
            digests = [
                await put(catalog, f"repo/img/v{i:02d}", random_image(3000)) for i in range(12)
            ]
            for digest in digests:
                flip_a_byte(store_of(catalog).blob_path(digest))
            return digests

    digests = asyncio.run(fill())
    done = cli("fsck", "--data-root", str(root), "--checksum", check=1)
    assert "checksum: 12" in done.stdout
    assert "... and 2 more checksum problem(s)" in done.stdout
    assert sum(f"blake3:{d}" in done.stdout for d in digests) == 10
    assert "used by repo/img:v" in done.stdout
    report = cli_json("fsck", "--data-root", str(root), check=1)
    assert report["ok"] is False
    assert {p["digest"] for p in report["problems"]} == set(digests)
    assert {p["kind"] for p in report["problems"]} == {"quarantined"}
