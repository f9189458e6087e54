"""On SQLite the API's catalog reads run whole on a thread over a blocking engine of the
same file (one hop), not statement by statement through aiosqlite."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from cloudimg.catalog import Catalog, create_engine
from cloudimg.catalog.database import blocking_reader, sqlite_path
from cloudimg.config import Settings
from cloudimg.core import commit_staged
from cloudimg.digest import Digest
from cloudimg.errors import NotFoundError, UnavailableError
from cloudimg.registry import open_registry
from tests.databases import sqlite_url
from tests.maintenance_support import stage
from tests.support import random_image


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    data_root = tmp_path / "data"
    settings = Settings(data_root=data_root, database_url=sqlite_url(data_root))
    async with open_registry(settings, migrate=True) as registry:
        staged = await stage(registry.catalog, random_image(4096))
        await commit_staged(registry.catalog, registry.blobs, ("repo", "img", "v1"), staged, {})
        yield registry.catalog


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    return seen


async def test_listings_meta_and_lookups_run_on_the_blocking_reader(catalog: Catalog) -> None:
    twin = blocking_reader(catalog.engine)
    assert twin is not None
    on_twin, on_aiosqlite = _statements(twin), _statements(catalog.engine.sync_engine)
    info = await catalog.reads.get_tag("repo", "img", "v1")
    assert await catalog.reads.list_repositories() == ["repo"]
    assert await catalog.reads.list_images("repo") == ["img"]
    assert await catalog.reads.list_tags("repo", "img") == ["v1"]
    assert [t.tag for t in await catalog.reads.list_tag_infos("repo", "img")] == ["v1"]
    assert [t.tag for t in await catalog.reads.list_tag_details("repo", "img", 10)] == ["v1"]
    assert [i.image for i in await catalog.reads.list_image_details("repo", 10)] == ["img"]
    ref, reader = await catalog.reads.open_blob("repo", "img", Digest("blake3", info.digest))
    reader.close()
    assert ref.size == info.size == 4096
    assert any("FROM tags" in s for s in on_twin)
    assert on_aiosqlite == []


async def test_a_missing_name_is_not_found_on_the_blocking_reader(catalog: Catalog) -> None:
    with pytest.raises(NotFoundError):
        await catalog.reads.list_images("nope")
    with pytest.raises(NotFoundError):
        await catalog.reads.list_tags("repo", "nope")
    with pytest.raises(NotFoundError):
        await catalog.reads.get_tag("repo", "img", "nope")


async def test_a_read_of_a_damaged_catalog_is_unavailable(catalog: Catalog) -> None:
    """A driver error on the thread becomes the same domain error as through aiosqlite."""
    database = sqlite_path(str(catalog.engine.url))
    assert database is not None
    with sqlite3.connect(database) as connection:
        connection.execute("DROP TABLE tags")
    with pytest.raises(UnavailableError):
        await catalog.reads.list_tags("repo", "img")


def test_postgres_needs_no_blocking_reader() -> None:
    # asyncpg talks to the server from the event loop: no thread to hop to.
    assert blocking_reader(create_engine("postgresql+asyncpg://u@127.0.0.1:5432/db")) is None


def test_an_in_memory_sqlite_catalog_has_no_blocking_reader() -> None:
    # A second connection to :memory: would be another, empty database.
    assert blocking_reader(create_engine("sqlite+aiosqlite:///:memory:")) is None
