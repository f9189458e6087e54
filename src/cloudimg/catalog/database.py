"""Engine creation and schema migrations for the catalog database."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = [
    "MIGRATION_LOCK_KEY",
    "WRITE",
    "SchemaVersionError",
    "alembic_config",
    "check_schema",
    "create_engine",
    "current_revision",
    "head_revision",
    "lock_migrations",
    "upgrade_database",
]

SQLITE_BUSY_TIMEOUT_MS = 15_000
WRITE = {"cloudimg_write": True}
"""Execution options of a connection that will write: on SQLite it takes the write
lock when its transaction begins, so two writers queue on the busy timeout instead
of failing when one of them upgrades a read lock."""
MIGRATION_LOCK_KEY = 0x636C6F7564696D67
"""PostgreSQL advisory lock key ("cloudimg" in ASCII) held while the schema is migrated."""


class SchemaVersionError(RuntimeError):
    """The catalog's schema revision is not the one this code was written for."""


def create_engine(
    url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any
) -> AsyncEngine:
    """Create the async engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    engine = create_async_engine(url, **kwargs)
    if make_url(url).get_backend_name() == "sqlite":
        _configure_sqlite(engine, sqlite_busy_timeout_ms)
    return engine


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
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

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        writing = connection.get_execution_options().get("cloudimg_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def alembic_config(url: str) -> Config:
    """An Alembic configuration for ``url`` using the migrations installed with the package."""
    config = Config()
    config.set_main_option("script_location", str(files("cloudimg.migrations")))
    # ConfigParser interpolation would eat a '%' in a password.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, once however many processes call it at a time.

    Blocking: call it from a thread in async code. On PostgreSQL the migration
    transaction holds an advisory lock (see ``migrations/env.py``); on SQLite a
    ``flock`` on ``<database>.migrate.lock`` beside the file is held for the whole
    upgrade, because Alembic commits SQLite migrations one at a time.

    Raises:
        SchemaVersionError: the database is at a revision this code does not know
            (a newer cloudimg migrated it), or, when ``revision`` is ``head``, it is not
            at this code's head afterwards.
    """
    config = alembic_config(url)
    with _sqlite_migration_lock(url):
        current = current_revision(url)
        if current is not None and _unknown(current):
            raise SchemaVersionError(
                f"the catalog schema is at revision {current}, which this cloudimg does not"
                f" know (its newest is {head_revision()}): a newer cloudimg migrated it;"
                " run that version, or restore the catalog from before the upgrade"
            )
        command.upgrade(config, revision)
    if revision == "head":
        check_schema(url)


def check_schema(url: str) -> None:
    """Raise ``SchemaVersionError`` unless the catalog is at this code's head revision."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SchemaVersionError(
            f"the catalog schema is at revision {current or 'none (empty database)'},"
            f" this cloudimg needs {head}; run `cloudimg db upgrade` with this version"
        )


def head_revision() -> str:
    """The newest revision of the migrations installed with this code."""
    head = _scripts().get_current_head()
    assert head is not None, "the migrations have no head"
    return head


def current_revision(url: str) -> str | None:
    """The revision in the catalog's ``alembic_version`` table; None for an empty database.

    Blocking (runs its own event loop): call it from a thread in async code.
    """

    async def read() -> str | None:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision()
                )
        finally:
            await engine.dispose()

    return asyncio.run(read())


def lock_migrations(connection: Connection) -> None:
    """Serialise migrations on PostgreSQL: an advisory lock until the transaction ends.

    Call it inside the migration transaction, before Alembic reads the version table, so
    a second process waits and then finds the schema migrated. SQLite is locked by
    ``upgrade_database`` instead.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(files("cloudimg.migrations")))
    return ScriptDirectory.from_config(config)


def _unknown(revision: str) -> bool:
    return all(script.revision != revision for script in _scripts().walk_revisions())


@contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    """An exclusive ``flock`` on a file beside a SQLite database (nothing for other URLs)."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        yield
