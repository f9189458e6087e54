"""ContainerDisks: a layer is hashed once per blob, whatever the interleaving of pulls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloudimg.catalog import BlobRef, Catalog
from cloudimg.config import Settings
from cloudimg.oci.digests import ContainerDisks
from cloudimg.registry import open_registry
from tests.databases import database_url
from tests.maintenance_support import put
from tests.support import random_image


@pytest.fixture
def catalog_url(tmp_path: Path) -> Iterator[str]:
    yield from database_url("sqlite", tmp_path)  # the race is in one process, not the backend


@pytest.fixture
async def catalog(tmp_path: Path, catalog_url: str) -> AsyncIterator[Catalog]:
    settings = Settings(data_root=tmp_path / "data", database_url=catalog_url)
    async with open_registry(settings, migrate=True) as registry:
        yield registry.catalog


async def test_a_pull_that_read_nothing_stored_before_another_finished_does_not_hash_again(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_image(20_000)
    digest = await put(catalog, "vms/race/v1", data)
    ref = BlobRef(digest, "", len(data), datetime.now(UTC))
    read_nothing, go_on = asyncio.Event(), asyncio.Event()
    stored_digests = catalog.oci_digests
    stores: list[str] = []
    store_digests = catalog.set_oci_digests

    async def first_read_waits(blake3: str) -> tuple[str, str, str] | None:
        found = await stored_digests(blake3)
        if not read_nothing.is_set():  # the first pull stops right after reading "nothing"
            read_nothing.set()
            await go_on.wait()
        return found

    async def counted_store(blake3: str, digests: tuple[str, str, str]) -> None:
        stores.append(blake3)
        await store_digests(blake3, digests)

    monkeypatch.setattr(catalog, "oci_digests", first_read_waits)
    monkeypatch.setattr(catalog, "set_oci_digests", counted_store)
    disks = ContainerDisks(catalog, catalog.blobs)
    late = asyncio.ensure_future(disks.of(ref))
    await read_nothing.wait()
    early = await disks.of(ref)  # computes, stores and leaves the in-flight table
    go_on.set()
    assert await late == early
    assert stores == [digest]
