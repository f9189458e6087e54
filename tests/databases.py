"""Catalog databases for tests: a SQLite file, and a fresh PostgreSQL database per test.

PostgreSQL is reached at ``CLOUDIMG_TEST_POSTGRES_URL`` (default: the local server with
trust auth). Without a server the PostgreSQL cases skip and say why.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get(
    "CLOUDIMG_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(_dsn(ADMIN_URL), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"no PostgreSQL server at {make_url(ADMIN_URL).render_as_string()}: {exc}"
    return None


def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yield a URL of an empty catalog database of ``backend``; drop it afterwards."""
    if backend == "sqlite":
        (tmp_path / "data").mkdir(exist_ok=True)
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'catalog.sqlite3'}"
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    name = "cloudimg_test_" + secrets.token_hex(6)
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
