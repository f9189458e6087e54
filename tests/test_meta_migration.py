"""Migration 0010 (the metadata index in name order) on both catalog backends: the
index rows of tags written before it carry their tags' names, the query finds them in
name order, ``cloudimg db check`` finds the schema and the models equal, and it goes
down (the rows as 0009 made them) and up again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from alembic import command

from cloudimg.catalog.schema import alembic_config, current_revision, upgrade_database
from tests.conftest import start_server, upload
from tests.databases import catalog_database, query
from tests.maintenance_support import cli
from tests.support import random_image

REVISION = "0010"
BEFORE = "0009"


@pytest.fixture
def fresh_catalog(tmp_path: Path, backend: str) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "data"
    with catalog_database(backend, root) as url:
        yield root, url


def _add_tags(url: str) -> None:
    """Two repositories, three tags (ids not in name order, and past those the
    database hands out next), at revision ``BEFORE``."""
    now = datetime.now(UTC)
    for repo_id, name in ((101, "zeta"), (102, "alpha")):
        query(
            url,
            "INSERT INTO repositories (id, name, created_at) VALUES (?, ?, ?)",
            repo_id,
            name,
            now,
        )
        query(
            url,
            "INSERT INTO images (id, repository_id, name, created_at) VALUES (?, ?, 'disk', ?)",
            repo_id,
            repo_id,
            now,
        )
    query(
        url,
        "INSERT INTO blobs (digest, size, sha256, refcount, created_at) VALUES (?, 1, ?, 3, ?)",
        "a" * 64,
        "b" * 64,
        now,
    )
    tags = [
        (101, 101, "v1", '{"os": "fedora"}'),
        (102, 102, "v2", '{"os": "fedora", "gpu": true}'),
        (103, 102, "v1", '{"os": "ubuntu"}'),
    ]
    for tag_id, image_id, name, meta in tags:
        query(
            url,
            "INSERT INTO tags (id, image_id, name, digest, meta, created_at, updated_at,"
            " immutable) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            tag_id,
            image_id,
            name,
            "a" * 64,
            meta,
            now,
            now,
            False,
        )
    # What 0009 indexed, by hand: this test starts past 0009's own fill.
    rows = [
        (101, "os", "fedora"),
        (102, "os", "fedora"),
        (102, "gpu", "true"),
        (103, "os", "ubuntu"),
    ]
    for row in rows:
        query(url, "INSERT INTO tag_meta (tag_id, key, value) VALUES (?, ?, ?)", *row)


def test_0010_gives_the_index_its_tags_names(fresh_catalog: tuple[Path, str]) -> None:
    root, url = fresh_catalog
    upgrade_database(url, BEFORE)
    _add_tags(url)
    before = sorted(query(url, "SELECT tag_id, key, value FROM tag_meta"))
    upgrade_database(url, REVISION)
    assert current_revision(url) == REVISION
    assert sorted(query(url, "SELECT tag_id, key, value, repo, image, tag FROM tag_meta")) == [
        (101, "os", "fedora", "zeta", "disk", "v1"),
        (102, "gpu", "true", "alpha", "disk", "v2"),
        (102, "os", "fedora", "alpha", "disk", "v2"),
        (103, "os", "ubuntu", "alpha", "disk", "v1"),
    ]
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)
    command.downgrade(alembic_config(url), BEFORE)
    assert sorted(query(url, "SELECT tag_id, key, value FROM tag_meta")) == before
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)
    assert len(query(url, "SELECT tag_id FROM tag_meta WHERE repo = 'alpha'")) == 3


def test_the_query_reads_the_migrated_index_in_name_order(
    fresh_catalog: tuple[Path, str],
) -> None:
    """A server on the migrated catalog answers from the rows the migration wrote, and a
    tag written after it joins them in its place."""
    root, url = fresh_catalog
    upgrade_database(url, BEFORE)
    _add_tags(url)
    upgrade_database(url)
    server = start_server(root)
    try:
        with server.client() as client:
            assert _names(client, meta="os=fedora") == ["alpha/disk/v2", "zeta/disk/v1"]
            assert _names(client, has="gpu") == ["alpha/disk/v2"]
            written = upload(client, "/reg/beta/disk/v1", random_image(4096), {"os": "fedora"})
            assert written.status_code == 201, written.text
            assert _names(client, meta="os=fedora") == [
                "alpha/disk/v2",
                "beta/disk/v1",
                "zeta/disk/v1",
            ]
            assert _names(client, meta="os=fedora", has="gpu") == ["alpha/disk/v2"]
    finally:
        server.stop()


def _names(client: httpx.Client, **params: str) -> list[str]:
    response = client.get("/reg/_query", params=params)
    assert response.status_code == 200, response.text
    return [f"{row['repo']}/{row['image']}/{row['tag']}" for row in response.json()["data"]]
