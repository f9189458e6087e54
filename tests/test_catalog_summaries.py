"""The web pages' summary listings (``Catalog.summarize_repositories``, ``summarize_images``)
on a real SQLite file and a real PostgreSQL database: the figures, the three orders, the
keyset pages through each, and one query a page however many rows it shows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from cloudimg.catalog import Catalog, ImageDetails, Page, RepositoryDetails, Sort
from cloudimg.catalog.database import blocking_reader
from cloudimg.config import Settings
from cloudimg.errors import NotFoundError
from cloudimg.registry import open_registry
from tests.databases import BACKENDS, database_url
from tests.maintenance_support import put
from tests.support import random_image


@pytest.fixture(params=BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database_url(request.param, tmp_path)


@pytest.fixture
async def catalog(tmp_path: Path, catalog_url: str) -> AsyncIterator[Catalog]:
    settings = Settings(data_root=tmp_path / "data", database_url=catalog_url)
    async with open_registry(settings, migrate=True) as registry:
        yield registry.catalog


def count_selects(catalog: Catalog) -> list[str]:
    """The SELECT statements the catalog runs from now on (on either of its engines)."""
    seen: list[str] = []
    engines: list[Engine] = [catalog.engine.sync_engine]
    twin = blocking_reader(catalog.engine)
    if twin is not None:
        engines.append(twin)

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append(statement)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    return seen


async def test_repositories_carry_their_images_tags_size_and_last_update(
    catalog: Catalog,
) -> None:
    shared = random_image(3000)
    await put(catalog, "alpha/one/v1", shared)
    await put(catalog, "alpha/one/v2", random_image(1000))
    await put(catalog, "alpha/two/v1", shared)  # the same bytes count again, as in /reg
    await put(catalog, "beta/solo/v1", random_image(500))
    rows = await catalog.summaries.summarize_repositories()
    assert [(r.repository, r.images, r.tags, r.size) for r in rows] == [
        ("alpha", 2, 3, 7000),
        ("beta", 1, 1, 500),
    ]
    latest = await catalog.reads.get_tag("alpha", "two", "v1")
    assert rows[0].updated == latest.updated
    images = await catalog.summaries.summarize_images("alpha")
    assert [(i.image, i.tags, i.size) for i in images] == [("one", 2, 4000), ("two", 1, 3000)]
    assert images[1].updated == latest.updated
    # The same figures as the API's detailed listing of images.
    assert images == await catalog.reads.list_image_details("alpha", 10)
    with pytest.raises(NotFoundError):
        await catalog.summaries.summarize_images("nope")


def _figure(row: RepositoryDetails | ImageDetails, sort: Sort) -> int | datetime:
    return row.size if sort == "size" else row.updated


def _name(row: RepositoryDetails | ImageDetails) -> str:
    return row.repository if isinstance(row, RepositoryDetails) else row.image


async def _all_pages(
    catalog: Catalog, sort: Sort, limit: int, contains: str = ""
) -> list[list[RepositoryDetails]]:
    """Every page of the repository listing, each starting after the last row of the one before."""
    pages: list[list[RepositoryDetails]] = []
    page = Page(limit=limit, sort=sort, contains=contains)
    while True:
        rows = await catalog.summaries.summarize_repositories(page)
        if not rows:
            return pages
        pages.append(rows)
        last = rows[-1]
        value = None if sort == "name" else _figure(last, sort)
        page = Page(
            after=last.repository, after_value=value, limit=limit, sort=sort, contains=contains
        )


@pytest.mark.parametrize("sort", ["name", "size", "updated"])
async def test_each_order_pages_through_every_row_once(catalog: Catalog, sort: Sort) -> None:
    # Sizes with ties (the name breaks them), updates in upload order.
    sizes = {"r-a": 300, "r-b": 100, "r-c": 300, "r-d": 200, "r-e": 300, "other": 50}
    for name, size in sizes.items():
        await put(catalog, f"{name}/img/v1", random_image(size))
    everything = await catalog.summaries.summarize_repositories(Page(sort=sort))
    if sort == "name":
        expected = sorted(sizes)
    elif sort == "size":
        expected = sorted(sizes, key=lambda name: (-sizes[name], name))
    else:
        expected = list(reversed(sizes))  # newest first
    assert [row.repository for row in everything] == expected
    for limit in (1, 2, 4):
        pages = await _all_pages(catalog, sort, limit)
        assert [row for page in pages for row in page] == everything
        assert all(len(page) <= limit for page in pages)
    filtered = [row for page in await _all_pages(catalog, sort, 2, "r-") for row in page]
    assert [row.repository for row in filtered] == [n for n in expected if n.startswith("r-")]


async def test_images_sort_and_page_as_repositories_do(catalog: Catalog) -> None:
    for name, size in [("big", 900), ("mid", 500), ("small", 100), ("mid2", 500)]:
        await put(catalog, f"repo/{name}/v1", random_image(size))
    by_size = await catalog.summaries.summarize_images("repo", Page(sort="size"))
    assert [i.image for i in by_size] == ["big", "mid", "mid2", "small"]
    second = await catalog.summaries.summarize_images(
        "repo", Page(sort="size", after="mid", after_value=500, limit=2)
    )
    assert [i.image for i in second] == ["mid2", "small"]
    newest = await catalog.summaries.summarize_images("repo", Page(sort="updated", limit=1))
    assert [i.image for i in newest] == ["mid2"]
    after = await catalog.summaries.summarize_images(
        "repo", Page(sort="updated", after="mid2", after_value=newest[0].updated)
    )
    assert [i.image for i in after] == ["small", "mid", "big"]


async def test_a_page_is_one_query_however_many_rows_it_shows(catalog: Catalog) -> None:
    for n in range(12):
        await put(catalog, f"repo{n:02d}/img/v1", random_image(100 + n))
        await put(catalog, f"repo00/img{n:02d}/v1", random_image(100 + n))
    for sort in ("name", "size", "updated"):
        seen = count_selects(catalog)
        assert len(await catalog.summaries.summarize_repositories(Page(sort=sort, limit=50))) == 12
        assert len(seen) == 1, seen
        seen = count_selects(catalog)
        assert (
            len(await catalog.summaries.summarize_images("repo00", Page(sort=sort, limit=50))) == 13
        )
        assert len(seen) == 2, seen  # the repository's id, then the page
