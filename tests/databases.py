"""Catalog databases for tests: a SQLite file, and an empty PostgreSQL database per use.

PostgreSQL is reached at ``CLOUDIMG_TEST_POSTGRES_URL`` (default: the local server with
trust auth). Without a server the PostgreSQL cases skip and say why.

A data root and its catalog go together, as in production. :func:`catalog_database`
registers the database it creates for a data root, so that helpers given only a data
root (servers started on it, ``sql``, the CLI, the invariant checks) find its catalog;
a data root nobody registered has the default SQLite file inside it.

A PostgreSQL database is emptied after its use and kept for the next one of the same
test process, not dropped: ``DROP DATABASE`` forces a checkpoint, 1-3 s of waiting on a
busy machine, paid by every server of the suite's PostgreSQL half. The kept ones are
dropped when the process ends.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.support import wait_until

__all__ = [
    "ADMIN_URL",
    "BACKENDS",
    "catalog_database",
    "catalog_held",
    "catalog_url",
    "database_url",
    "postgres_unavailable",
    "query",
    "read_snapshot",
    "registered_url",
]

T = TypeVar("T")
ADMIN_URL = os.environ.get(
    "CLOUDIMG_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

_REGISTERED: dict[Path, str] = {}
"""Resolved data root -> URL of its (non-default) catalog database."""
_CREATED: list[str] = []
"""Every database this process created and has not dropped (dropped when it ends)."""
_EMPTIED: list[str] = []
"""Those of them that were used and emptied, ready for another use."""


def _blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _admin(statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(_dsn(ADMIN_URL), timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    _blocking(run)


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    try:
        _admin("SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"no PostgreSQL server at {make_url(ADMIN_URL).render_as_string()}: {exc}"
    return None


def sqlite_url(data_root: Path) -> str:
    """The default catalog of ``data_root`` (what ``Settings.resolved_database_url`` gives)."""
    return f"sqlite+aiosqlite:///{(data_root / 'catalog.sqlite3').resolve()}"


def registered_url(data_root: Path) -> str | None:
    """The catalog database registered for ``data_root``; None for its default SQLite file."""
    return _REGISTERED.get(data_root.resolve())


def catalog_url(data_root: Path) -> str:
    """The URL of ``data_root``'s catalog, registered or default."""
    return registered_url(data_root) or sqlite_url(data_root)


@contextlib.contextmanager
def catalog_database(backend: str, data_root: Path) -> Iterator[str]:
    """Yield the URL of an empty catalog of ``backend`` for ``data_root``; drop it afterwards.

    SQLite is the file inside the data root. A PostgreSQL database is created and
    registered for the data root (a data root that has one already keeps it: nested
    use shares the catalog, as servers sharing a data root do).
    """
    data_root.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        yield sqlite_url(data_root)
        return
    existing = registered_url(data_root)
    if existing is not None:
        yield existing
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    name = _EMPTIED.pop() if _EMPTIED else _created()
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    _REGISTERED[data_root.resolve()] = url
    try:
        yield url
    finally:
        del _REGISTERED[data_root.resolve()]
        _empty(name, url)


def _created() -> str:
    name = "cloudimg_test_" + secrets.token_hex(6)
    _admin(f'CREATE DATABASE "{name}"')
    _CREATED.append(name)
    return name


def _empty(name: str, url: str) -> None:
    """End every session on database ``name`` (a server a test killed may hold one) and
    drop everything its use made, then keep it for the next use; dropped on failure."""
    _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )

    async def reset() -> None:
        connection = await asyncpg.connect(_dsn(url), timeout=5)
        try:
            await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await connection.close()

    try:
        _blocking(reset)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _CREATED.remove(name)
        return
    _EMPTIED.append(name)


@atexit.register
def _drop_kept() -> None:
    """Drop this process's databases (on the main thread: at exit no new thread starts)."""
    if not _CREATED:
        return

    async def drop() -> None:
        connection = await asyncpg.connect(_dsn(ADMIN_URL), timeout=5)
        try:
            for name in _CREATED:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
        asyncio.run(drop())


def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yield a URL of an empty catalog database of ``backend``; drop it afterwards."""
    with catalog_database(backend, tmp_path / "data") as url:
        yield url


def _numbered(statement: str) -> str:
    """``?`` placeholders (sqlite3's) as ``$1, $2, ...`` (asyncpg's)."""
    counter = iter(range(1, statement.count("?") + 1))
    return re.sub(r"\?", lambda _match: f"${next(counter)}", statement)


def query(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` placeholders) on the catalog at ``url``, from outside."""
    return read_snapshot(url, [(statement, params)], read_only=False)[0]


def read_snapshot(
    url: str, statements: list[tuple[str, tuple[Any, ...]]], *, read_only: bool = True
) -> list[list[tuple[Any, ...]]]:
    """Run ``statements`` in one transaction (one consistent view) and return their rows."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_snapshot(str(parsed.database), statements, read_only=read_only)

    async def run() -> list[list[tuple[Any, ...]]]:
        connection = await asyncpg.connect(_dsn(url), timeout=15)
        try:
            isolation = "repeatable_read" if read_only else "read_committed"
            async with connection.transaction(isolation=isolation, readonly=read_only):
                return [
                    [tuple(row) for row in await connection.fetch(_numbered(sql), *params)]
                    for sql, params in statements
                ]
        finally:
            await connection.close()

    return _blocking(run)


def _sqlite_snapshot(
    path: str, statements: list[tuple[str, tuple[Any, ...]]], *, read_only: bool
) -> list[list[tuple[Any, ...]]]:
    uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=15)) as db:
        db.isolation_level = None
        db.execute("BEGIN")  # one read transaction: every statement sees the same snapshot
        try:
            rows = [db.execute(sql, params).fetchall() for sql, params in statements]
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return rows


@contextlib.contextmanager
def catalog_held(url: str, waiters: int) -> Iterator[None]:
    """Hold the lock a migration takes until ``waiters`` processes wait for it.

    Processes started inside the block queue behind it and then go all at once. The
    exit waits until ``waiters`` of them are seen waiting for the lock, so the collision
    really happened, and fails the test if they never are. On SQLite the lock is the
    ``flock`` on ``<database>.migrate.lock`` that ``upgrade_database`` holds while it
    migrates (waiters show in ``/proc/locks``); on PostgreSQL the ``blobs`` table, which
    the migration to 0002 alters (waiters show in ``pg_locks``).
    """
    ready, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []
    sqlite_file = make_url(url).database if make_url(url).get_backend_name() == "sqlite" else None
    lock_path = Path(f"{sqlite_file}.migrate.lock") if sqlite_file else None

    def hold_sqlite(path: Path) -> None:
        with path.open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
            ready.set()
            release.wait(60)

    async def hold_postgres() -> None:
        connection = await asyncpg.connect(_dsn(url), timeout=15)
        try:
            async with connection.transaction():
                await connection.execute("LOCK TABLE blobs IN ACCESS EXCLUSIVE MODE")
                ready.set()
                await asyncio.to_thread(release.wait, 60)
        finally:
            await connection.close()

    def hold() -> None:
        try:
            if lock_path is not None:
                hold_sqlite(lock_path)
            else:
                asyncio.run(hold_postgres())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    def waiting() -> int:
        if lock_path is not None:
            return _flock_waiters(lock_path)
        rows = query(
            url,
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        return int(rows[0][0])

    holder = threading.Thread(target=hold)
    holder.start()
    ready.wait(30)
    try:
        yield
        if not failure:
            wait_until(lambda: waiting() >= waiters, f"{waiters} processes wait for the lock")
    finally:
        release.set()
        holder.join()
    if failure:
        raise failure[0]


def _flock_waiters(path: Path) -> int:
    """How many processes wait for a lock on ``path`` (``->`` lines of ``/proc/locks``)."""
    inode = path.stat().st_ino
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields:
            continue
        device_inode = next(field for field in fields if field.count(":") == 2)
        count += int(device_inode.rsplit(":", 1)[1]) == inode
    return count
