"""Tag history, retention, retag, immutability and preconditions in the catalog, on
a real SQLite file and a real PostgreSQL database (the HTTP side: test_http_history)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cloudimg.catalog import Catalog, TagInfo, WriteOptions
from cloudimg.catalog.models import Blob
from cloudimg.config import Settings
from cloudimg.digest import Digest
from cloudimg.errors import NotFoundError, PreconditionFailedError, TagImmutableError
from cloudimg.maintenance import check, collect_garbage
from cloudimg.registry import Registry, open_registry
from tests.databases import BACKENDS, database_url
from tests.maintenance_support import put, sql, store_of
from tests.support import random_image


@pytest.fixture(params=BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database_url(request.param, tmp_path)


OpenRegistry = Callable[..., Registry]


@pytest.fixture
def open_catalog(tmp_path: Path, catalog_url: str) -> OpenRegistry:
    """Open the test's catalog with settings of its own (``async with`` the result)."""

    def opened(**settings: Any) -> Registry:
        values = {"data_root": tmp_path / "data", "database_url": catalog_url, **settings}
        return open_registry(Settings(**values), migrate=True)

    return opened


@pytest.fixture
async def catalog(tmp_path: Path, catalog_url: str) -> AsyncIterator[Catalog]:
    settings = Settings(data_root=tmp_path / "data", database_url=catalog_url)
    async with open_registry(settings, migrate=True) as registry:
        yield registry.catalog


async def refcounts(catalog: Catalog) -> dict[str, int]:
    async with catalog.engine.connect() as connection:
        rows = await connection.execute(select(Blob.digest, Blob.refcount))
        return {digest: count for digest, count in rows}


async def downloads(catalog: Catalog, image: str, digest: str) -> bool:
    """Whether ``digest`` resolves as a digest reference of ``repo/image`` with its file."""
    try:
        ref = await catalog.reads.resolve("repo", image, Digest("blake3", digest))
    except NotFoundError:
        return False
    return await catalog.blobs.size_of(ref.digest) == ref.size


async def push_versions(catalog: Catalog, count: int) -> list[str]:
    return [await put(catalog, "repo/img/v1", random_image(100 + i)) for i in range(count)]


async def test_every_change_is_recorded_newest_first(catalog: Catalog) -> None:
    first = await put(catalog, "repo/img/v1", b"one", os="a")
    second = await put(catalog, "repo/img/v1", b"two", os="b")
    ci = WriteOptions(actor="ci-pipeline")
    await catalog.tags.retag("repo", "img", "v1", Digest("blake3", first), None, ci)
    assert await catalog.tags.set_immutable("repo", "img", "v1", True, ci)
    assert not await catalog.tags.set_immutable(
        "repo", "img", "v1", True, ci
    )  # no change, no entry
    assert await catalog.tags.set_immutable("repo", "img", "v1", False)
    await catalog.tags.delete_tag("repo", "img", "v1", ci)
    entries = await catalog.tags.tag_history("repo", "img", "v1")
    assert [(e.action, e.digest, e.actor) for e in entries] == [
        ("deleted", first, "ci-pipeline"),
        ("released", first, None),
        ("immutable", first, "ci-pipeline"),
        ("retagged", first, "ci-pipeline"),
        ("moved", second, None),
        ("created", first, None),
    ]
    assert entries[3].meta == {"os": "a"}  # the rollback took the metadata it had
    assert [e.size for e in entries] == [3, 3, 3, 3, 3, 3]
    assert all(e.at.tzinfo is not None for e in entries)
    assert entries[0].at >= entries[-1].at


async def test_the_last_n_previous_digests_are_held_and_older_ones_freed(
    catalog: Catalog,
) -> None:
    digests = await push_versions(catalog, 6)
    *older, kept1, kept2, kept3, current = digests
    counts = await refcounts(catalog)
    assert counts == {kept1: 1, kept2: 1, kept3: 1, current: 1}
    for digest in (kept1, kept2, kept3, current):
        assert await downloads(catalog, "img", digest)
    for digest in older:
        assert not await downloads(catalog, "img", digest)
        assert await catalog.blobs.size_of(digest) is None
    entries = await catalog.tags.tag_history("repo", "img", "v1")
    assert len(entries) == 6  # the log is complete whatever N is
    assert [e.retained for e in entries] == [False, True, True, True, False, False]


async def test_a_digest_held_twice_counts_once_for_retention(catalog: Catalog) -> None:
    a = await put(catalog, "repo/img/v1", b"a")
    b = await put(catalog, "repo/img/v1", b"b")
    await put(catalog, "repo/img/v1", b"a")  # back to a: b is the one previous digest
    await put(catalog, "repo/img/v1", b"a", k="meta only")
    assert await refcounts(catalog) == {a: 1, b: 1}


async def test_keep_history_zero_frees_at_once_but_still_logs(open_catalog: OpenRegistry) -> None:
    async with open_catalog(keep_history=0) as registry:
        catalog = registry.catalog
        old = await put(catalog, "repo/img/v1", b"old")
        new = await put(catalog, "repo/img/v1", b"new")
        assert await refcounts(catalog) == {new: 1}
        assert await catalog.blobs.size_of(old) is None
        await catalog.tags.delete_tag("repo", "img", "v1")
        assert await refcounts(catalog) == {}
        actions = [e.action for e in await catalog.tags.tag_history("repo", "img", "v1")]
        assert actions == ["deleted", "moved", "created"]


async def test_lowering_keep_history_releases_on_the_next_write(open_catalog: OpenRegistry) -> None:
    async with open_catalog() as registry:
        digests = await push_versions(registry.catalog, 4)
    async with open_catalog(keep_history=1) as registry:
        catalog = registry.catalog
        assert len(await refcounts(catalog)) == 4  # nothing changes until the tag is written
        current = await put(catalog, "repo/img/v1", b"fifth")
        assert await refcounts(catalog) == {digests[-1]: 1, current: 1}


async def test_deleted_tag_keeps_history_and_bytes_until_purged(catalog: Catalog) -> None:
    old = await put(catalog, "repo/img/v1", b"old")
    last = await put(catalog, "repo/img/v1", b"last")
    await catalog.tags.delete_tag("repo", "img", "v1")
    with pytest.raises(NotFoundError):
        await catalog.reads.list_images("repo")  # the image is gone from the listings
    with pytest.raises(NotFoundError):
        await catalog.reads.get_tag("repo", "img", "v1")
    assert await downloads(catalog, "img", last)
    assert await downloads(catalog, "img", old)
    assert not await downloads(catalog, "other", last)
    assert await refcounts(catalog) == {old: 1, last: 1}
    # Pushing the tag again starts from its kept history.
    await put(catalog, "repo/img/v1", b"again")
    await catalog.tags.delete_tag("repo", "img", "v1", purge_history=True)
    assert await refcounts(catalog) == {}
    assert list((store_of(catalog).root / "trash").iterdir()) == []
    with pytest.raises(NotFoundError):
        await catalog.tags.tag_history("repo", "img", "v1")


async def test_retag_points_a_tag_at_held_bytes_without_sending_them(catalog: Catalog) -> None:
    old = await put(catalog, "repo/img/v1", b"old", os="old")
    new = await put(catalog, "repo/img/v1", b"new")
    ref = await catalog.tags.retag("repo", "img", "v1", Digest("blake3", old), None)
    assert ref.digest == old
    info = await catalog.reads.get_tag("repo", "img", "v1")
    assert (info.digest, info.meta) == (old, {"os": "old"})
    assert await refcounts(catalog) == {old: 1, new: 1}  # new is now a previous digest
    # By sha256, into another image, with explicit metadata.
    sha = (await catalog.reads.get_tag("repo", "img", "v1")).sha256
    await catalog.tags.retag("repo", "copy", "v1", Digest("sha256", sha), {"k": "v"})
    assert (await catalog.reads.get_tag("repo", "copy", "v1")).meta == {"k": "v"}
    assert await refcounts(catalog) == {old: 2, new: 1}


async def test_retag_to_unknown_bytes_changes_nothing(catalog: Catalog) -> None:
    await put(catalog, "repo/img/v1", b"x")
    before = await refcounts(catalog)
    with pytest.raises(NotFoundError):
        await catalog.tags.retag("repo", "img", "v1", Digest("blake3", "0" * 64), None)
    assert await refcounts(catalog) == before
    assert len(await catalog.tags.tag_history("repo", "img", "v1")) == 1


async def test_immutable_tag_refuses_overwrite_retag_and_delete(catalog: Catalog) -> None:
    first = await put(catalog, "repo/img/v1", b"first")
    other = await put(catalog, "repo/img/v2", b"other")
    await catalog.tags.set_immutable("repo", "img", "v1", True)
    with pytest.raises(TagImmutableError):
        await put(catalog, "repo/img/v1", b"second")
    with pytest.raises(TagImmutableError):
        await catalog.tags.retag("repo", "img", "v1", Digest("blake3", other), None)
    with pytest.raises(TagImmutableError):
        await catalog.tags.delete_tag("repo", "img", "v1")
    assert (await catalog.reads.get_tag("repo", "img", "v1")).digest == first
    assert await refcounts(catalog) == {first: 1, other: 1}
    await catalog.tags.set_immutable("repo", "img", "v1", False)
    await catalog.tags.delete_tag("repo", "img", "v1")


async def test_immutable_by_rule_allows_creation_only(open_catalog: OpenRegistry) -> None:
    async with open_catalog(immutable_tags=("release/*/v*",)) as registry:
        catalog = registry.catalog
        await put(catalog, "release/img/v1", b"one")
        with pytest.raises(TagImmutableError) as refused:
            await put(catalog, "release/img/v1", b"two")
        assert refused.value.context == {
            "repo": "release",
            "image": "img",
            "tag": "v1",
            "rule": "release/*/v*",
        }
        with pytest.raises(TagImmutableError):
            await catalog.tags.set_immutable("release", "img", "v1", False)
        await put(catalog, "release/img/latest", b"two")
        await put(catalog, "release/img/latest", b"three")


async def test_precondition_sees_the_locked_tag_and_can_refuse(catalog: Catalog) -> None:
    seen: list[TagInfo | None] = []

    def refuse(info: TagInfo | None) -> None:
        seen.append(info)
        raise PreconditionFailedError("no")

    digest = await put(catalog, "repo/img/v1", b"x", k="v")
    with pytest.raises(PreconditionFailedError):
        await catalog.tags.delete_tag("repo", "img", "v1", WriteOptions(precondition=refuse))
    with pytest.raises(PreconditionFailedError):
        await catalog.tags.retag(
            "repo", "img", "new", Digest("blake3", digest), None, WriteOptions(precondition=refuse)
        )
    assert seen[0] is not None
    assert (seen[0].digest, seen[0].meta) == (digest, {"k": "v"})
    assert seen[1] is None
    assert await catalog.reads.list_tags("repo", "img") == ["v1"]
    assert len(await catalog.tags.tag_history("repo", "img", "v1")) == 1


async def test_a_tag_from_before_history_keeps_its_bytes_when_moved(catalog: Catalog) -> None:
    old = await put(catalog, "repo/img/v1", b"old")
    sql(store_of(catalog).root, "DELETE FROM tag_history")  # as a catalog upgraded to 0004
    await put(catalog, "repo/img/v1", b"new")
    entries = await catalog.tags.tag_history("repo", "img", "v1")
    assert [(e.action, e.digest, e.retained) for e in entries][1] == ("created", old, True)
    assert await downloads(catalog, "img", old)


async def test_gc_and_fsck_count_retained_entries(catalog: Catalog) -> None:
    digests = await push_versions(catalog, 3)
    await catalog.tags.delete_tag("repo", "img", "v1")
    store = store_of(catalog)
    assert (await check(catalog, store)).problems == []
    report = await collect_garbage(catalog, store, grace=0)
    assert report.actions == []
    for digest in digests:
        assert await downloads(catalog, "img", digest)
    # A wrong count is set to tags plus retained entries, never below.
    sql(store.root, "UPDATE blobs SET refcount = 5")
    assert [p.kind for p in (await check(catalog, store)).problems] == ["refcount"] * 3
    report = await collect_garbage(catalog, store, grace=0)
    assert sorted(a.kind for a in report.actions) == ["refcount"] * 3
    assert await refcounts(catalog) == {digest: 1 for digest in digests}


async def test_retention_looks_past_a_long_run_of_one_digest(catalog: Catalog) -> None:
    older = await put(catalog, "repo/img/v1", b"older")
    for i in range(20):  # metadata-only pushes: one digest, many entries
        same = await put(catalog, "repo/img/v1", b"same", n=str(i))
    current = await put(catalog, "repo/img/v1", b"current")
    assert await refcounts(catalog) == {older: 1, same: 1, current: 1}
    retained = [e for e in await catalog.tags.tag_history("repo", "img", "v1") if e.retained]
    assert [(e.digest, e.meta) for e in retained] == [(same, {"n": "19"}), (older, {})]
