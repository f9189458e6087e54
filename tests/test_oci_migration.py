"""Migrations 0006 and 0007 (kept ``/v2`` pushes), 0008 (gc runs in the catalog), 0009
(the index of tags' metadata) and 0010 (change events) on both catalog backends: rows
kept by 0005 get their role, ``cloudimg db check`` finds the schema and the models equal,
and each migration goes down and up again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command

from cloudimg.catalog.schema import alembic_config, current_revision, upgrade_database
from tests.databases import catalog_database, query
from tests.maintenance_support import cli


@pytest.fixture
def fresh_catalog(tmp_path: Path, backend: str) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "data"
    with catalog_database(backend, root) as url:
        yield root, url


def _add_0005_manifest(url: str, digest: str, blob: str) -> None:
    query(
        url,
        "INSERT INTO oci_manifests (repository, image, digest, media_type, body, blob,"
        " config_digest, config, created_at) VALUES ('vms', 'fedora', ?, 'm', ?, ?, 'c', ?, ?)",
        digest,
        b"{}",
        blob,
        b"{}",
        datetime.now(UTC),
    )


def test_0006_gives_kept_manifests_their_role_and_checks_clean(
    fresh_catalog: tuple[Path, str],
) -> None:
    root, url = fresh_catalog
    upgrade_database(url, "0005")
    _add_0005_manifest(url, "1" * 64, "")  # an index's child no index took yet
    _add_0005_manifest(url, "2" * 64, "a" * 64)  # an artifact a tag push kept
    upgrade_database(url, "0006")
    assert current_revision(url) == "0006"
    rows = query(url, "SELECT digest, role, layer_blob, config_blob FROM oci_manifests")
    assert sorted(rows) == [("1" * 64, "pending", None, None), ("2" * 64, "top", None, None)]
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)
    command.downgrade(alembic_config(url), "0005")
    assert len(query(url, "SELECT digest FROM oci_manifests")) == 2
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)


def test_0007_leaves_kept_pushes_untagged_and_checks_clean(
    fresh_catalog: tuple[Path, str],
) -> None:
    """Rows kept before 0007 know no tag: their tags pull as the generated containerDisk
    and the pushed manifests by digest; down and up again keeps them."""
    root, url = fresh_catalog
    upgrade_database(url, "0005")
    _add_0005_manifest(url, "2" * 64, "a" * 64)
    upgrade_database(url, "0007")
    assert query(url, "SELECT digest, role, tag FROM oci_manifests") == [("2" * 64, "top", None)]
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)
    command.downgrade(alembic_config(url), "0006")
    assert len(query(url, "SELECT digest FROM oci_manifests")) == 1
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)


def test_0008_counts_gc_runs_in_the_catalog_from_zero(fresh_catalog: tuple[Path, str]) -> None:
    """A registry upgraded from 0007 reports no gc run until one runs (the record a gc
    of an older release left on the data root is not read); down and up again."""
    root, url = fresh_catalog
    upgrade_database(url, "0007")
    (root / "gc-last-run.json").write_text('{"runs_total": 7}')
    upgrade_database(url, "0008")
    assert current_revision(url) == "0008"
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)
    assert query(url, "SELECT runs_total FROM gc_runs") == []
    cli("gc", "--grace", "0", "--data-root", str(root), check=0)
    assert query(url, "SELECT runs_total, last_run_ok FROM gc_runs") == [(1, True)]
    command.downgrade(alembic_config(url), "0007")
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)


def test_0009_indexes_the_metadata_of_existing_tags(fresh_catalog: tuple[Path, str]) -> None:
    """Tags written before 0009 are found by the metadata index: a string value as is,
    another JSON value as JSON, a value too long for the index as its key alone; down
    (the metadata itself stays) and up again fills it the same way."""
    root, url = fresh_catalog
    upgrade_database(url, "0008")
    now = datetime.now(UTC)
    query(url, "INSERT INTO repositories (id, name, created_at) VALUES (1, 'vms', ?)", now)
    query(
        url,
        "INSERT INTO images (id, repository_id, name, created_at) VALUES (1, 1, 'fedora', ?)",
        now,
    )
    query(
        url,
        "INSERT INTO blobs (digest, size, sha256, refcount, created_at) VALUES (?, 1, ?, 1, ?)",
        "a" * 64,
        "b" * 64,
        now,
    )
    meta = '{"os": "fedora", "gpu": 2, "notes": "%s"}' % ("x" * 300)
    query(
        url,
        "INSERT INTO tags (id, image_id, name, digest, meta, created_at, updated_at, immutable)"
        " VALUES (1, 1, 'v1', ?, ?, ?, ?, ?)",
        "a" * 64,
        meta,
        now,
        now,
        False,
    )
    expected = [(1, "gpu", "2"), (1, "notes", None), (1, "os", "fedora")]
    upgrade_database(url, "0009")
    assert current_revision(url) == "0009"
    upgrade_database(url)
    assert sorted(query(url, "SELECT tag_id, key, value FROM tag_meta")) == expected
    upgrade_database(url)
    cli("db", "check", "--data-root", str(root), check=0)
    command.downgrade(alembic_config(url), "0008")
    assert len(query(url, "SELECT id FROM tags")) == 1
    upgrade_database(url)
    assert sorted(query(url, "SELECT tag_id, key, value FROM tag_meta")) == expected
    cli("db", "check", "--data-root", str(root), check=0)


def test_0011_adds_the_event_tables_empty_and_goes_down_and_up(
    fresh_catalog: tuple[Path, str],
) -> None:
    """The outbox starts empty (changes before it are not announced); down drops the
    tables with their rows, up makes them again, and the schema checks clean."""
    root, url = fresh_catalog
    upgrade_database(url, "0010")
    upgrade_database(url, "0011")
    assert current_revision(url) == "0011"
    assert query(url, "SELECT id FROM events") == []
    cli("db", "check", "--data-root", str(root), check=0)
    query(
        url,
        "INSERT INTO events (id, uid, type, subject, time, data) VALUES (1, 'u', 't', 's', ?, ?)",
        datetime.now(UTC),
        "{}",
    )
    command.downgrade(alembic_config(url), "0010")
    upgrade_database(url)
    assert query(url, "SELECT id FROM events") == []
    cli("db", "check", "--data-root", str(root), check=0)
