"""A delete on a bucket copies nothing under the catalog's write lock.

Moving a blob to trash on an object store is a server-side copy, which SeaweedFS makes
by copying the bytes (time in proportion to the blob). So the catalog drops the blob
row and commits, then copies the blob to trash with no lock held, and only deletes
its key under the digest's lock (``CatalogBase.drop_unreferenced``). An in-process
catalog on both backends over a real SeaweedFS bucket:

- while the copy runs, another write transaction commits (on SQLite, where a write
  holds the whole database, it would wait out the busy timeout and fail otherwise);
- a crash after the commit and before the copy leaves an unnamed blob and no listed
  tag without its object; gc removes it, as any orphan;
- a blob named again while its copy ran keeps its key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cloudimg.blobstore.s3 import S3BlobStore
from cloudimg.catalog import Catalog
from cloudimg.catalog.transaction import CatalogBase
from cloudimg.config import Settings
from cloudimg.errors import NotFoundError
from cloudimg.registry import open_registry
from tests.databases import BACKENDS, database_url
from tests.maintenance_support import put
from tests.object_store import SeaweedFS
from tests.support import random_image


@pytest.fixture(params=BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database_url(request.param, tmp_path)


@pytest.fixture
async def catalog(
    tmp_path: Path, catalog_url: str, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Catalog]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    settings = Settings(
        data_root=tmp_path / "data",
        database_url=catalog_url,
        blob_store=f"s3://{seaweedfs.new_bucket()}/reg",
        s3_endpoint=seaweedfs.endpoint,
        s3_path_style=True,
        keep_history=0,
    )
    async with open_registry(settings, migrate=True) as registry:
        assert isinstance(registry.catalog.blobs, S3BlobStore)
        yield registry.catalog


async def listed(catalog: Catalog, repo: str, image: str, tag: str) -> bool:
    try:
        await catalog.reads.get_tag(repo, image, tag)
    except NotFoundError:
        return False
    return True


def store_of(catalog: Catalog) -> S3BlobStore:
    blobs = catalog.blobs
    assert isinstance(blobs, S3BlobStore)
    return blobs


async def test_the_copy_to_trash_runs_after_the_commit_with_no_lock_held(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(catalog)
    gone, other = random_image(40_000), random_image(40_001)
    dropped = await put(catalog, "repo/img/v1", gone)
    copying = store.copy_to_trash
    seen: list[bool] = []

    async def copy_while_another_writes(blake3_hex: str) -> str | None:
        # The delete has committed: the tag is gone for every reader, and the catalog
        # takes another write now (it would wait for the delete's lock otherwise).
        seen.append(await listed(catalog, "repo", "img", "v1"))
        await put(catalog, "repo/img/v2", other)
        return await copying(blake3_hex)

    monkeypatch.setattr(store, "copy_to_trash", copy_while_another_writes)
    await catalog.tags.delete_tag("repo", "img", "v1")
    assert seen == [False]
    assert await store.size_of(dropped) is None  # its key went after the copy
    assert [entry.digest for entry in await store.list_trash()] == []  # purged (grace)
    assert (await catalog.reads.get_tag("repo", "img", "v2")).digest != dropped


async def test_a_crash_after_the_commit_leaves_an_orphan_for_gc_never_a_lost_tag(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(catalog)
    kept, dropped_bytes = random_image(30_000), random_image(30_001)
    kept_digest = await put(catalog, "repo/img/kept", kept)
    dropped = await put(catalog, "repo/img/v1", dropped_bytes)

    async def crash(_self: CatalogBase, _digest: str) -> None:
        """The process dies right after the commit: no copy, no delete."""

    monkeypatch.setattr(CatalogBase, "drop_after_commit", crash)
    await catalog.tags.delete_tag("repo", "img", "v1")
    monkeypatch.undo()
    assert await store.size_of(dropped) == len(dropped_bytes)  # unnamed, still there
    # What gc does with an object no row names: the same two steps, once it is old.
    assert await catalog.maintenance.reclaim_orphan_file(dropped) == len(dropped_bytes)
    assert await store.size_of(dropped) is None
    assert not await listed(catalog, "repo", "img", "v1")
    assert (await catalog.reads.get_tag("repo", "img", "kept")).digest == kept_digest
    assert await store.size_of(kept_digest) == len(kept)


async def test_a_blob_named_again_while_it_is_copied_keeps_its_key(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(catalog)
    data = random_image(20_000)
    dropped = await put(catalog, "repo/img/v1", data)
    copying = store.copy_to_trash

    async def upload_again_meanwhile(blake3_hex: str) -> str | None:
        copy = await copying(blake3_hex)
        await put(catalog, "repo/img/again", data)  # the same bytes, committed meanwhile
        return copy

    monkeypatch.setattr(store, "copy_to_trash", upload_again_meanwhile)
    await catalog.tags.delete_tag("repo", "img", "v1")
    assert await store.size_of(dropped) == len(data)
    assert (await catalog.reads.get_tag("repo", "img", "again")).digest == dropped
