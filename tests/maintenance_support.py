"""Helpers for the maintenance tests: a catalog on a real database, uploads, the CLI.

A data root's catalog is the database registered for it (see ``tests/databases.py``),
else the SQLite file inside it; ``sql`` and ``cli`` find it from the data root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cloudimg.blobstore import FilesystemBlobStore, StagedBlob
from cloudimg.catalog import Catalog
from cloudimg.config import Settings
from cloudimg.core import commit_staged
from cloudimg.registry import open_registry
from tests.databases import catalog_database, catalog_url, query, registered_url

OLD = time.time() - 10 * 24 * 3600
"""A modification time older than any grace period the tests use."""


@asynccontextmanager
async def open_test_catalog(data_root: Path, backend: str = "sqlite") -> AsyncIterator[Catalog]:
    """The catalog and blob store of ``data_root``, migrated.

    The catalog is the one registered for ``data_root``, else a new one of ``backend``
    (SQLite: the file inside the data root), dropped on exit.
    """
    with catalog_database(backend, data_root):
        settings = Settings(data_root=data_root, database_url=catalog_url(data_root))
        async with open_registry(settings, migrate=True) as registry:
            yield registry.catalog


def store_of(catalog: Catalog) -> FilesystemBlobStore:
    assert isinstance(catalog.blobs, FilesystemBlobStore)
    return catalog.blobs


async def stage(catalog: Catalog, data: bytes) -> StagedBlob:
    writer = await catalog.blobs.open_staging()
    await writer.write(data)
    return await writer.finish()


async def put(catalog: Catalog, ref: str, data: bytes, **meta: str) -> str:
    """Upload ``data`` as ``repo/image/tag`` the way the API does; returns the digest."""
    repo, image, tag = ref.split("/")
    staged = await stage(catalog, data)
    await commit_staged(catalog, catalog.blobs, (repo, image, tag), staged, dict(meta))
    return staged.blake3


async def legacy_put(catalog: Catalog, ref: str, data: bytes) -> str:
    """Store ``data`` as ``repo/image/tag`` as a version without inspection did: a blob
    row without format, virtual size or inspection time. Bytes today's uploads refuse
    (an unsafe image) get in this way too."""
    digest = await put(catalog, ref, data)
    forget_inspection(store_of(catalog).root, digest)
    return digest


def forget_inspection(data_root: Path, digest: str) -> None:
    """Make the blob row of ``digest`` what a version without inspection stored."""
    sql(
        data_root,
        "UPDATE blobs SET format = NULL, virtual_size = NULL, partition_table = NULL,"
        " inspected_at = NULL WHERE digest = ?",
        digest,
    )


def sql(data_root: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the data root's catalog from outside (to make faults for real)."""
    return query(catalog_url(data_root), statement, *params)


def age(path: Path, mtime: float = OLD) -> None:
    os.utime(path, (mtime, mtime), follow_symlinks=False)


def cli(
    *args: str, check: int | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cloudimg ARGS``; assert the exit code when ``check`` is given.

    A command still running after ``timeout`` seconds is killed and fails the test
    (``subprocess.TimeoutExpired``): a guard against a hang, not a measure of speed.

    With ``--data-root D`` among the arguments, the command gets D's catalog database
    (``CLOUDIMG_DATABASE_URL``) when one is registered.
    """
    env = dict(os.environ)
    if "--data-root" in args:
        url = registered_url(Path(args[args.index("--data-root") + 1]))
        if url is not None:
            env["CLOUDIMG_DATABASE_URL"] = url
    done = subprocess.run(
        [sys.executable, "-m", "cloudimg", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check is not None:
        assert done.returncode == check, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def cli_json(*args: str, check: int | None = None, timeout: float = 300) -> dict[str, Any]:
    done = cli(*args, "--json", check=check, timeout=timeout)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


CATALOG_TABLES = ("alembic_version", "repositories", "images", "blobs", "tags", "tag_history")


def tree_state(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory): to compare trees."""
    state: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        state[rel] = None if path.is_dir() and not path.is_symlink() else path.read_bytes()
    return state


def catalog_state(data_root: Path) -> list[list[tuple[Any, ...]]]:
    """Every row of every catalog table of ``data_root`` (nothing when it has no schema)."""
    url = catalog_url(data_root)
    sqlite = url.startswith("sqlite")
    if sqlite and not (data_root / "catalog.sqlite3").exists():
        return []  # (a connection would create the file)
    tables = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if sqlite
        else "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    present = {row[0] for row in query(url, tables)}
    return [
        query(url, f"SELECT * FROM {table} ORDER BY 1")
        for table in CATALOG_TABLES
        if table in present
    ]
