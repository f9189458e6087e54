"""ContainerDisks: a layer is hashed once per blob, whatever the interleaving of pulls."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloudimg.catalog import BlobRef, Catalog
from cloudimg.config import Settings
from cloudimg.oci.digests import ContainerDisks
from cloudimg.oci.store import OciStore
from cloudimg.registry import open_registry
from tests.conftest import start_server, upload
from tests.databases import database_url
from tests.maintenance_support import put
from tests.support import blake3_hex, blob_path, random_image, wait_until


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
    oci = OciStore(catalog.engine, catalog.blobs)
    stored_digests = oci.oci_digests
    stores: list[str] = []
    store_digests = oci.set_oci_digests

    async def first_read_waits(blake3: str) -> tuple[str, str, str] | None:
        found = await stored_digests(blake3)
        if not read_nothing.is_set():  # the first pull stops right after reading "nothing"
            read_nothing.set()
            await go_on.wait()
        return found

    async def counted_store(blake3: str, digests: tuple[str, str, str]) -> None:
        stores.append(blake3)
        await store_digests(blake3, digests)

    monkeypatch.setattr(oci, "oci_digests", first_read_waits)
    monkeypatch.setattr(oci, "set_oci_digests", counted_store)
    disks = ContainerDisks(oci, catalog.blobs)
    late = asyncio.ensure_future(disks.of(ref))
    await read_nothing.wait()
    early = await disks.of(ref)  # computes, stores and leaves the in-flight table
    go_on.set()
    assert await late == early
    assert stores == [digest]


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (one of its ``/proc/<pid>/fd`` links)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            if Path(os.readlink(fd)) == path:
                return True
    return False


def test_a_stop_while_a_layer_is_hashed_stores_it_and_leaves_the_catalog_closed(
    tmp_path: Path,
) -> None:
    """SIGTERM while the background task hashes a new blob's containerDisk layer: the
    hash is finished and stored before the catalog closes, and nothing writes after it.
    A hash that finished after the close wrote through a connection nobody closed, and
    the stopped server left SQLite's WAL behind (whose bytes a full volume then got back
    at the next start: test_full_volume's free_bytes)."""
    data = random_image(256 * 1024 * 1024)  # long enough to hash that the stop meets it
    running = start_server(tmp_path / "data")
    try:
        with running.client() as http:
            assert upload(http, "/reg/vms/stop/v1", data).status_code == 201
        blob = blob_path(running.data_root, blake3_hex(data)).resolve()
        wait_until(lambda: _holds_open(running.process.pid, blob), "the layer's hash starts")
    finally:
        running.stop()
    assert running.process.returncode == 0, running.log()
    assert f"containerDisk layer of blake3:{blake3_hex(data)} hashed" in running.log()
    leftovers = [path.name for path in running.data_root.glob("catalog.sqlite3-*")]
    assert leftovers == [], running.log()
