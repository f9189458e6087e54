"""Catalog operations on a real SQLite file and a real PostgreSQL database, migrated by Alembic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from cloudimg.blobstore import StagedBlob
from cloudimg.catalog import Catalog, Page, TagInfo, create_engine
from cloudimg.catalog.models import Blob
from cloudimg.config import Settings
from cloudimg.core import commit_staged
from cloudimg.digest import Digest
from cloudimg.errors import NotFoundError
from cloudimg.images import Inspection
from cloudimg.registry import open_registry
from tests.databases import BACKENDS, database_url
from tests.maintenance_support import stage, store_of
from tests.support import random_image


@pytest.fixture(params=BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database_url(request.param, tmp_path)


@pytest.fixture
async def catalog(tmp_path: Path, catalog_url: str) -> AsyncIterator[Catalog]:
    settings = Settings(data_root=tmp_path / "data", database_url=catalog_url)
    async with open_registry(settings, migrate=True) as registry:
        yield registry.catalog


@pytest.fixture
async def catalog_without_history(tmp_path: Path, catalog_url: str) -> AsyncIterator[Catalog]:
    """A catalog run with ``--keep-history 0``: a tag's old bytes go at once."""
    settings = Settings(data_root=tmp_path / "data", database_url=catalog_url, keep_history=0)
    async with open_registry(settings, migrate=True) as registry:
        yield registry.catalog


async def put(catalog: Catalog, ref: str, data: bytes, **meta: str) -> StagedBlob:
    repo, image, tag = ref.split("/")
    staged = await stage(catalog, data)
    await commit_staged(catalog, catalog.blobs, (repo, image, tag), staged, meta)
    return staged


async def refcounts(catalog: Catalog) -> dict[str, int]:
    async with catalog.engine.connect() as connection:
        rows = await connection.execute(select(Blob.digest, Blob.refcount))
        return {digest: count for digest, count in rows}


async def test_upload_creates_names_and_lists_them_sorted(catalog: Catalog) -> None:
    await put(catalog, "zeta/img/v1", b"a")
    await put(catalog, "alpha/img-b/v1", b"b")
    await put(catalog, "alpha/img-a/v2", b"c")
    await put(catalog, "alpha/img-a/v1", b"d")
    assert await catalog.reads.list_repositories() == ["alpha", "zeta"]
    assert await catalog.reads.list_images("alpha") == ["img-a", "img-b"]
    assert await catalog.reads.list_tags("alpha", "img-a") == ["v1", "v2"]


async def test_pages_of_a_listing_follow_each_other_in_name_order(catalog: Catalog) -> None:
    names = ["rep-a", "rep-b", "rep-c", "rep-d", "rep-e"]
    for name in reversed(names):
        await put(catalog, f"{name}/img/v1", name.encode())
    seen: list[str] = []
    after = None
    while True:
        page = await catalog.reads.list_repositories(Page(after=after, limit=2))
        if not page:
            break
        assert len(page) <= 2
        seen += page
        after = page[-1]
    assert seen == names
    assert await catalog.reads.list_images("rep-c", Page(after="img")) == []
    assert await catalog.reads.list_images("rep-c", Page(limit=5)) == ["img"]


async def test_a_filter_matches_names_and_tag_metadata_literally(catalog: Catalog) -> None:
    await put(catalog, "lab/ubuntu/v22", b"1", os="Ubuntu", note="50% off")
    await put(catalog, "lab/ubuntu/v24", b"2", os="ubuntu-noble")
    await put(catalog, "lab/ubuntu/v20", b"3", arch="x86_64")
    await put(catalog, "lab-old/alpine/v3", b"4")

    def tags(infos: list[TagInfo]) -> list[str]:
        return [info.tag for info in infos]

    assert await catalog.reads.list_repositories(Page(contains="OLD")) == ["lab-old"]
    assert tags(await catalog.reads.list_tag_infos("lab", "ubuntu", Page(contains="UBUNTU"))) == [
        "v22",
        "v24",
    ]
    assert tags(await catalog.reads.list_tag_infos("lab", "ubuntu", Page(contains="v2"))) == [
        "v20",
        "v22",
        "v24",
    ]
    # LIKE's wildcards are matched as themselves.
    assert tags(await catalog.reads.list_tag_infos("lab", "ubuntu", Page(contains="%"))) == ["v22"]
    assert tags(await catalog.reads.list_tag_infos("lab", "ubuntu", Page(contains="_"))) == ["v20"]
    infos = await catalog.reads.list_tag_infos("lab", "ubuntu", Page(after="v20", limit=1))
    assert [(i.tag, i.meta, i.size, i.quarantined) for i in infos] == [
        ("v22", {"os": "Ubuntu", "note": "50% off"}, 1, False)
    ]
    assert infos[0] == await catalog.reads.get_tag("lab", "ubuntu", "v22")
    with pytest.raises(NotFoundError):
        await catalog.reads.list_tag_infos("lab", "debian")


async def test_unknown_names_are_not_found(catalog: Catalog) -> None:
    await put(catalog, "repo/img/v1", b"a")
    with pytest.raises(NotFoundError):
        await catalog.reads.list_images("nope")
    with pytest.raises(NotFoundError):
        await catalog.reads.list_tags("repo", "nope")
    with pytest.raises(NotFoundError):
        await catalog.reads.get_tag("repo", "img", "v2")


async def test_get_tag_carries_digests_size_and_meta(catalog: Catalog) -> None:
    staged = await put(catalog, "repo/img/v1", b"hello", os="debian")
    info = await catalog.reads.get_tag("repo", "img", "v1")
    assert (info.digest, info.sha256, info.size) == (staged.blake3, staged.sha256, 5)
    assert info.meta == {"os": "debian"}
    assert info.created.tzinfo is not None
    assert info.created == info.updated


async def test_resolve_by_tag_and_by_either_digest(catalog: Catalog) -> None:
    staged = await put(catalog, "repo/img/v1", b"hello")
    for reference in ("v1", Digest("blake3", staged.blake3), Digest("sha256", staged.sha256)):
        ref = await catalog.reads.resolve("repo", "img", reference)
        assert ref.digest == staged.blake3


async def test_digest_reference_needs_a_tag_of_that_image(catalog: Catalog) -> None:
    staged = await put(catalog, "repo/img/v1", b"hello")
    await put(catalog, "repo/other/v1", b"other")
    with pytest.raises(NotFoundError):
        await catalog.reads.resolve("repo", "other", Digest("blake3", staged.blake3))


async def test_same_bytes_share_one_blob(catalog: Catalog) -> None:
    staged = await put(catalog, "repo/img/v1", b"same")
    await put(catalog, "repo/img/v2", b"same")
    await put(catalog, "repo/other/v1", b"same")
    assert await refcounts(catalog) == {staged.blake3: 3}
    assert len([p for p in (catalog.blobs.root / "blobs").rglob("*") if p.is_file()]) == 1  # type: ignore[attr-defined]


async def test_overwrite_moves_the_tag_and_frees_the_old_blob(
    catalog_without_history: Catalog,
) -> None:
    catalog = catalog_without_history
    old = await put(catalog, "repo/img/v1", b"old bytes")
    new = await put(catalog, "repo/img/v1", b"new bytes", k="v")
    assert (await catalog.reads.get_tag("repo", "img", "v1")).digest == new.blake3
    assert await refcounts(catalog) == {new.blake3: 1}
    assert await catalog.blobs.size_of(old.blake3) is None


async def test_overwrite_with_same_bytes_updates_meta_only(catalog: Catalog) -> None:
    staged = await put(catalog, "repo/img/v1", b"bytes", k="1")
    await put(catalog, "repo/img/v1", b"bytes", k="2")
    info = await catalog.reads.get_tag("repo", "img", "v1")
    assert info.meta == {"k": "2"}
    assert info.updated > info.created
    assert await refcounts(catalog) == {staged.blake3: 1}


async def test_delete_keeps_shared_blob_until_last_reference(
    catalog_without_history: Catalog,
) -> None:
    catalog = catalog_without_history
    staged = await put(catalog, "repo/img/v1", b"shared")
    await put(catalog, "repo/img/v2", b"shared")
    await catalog.tags.delete_tag("repo", "img", "v1")
    assert await refcounts(catalog) == {staged.blake3: 1}
    assert await catalog.blobs.size_of(staged.blake3) == 6
    await catalog.tags.delete_tag("repo", "img", "v2")
    assert await refcounts(catalog) == {}
    assert await catalog.blobs.size_of(staged.blake3) is None
    assert list((catalog.blobs.root / "trash").iterdir()) == []  # type: ignore[attr-defined]


async def test_deleting_last_tag_removes_image_and_repo(catalog: Catalog) -> None:
    await put(catalog, "repo/img/v1", b"a")
    await put(catalog, "repo/keep/v1", b"b")
    await catalog.tags.delete_tag("repo", "img", "v1")
    assert await catalog.reads.list_images("repo") == ["keep"]
    await catalog.tags.delete_tag("repo", "keep", "v1")
    assert await catalog.reads.list_repositories() == []


async def test_delete_unknown_tag_is_not_found_and_changes_nothing(catalog: Catalog) -> None:
    staged = await put(catalog, "repo/img/v1", b"a")
    with pytest.raises(NotFoundError):
        await catalog.tags.delete_tag("repo", "img", "v9")
    with pytest.raises(NotFoundError):
        await catalog.tags.delete_tag("nope", "img", "v1")
    assert await refcounts(catalog) == {staged.blake3: 1}


async def test_upload_after_blob_was_freed_puts_bytes_back(catalog: Catalog) -> None:
    data = random_image(4096)
    staged = await put(catalog, "repo/img/v1", data)
    await catalog.tags.delete_tag("repo", "img", "v1")
    await put(catalog, "repo/img/v2", data)
    assert store_of(catalog).blob_path(staged.blake3).read_bytes() == data


async def test_upload_into_an_image_racing_the_delete_of_its_last_tag(
    catalog: Catalog, catalog_url: str
) -> None:
    """Two connections: the delete drops the image and repo rows the upload adds a tag to.

    On PostgreSQL the delete's ``ON DELETE CASCADE`` took the tag committed meanwhile
    (a 201 whose tag vanished, a refcount above its references) until the delete
    locked the rows uploads share-lock.
    """
    other = Catalog(create_engine(catalog_url), catalog.blobs)
    try:
        for i in range(40):
            await put(catalog, f"r{i}/img/old", random_image(64))
            staged = await stage(other, random_image(64))
            await asyncio.gather(
                other.tags.commit_upload(f"r{i}", "img", "new", staged, {}),
                catalog.tags.delete_tag(f"r{i}", "img", "old"),
            )
            assert await catalog.reads.list_tags(f"r{i}", "img") == ["new"]
            assert (await catalog.reads.get_tag(f"r{i}", "img", "new")).digest == staged.blake3
        assert set((await refcounts(catalog)).values()) == {1}
    finally:
        await other.engine.dispose()


async def inspection_of(catalog: Catalog, digest: str) -> tuple[object, ...]:
    async with catalog.engine.connect() as connection:
        row = (
            await connection.execute(
                select(
                    Blob.format, Blob.virtual_size, Blob.partition_table, Blob.inspected_at
                ).where(Blob.digest == digest)
            )
        ).one()
    return tuple(row)


async def test_upload_records_inspection_on_a_blob_not_inspected_yet(catalog: Catalog) -> None:
    data = random_image(3000)
    staged = await put(catalog, "r/img/v1", data)  # no inspection: stored before it existed
    assert await inspection_of(catalog, staged.blake3) == (None, None, None, None)
    first = Inspection("raw", 3000, "gpt")
    again = await stage(catalog, data)
    await commit_staged(catalog, catalog.blobs, ("r", "img", "v2"), again, {}, inspection=first)
    fmt, size, table, inspected_at = await inspection_of(catalog, staged.blake3)
    assert (fmt, size, table) == ("raw", 3000, "gpt")
    assert inspected_at is not None
    # An inspected blob keeps what was recorded (the same bytes inspect the same).
    third = await stage(catalog, data)
    other = Inspection("iso", 1, None)
    await commit_staged(catalog, catalog.blobs, ("r", "img", "v3"), third, {}, inspection=other)
    assert await inspection_of(catalog, staged.blake3) == (fmt, size, table, inspected_at)
    info = await catalog.reads.get_tag("r", "img", "v1")
    assert (info.format, info.virtual_size) == ("raw", 3000)


async def test_gc_runs_add_up_in_the_catalog_even_when_they_overlap(catalog: Catalog) -> None:
    assert await catalog.reads.gc_record() is None  # no run recorded yet
    # Eight runs at once: the first ones race to create the row, every one is counted.
    await asyncio.gather(
        *(
            catalog.maintenance.record_gc_run(
                ok=n % 4 != 0, bytes_freed=n * 1000, duration_seconds=0.5
            )
            for n in range(8)
        )
    )
    record = await catalog.reads.gc_record()
    assert record is not None
    assert record.runs_total == 8
    assert record.failed_runs_total == 2
    assert record.bytes_freed_total == sum(n * 1000 for n in range(8))
    assert record.last_run_duration_seconds == 0.5
    assert record.last_run_timestamp > 0
