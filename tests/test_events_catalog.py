"""Change events in the catalog, on a real SQLite file and a real PostgreSQL database:
each tag change, block, unblock and gc run writes its event in its own transaction,
a refused change writes none, ids follow commit order, and the delivery state, dead
letters and lease behave (the HTTP side and delivery: test_events_http.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from cloudimg.catalog import Catalog, TagInfo, WriteOptions
from cloudimg.catalog.models import utcnow
from cloudimg.config import Settings
from cloudimg.digest import Digest
from cloudimg.errors import PreconditionFailedError, TagImmutableError
from cloudimg.registry import open_registry
from tests.databases import BACKENDS, database_url
from tests.maintenance_support import cli_json, put
from tests.support import random_image


@pytest.fixture(params=BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database_url(request.param, tmp_path)


@pytest.fixture
async def catalog(tmp_path: Path, catalog_url: str) -> AsyncIterator[Catalog]:
    settings = Settings(data_root=tmp_path / "data", database_url=catalog_url)
    async with open_registry(settings, migrate=True) as registry:
        yield registry.catalog


def _refuse(_tag: TagInfo | None) -> None:
    raise PreconditionFailedError("no")


async def test_every_tag_change_writes_its_event_in_order(catalog: Catalog) -> None:
    first = await put(catalog, "vms/fedora/v1", random_image(1000), os="fedora")
    second = await put(catalog, "vms/fedora/v1", random_image(1001))
    await catalog.tags.retag("vms", "fedora", "v2", Digest("blake3", first), None)
    await catalog.tags.retag("vms", "fedora", "v2", Digest("blake3", second), None)
    await catalog.tags.set_immutable("vms", "fedora", "v2", True, WriteOptions(actor="ci"))
    await catalog.tags.set_immutable("vms", "fedora", "v2", False)
    await catalog.tags.delete_tag("vms", "fedora", "v2")
    events = await catalog.events.events_after(0, 100)
    assert [(e.type.removeprefix("io.cloudimg."), e.subject) for e in events] == [
        ("tag.created", "vms/fedora:v1"),
        ("tag.moved", "vms/fedora:v1"),
        ("tag.created", "vms/fedora:v2"),
        ("tag.retagged", "vms/fedora:v2"),
        ("tag.immutability.set", "vms/fedora:v2"),
        ("tag.immutability.released", "vms/fedora:v2"),
        ("tag.deleted", "vms/fedora:v2"),
    ]
    assert [e.sequence for e in events] == list(range(1, 8))
    assert len({e.uid for e in events}) == 7
    created = events[0].data
    assert created["digest"] == f"blake3:{first}"
    assert created["metadata"] == {"os": "fedora"}
    assert created["size"] == 1000
    assert created["format"] is None  # this helper stores without inspection (HTTP: raw)
    assert created["sha256"].startswith("sha256:")
    assert events[4].data["actor"] == "ci"
    assert events[3].data["digest"] == f"blake3:{second}"
    # The retag without metadata took v1's metadata with those bytes: none.
    assert events[3].data["metadata"] == {}
    assert await catalog.events.latest() == 7
    assert [e.sequence for e in await catalog.events.events_after(5, 1)] == [6]


async def test_a_refused_change_writes_no_event(catalog: Catalog) -> None:
    digest = await put(catalog, "vms/fedora/v1", random_image(1000))
    refused = WriteOptions(precondition=_refuse)
    with pytest.raises(PreconditionFailedError):
        await catalog.tags.retag("vms", "fedora", "v1", Digest("blake3", digest), None, refused)
    with pytest.raises(PreconditionFailedError):
        await catalog.tags.delete_tag("vms", "fedora", "v1", refused)
    await catalog.tags.set_immutable("vms", "fedora", "v1", True)
    with pytest.raises(TagImmutableError):
        await catalog.tags.delete_tag("vms", "fedora", "v1")
    # Setting what is already set changes nothing: no event either.
    assert not await catalog.tags.set_immutable("vms", "fedora", "v1", True)
    types = [e.type for e in await catalog.events.events_after(0, 100)]
    assert types == ["io.cloudimg.tag.created", "io.cloudimg.tag.immutability.set"]


async def test_concurrent_writes_get_ids_in_commit_order(catalog: Catalog) -> None:
    """Many writers at once: ids have no gap and each tag's events are in its order."""
    images = {
        tag: [random_image(2000 + 10 * n + k) for k in range(3)] for n, tag in enumerate("abcd")
    }

    async def writer(tag: str) -> None:
        for data in images[tag]:
            await put(catalog, f"vms/fedora/{tag}", data)

    await asyncio.gather(*(writer(tag) for tag in images))
    events = await catalog.events.events_after(0, 100)
    assert [e.sequence for e in events] == list(range(1, 13))
    for tag in images:
        mine = [e for e in events if e.subject == f"vms/fedora:{tag}"]
        assert [e.type.rsplit(".", 1)[1] for e in mine] == ["created", "moved", "moved"]
        assert [e.data["size"] for e in mine] == [len(data) for data in images[tag]]


async def test_block_unblock_and_gc_runs_write_their_events(catalog: Catalog) -> None:
    digest = await put(catalog, "vms/fedora/v1", random_image(1000))
    await catalog.tags.retag("vms", "fedora", "v2", Digest("blake3", digest), None)
    await catalog.maintenance.block_blob(digest, "gpt-overlap")
    await catalog.maintenance.block_blob(digest, "gpt-overlap")  # blocked already: no event
    await catalog.maintenance.unblock_blob(digest)
    await catalog.maintenance.unblock_blob(digest)  # not blocked: no event
    await catalog.maintenance.record_gc_run(ok=True, bytes_freed=5, duration_seconds=0.5)
    events = await catalog.events.events_after(2, 100)
    assert [e.type for e in events] == [
        "io.cloudimg.blob.blocked",
        "io.cloudimg.blob.unblocked",
        "io.cloudimg.gc.run",
    ]
    blocked = events[0]
    assert blocked.subject == f"blake3:{digest}"
    assert blocked.data["tags"] == ["vms/fedora:v1", "vms/fedora:v2"]
    assert blocked.data["rule"] == "gpt-overlap"
    assert events[1].data["rule"] == "gpt-overlap"
    assert events[2].data == {"ok": True, "bytes_freed": 5, "duration_seconds": 0.5}


async def test_failures_dead_letter_after_the_time_and_resend_marks(catalog: Catalog) -> None:
    await put(catalog, "vms/fedora/v1", random_image(1000))
    event = (await catalog.events.events_after(0, 1))[0]
    later = utcnow() + timedelta(seconds=5)
    assert not await catalog.events.failed("hook", event, "503", later, timedelta(hours=1))
    state = await catalog.events.endpoint("hook")
    assert (state.position, state.attempts, state.failed_total) == (0, 1, 1)
    assert state.last_error == "503"
    assert await catalog.events.failed("hook", event, "refused", later, timedelta(0))
    state = (await catalog.events.endpoint_states())[0]
    assert (state.position, state.attempts, state.dead_lettered_total, state.pending) == (
        1,
        0,
        1,
        0,
    )
    [dead] = await catalog.events.dead_letters()
    assert (dead.endpoint, dead.event, dead.error, dead.attempts, dead.resend) == (
        "hook",
        event,
        "refused",
        2,
        False,
    )
    assert await catalog.events.mark_resend([dead.id, dead.id + 100]) == [dead.id]
    assert (await catalog.events.dead_letters("hook"))[0].resend
    await catalog.events.resent(dead.id)
    assert await catalog.events.dead_letters() == []


async def test_the_lease_has_one_holder_until_it_expires_or_is_released(
    catalog: Catalog,
) -> None:
    assert await catalog.events.take_lease("a", 30)
    assert not await catalog.events.take_lease("b", 30)
    assert await catalog.events.take_lease("a", 30)  # renewed
    await catalog.events.release_lease("a")
    assert await catalog.events.take_lease("b", 0.2)
    assert not await catalog.events.take_lease("a", 30)
    await asyncio.sleep(0.3)
    assert await catalog.events.take_lease("a", 30)


async def test_prune_drops_old_events_only(catalog: Catalog) -> None:
    await put(catalog, "vms/fedora/v1", random_image(1000))
    assert await catalog.events.prune(utcnow() - timedelta(days=1)) == 0
    assert await catalog.events.prune(utcnow() + timedelta(seconds=1)) == 1
    assert await catalog.events.events_after(0, 10) == []
    await put(catalog, "vms/fedora/v2", random_image(1001))
    # Ids go on from the counter, never reused after a prune.
    assert [e.sequence for e in await catalog.events.events_after(0, 10)] == [2]


def test_gc_prunes_events_past_the_retention_and_announces_its_run(
    tmp_path: Path, catalog_url: str
) -> None:
    root = tmp_path / "data"

    async def write() -> None:
        async with open_registry(
            Settings(data_root=root, database_url=catalog_url), migrate=True
        ) as r:
            await put(r.catalog, "vms/fedora/v1", random_image(1000))

    asyncio.run(write())
    gc = ("gc", "--data-root", str(root), "--database-url", catalog_url, "--grace", "0")
    kept = cli_json(*gc, check=0)
    assert kept["events_pruned"] == 0
    pruned = cli_json(*gc, "--event-retention", "0", check=0)
    assert pruned["events_pruned"] == 2  # the tag's event and the first run's

    async def left() -> list[str]:
        async with open_registry(
            Settings(data_root=root, database_url=catalog_url), migrate=False
        ) as r:
            return [e.type for e in await r.catalog.events.events_after(0, 10)]

    assert asyncio.run(left()) == ["io.cloudimg.gc.run"]  # the second run's, after the prune
