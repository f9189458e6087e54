"""The catalog database's engines: URLs and drivers, SQLite's pragmas, reserve file and
blocking reader twin, read-only opening, and what a connection error means to an
operator. The schema and its migrations are ``schema.py``'s."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote
from weakref import WeakKeyDictionary

from sqlalchemy import create_engine as create_blocking_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = [
    "RESERVE_BYTES",
    "WRITE",
    "CatalogEngine",
    "CatalogUrlError",
    "NoCatalogError",
    "async_url",
    "blocking_reader",
    "create_engine",
    "describe_database_error",
    "display_url",
    "dispose_engine",
    "keep_room",
    "read_only_url",
    "sqlite_path",
]

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 15_000
WRITE = {"cloudimg_write": True}
"""Execution options of a connection that will write: on SQLite it takes the write
lock when its transaction begins, so two writers queue on the busy timeout instead
of failing when one of them upgrades a read lock."""
RESERVE_BYTES = 8 * 1024 * 1024
"""Room kept in ``<catalog>.reserve`` beside a SQLite catalog for a full volume (``keep_room``)."""
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
_BLOCKING_READERS: WeakKeyDictionary[Engine, Engine] = WeakKeyDictionary()
"""The blocking twin of each SQLite engine ``create_engine`` made (``blocking_reader``)."""


CatalogEngine: TypeAlias = AsyncEngine
"""The catalog's connections as the layers above it hold them: made by ``create_engine``,
closed by ``dispose_engine``, handed to the catalog; nothing above the catalog looks inside."""


class NoCatalogError(LookupError):
    """There is no catalog to read yet: no SQLite file, or a database without the schema."""


class CatalogUrlError(ValueError):
    """A database URL the catalog cannot use (the message never shows its password)."""


def async_url(url: str) -> str:
    """``url`` with the async driver the catalog runs on.

    ``postgresql://`` (and ``postgres://``), as PostgreSQL's own tools and the Secrets of
    PostgreSQL operators write it, means asyncpg, the one PostgreSQL driver cloudimg
    installs; ``sqlite://`` means aiosqlite. A URL that names another driver is refused
    rather than silently switched.

    Raises:
        CatalogUrlError: not a URL, another database, or a driver that is not async.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CatalogUrlError(
            "the database URL is not a URL: write sqlite+aiosqlite:///PATH or "
            "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    backend = "postgresql" if parsed.drivername in ("postgres", "postgresql") else None
    backend = backend or parsed.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise CatalogUrlError(
            f"the catalog runs on SQLite or PostgreSQL, not {parsed.drivername!r}: write "
            "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    driver = _ASYNC_DRIVERS[backend]
    if "+" in parsed.drivername and parsed.get_driver_name() != driver:
        raise CatalogUrlError(
            f"the catalog needs the async driver {backend}+{driver}, not {parsed.drivername}:"
            f" write {backend}+{driver}://..."
        )
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite catalog URL; None for PostgreSQL and in-memory databases."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


def display_url(url: str) -> str:
    """``url`` as it may be shown to an operator: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def create_engine(
    url: str,
    *,
    sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    read_only: bool = False,
    **kwargs: Any,
) -> AsyncEngine:
    """Create the async engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout.

    ``read_only``: every connection refuses writes (SQLite ``PRAGMA query_only``,
    PostgreSQL ``READ ONLY`` transactions); open such a catalog by ``readable_url``.
    """
    url = async_url(url)
    engine = create_async_engine(url, **kwargs)
    database = sqlite_path(url)
    sqlite = make_url(url).get_backend_name() == "sqlite"
    if sqlite:
        _configure_sqlite(engine.sync_engine, sqlite_busy_timeout_ms, database)
    if database is not None:
        twin = create_blocking_engine(make_url(url).set(drivername="sqlite+pysqlite"))
        _configure_sqlite(twin, sqlite_busy_timeout_ms, database)
        _BLOCKING_READERS[engine.sync_engine] = twin
        if read_only:
            event.listen(twin, "connect", _sqlite_query_only)
    if read_only and sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_query_only)
    elif read_only:
        engine = engine.execution_options(postgresql_readonly=True)  # READ ONLY transactions
    return engine


def read_only_url(url: str) -> str | None:
    """``url`` opened so that reading leaves the files as they were; None: no SQLite file.

    A SQLite catalog that has a ``-wal`` file (a server has it open, or crashed) is
    opened ``mode=ro``. Without one, ``mode=ro`` would create ``-wal`` and ``-shm`` and
    leave them behind (a read-only connection cannot remove them), so the file is
    opened as usual with ``PRAGMA query_only`` and the last connection to close
    removes what it created, as SQLite always does.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    path = Path(database)
    if not path.is_file():
        return None
    if not path.with_name(path.name + "-wal").exists():
        return url
    readonly = parsed.set(database=f"file:{quote(str(path.resolve()))}")
    readonly = readonly.update_query_dict({"mode": "ro", "uri": "true"})
    return readonly.render_as_string(hide_password=False)


def _sqlite_query_only(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def blocking_reader(engine: AsyncEngine) -> Engine | None:
    """A blocking engine on the same SQLite file as ``engine``, for reads that run whole on
    one thread (``CatalogBase._query``); None for PostgreSQL and in-memory databases.

    Through aiosqlite every statement costs about four hops between the event loop and
    the driver's thread (cursor, execute, fetch, close), and BEGIN and the rollback more:
    nine or more for a one-statement listing, each waiting for the event loop while
    downloads keep it busy. A read on this engine costs one.
    """
    return _BLOCKING_READERS.get(engine.sync_engine)


async def dispose_engine(engine: AsyncEngine) -> None:
    """Close the pooled connections of ``engine`` and of its blocking reader."""
    await engine.dispose()
    twin = blocking_reader(engine)
    if twin is not None:
        await asyncio.to_thread(twin.dispose)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int, database: Path | None) -> None:
    @event.listens_for(engine, "do_connect")
    def _before_connect(*_args: Any) -> None:
        # Opening a WAL database no other connection holds creates its 32 KiB -shm file.
        if database is not None:
            keep_room(database)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching to WAL waits for other connections' locks.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a committed delete must survive power loss, since its blob file goes next.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        writing = connection.get_execution_options().get("cloudimg_write", False)
        if writing and database is not None:
            keep_room(database)  # a commit appends to the WAL, a delete's commit too
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def keep_room(database: Path, size: int = RESERVE_BYTES) -> None:
    """Hold ``size`` bytes beside a SQLite catalog while its volume has room; free them when full.

    SQLite needs room on its volume to open a WAL database (the ``-shm`` file, whenever no
    other connection has it open) and to commit anything, the delete that would free
    space included. So while the volume has at least twice ``size`` free,
    ``<catalog>.reserve`` holds ``size`` bytes (allocated, not sparse); once less than
    half of ``size`` is free, the file is removed and SQLite gets its bytes. Called before
    each connection and each write transaction; several processes may call it at once.
    """
    reserve = database.with_name(database.name + ".reserve")
    try:
        stat = os.statvfs(database.parent)
        free = stat.f_bavail * stat.f_frsize
        if free < size // 2:
            _release(reserve, size)
        elif free >= 2 * size:
            _refill(reserve, size)
    except OSError as exc:  # a missing or read-only directory: the open reports it
        log.debug("could not adjust the catalog reserve %s: %s", reserve, exc)


def _release(reserve: Path, size: int) -> None:
    try:
        reserve.unlink()
    except FileNotFoundError:
        return
    log.warning(
        "the catalog's volume is full: released the %d MiB kept in %s so the catalog can"
        " open and commit; DELETE and `cloudimg gc` free space",
        size // (1024 * 1024),
        reserve,
    )


def _refill(reserve: Path, size: int) -> None:
    try:
        if reserve.stat().st_size >= size:
            return
    except FileNotFoundError:
        pass
    fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        reserve.unlink(missing_ok=True)  # a part of a reserve only takes room away
        raise
    finally:
        os.close(fd)


def describe_database_error(exc: BaseException, url: str) -> str | None:
    """One line that says what is wrong with the catalog database at ``url`` and what to do.

    None when ``exc`` is not about reaching or opening the database (a bug keeps its
    traceback). The line never shows the URL's password.
    """
    parsed = make_url(async_url(url))
    causes = _causes(exc)
    if parsed.get_backend_name() == "sqlite":
        line = _describe_sqlite(causes, sqlite_path(url))
    else:
        line = _describe_postgres(causes, parsed)
    if line is None:
        return None
    if parsed.password:
        line = line.replace(str(parsed.password), "***")
    return line


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver error it wraps, and what that was raised from."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 8:
        current = todo.pop(0)
        if current is None or current in seen:
            continue
        seen.append(current)
        orig = current.orig if isinstance(current, DBAPIError) else None
        todo += [orig, current.__cause__, current.__context__]
    return seen


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().split("\n", 1)[0][:300]


def _describe_sqlite(causes: list[BaseException], database: Path | None) -> str | None:
    error = next((c for c in causes if isinstance(c, sqlite3.Error)), None)
    if error is None:
        return None
    message = str(error)
    where = f"the SQLite catalog {database}"
    folder = database.parent if database else Path()
    if "unable to open" in message:
        return (
            f"cannot open {where}: {message}; check that {folder} exists and that"
            f" uid {os.getuid()} may write it"
        )
    if "readonly" in message:
        return f"{where} is read-only for uid {os.getuid()}: {message}; check its owner and mode"
    if "disk I/O" in message or "full" in message:
        if _volume_full(folder):
            return (
                f"{where} cannot be written: {message}; the volume of {folder} is full and the"
                " catalog's reserve is used up: remove files that are not the registry's, or"
                " grow the volume"
            )
        return f"{where} cannot be written: {message}; is the volume of {folder} failing?"
    if "locked" in message or "busy" in message:
        return f"{where} stayed locked by another process: {message}; try again"
    if "not a database" in message or "malformed" in message:
        return f"{where} is damaged or not a SQLite database: {message}"
    return f"{where}: {message}" if isinstance(error, sqlite3.OperationalError) else None


def _volume_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < RESERVE_BYTES // 2


_AUTH_STATES = {"28P01", "28000"}  # invalid_password, invalid_authorization_specification


def _describe_postgres(causes: list[BaseException], parsed: URL) -> str | None:
    server = f"PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432}"
    for cause in causes:
        state = str(getattr(cause, "sqlstate", "") or "")
        if not type(cause).__module__.startswith("asyncpg"):
            continue
        if state == "3D000":
            return (
                f'{server} has no database "{parsed.database}": create it (createdb) or'
                " correct the database name in --database-url (CLOUDIMG_DATABASE_URL)"
            )
        if state in _AUTH_STATES:
            return (
                f'{server} refused user "{parsed.username}": {_first_line(cause)}; check the user'
                " and password in --database-url (CLOUDIMG_DATABASE_URL)"
            )
        if state.startswith(("08", "53", "57P")) or "Connection" in type(cause).__name__:
            return f"{server} cannot serve the catalog: {_first_line(cause)}"
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return f'cannot resolve the PostgreSQL host "{parsed.host}": {cause.strerror}'
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"cannot connect to {server}: connection refused; is PostgreSQL running, and"
                " are the host and port in --database-url (CLOUDIMG_DATABASE_URL) right?"
            )
        if isinstance(cause, TimeoutError):
            return f"{server} did not answer in time: is the host right and reachable?"
        if isinstance(cause, OSError) and cause.errno not in (None, errno.ENOENT):
            return f"cannot connect to {server}: {cause.strerror or _first_line(cause)}"
    return None
