"""The catalog's schema: Alembic migrations to this code's head, and the checks that a
catalog is at it (``migrations/`` holds the revisions, installed as
``cloudimg.migrations``). Engines and connections are ``database.py``'s."""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection

from cloudimg.catalog.database import (
    NoCatalogError,
    async_url,
    create_engine,
    keep_room,
    read_only_url,
    sqlite_path,
)

__all__ = [
    "MIGRATION_LOCK_KEY",
    "ModelMismatchError",
    "SchemaVersionError",
    "alembic_config",
    "check_models",
    "check_schema",
    "current_revision",
    "head_revision",
    "lock_migrations",
    "readable_url",
    "upgrade_database",
]

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x636C6F7564696D67
"""PostgreSQL advisory lock key ("cloudimg" in ASCII) held while the schema is migrated."""


class SchemaVersionError(RuntimeError):
    """The catalog's schema revision is not the one this code was written for."""


class ModelMismatchError(RuntimeError):
    """The catalog's schema differs from the models (``check_models``; Alembic's words)."""


def alembic_config(url: str) -> Config:
    """An Alembic configuration for ``url`` using the migrations installed with the package."""
    config = Config()
    config.set_main_option("script_location", str(files("cloudimg.migrations")))
    # ConfigParser interpolation would eat a '%' in a password.
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, once however many processes call it at a time.

    A catalog at this code's head is left alone: no lock file, no Alembic log lines, so
    migrations are logged only when one runs. Blocking: call it from a thread in async
    code. On PostgreSQL the migration transaction holds an advisory lock (see
    ``migrations/env.py``); on SQLite a ``flock`` on ``<database>.migrate.lock`` beside
    the file is held for the whole upgrade, because Alembic commits SQLite migrations
    one at a time.

    Raises:
        SchemaVersionError: the database is at a revision this code does not know
            (a newer cloudimg migrated it), or, when ``revision`` is ``head``, it is not
            at this code's head afterwards.
    """
    url = async_url(url)
    database = sqlite_path(url)
    if database is not None:
        keep_room(database)  # before the lock file and the -shm file are created
    current = current_revision(url)
    _refuse_unknown(current)
    if revision == "head" and current == head_revision():
        return
    with _sqlite_migration_lock(url):
        _refuse_unknown(current_revision(url))
        command.upgrade(alembic_config(url), revision)
    if revision == "head":
        check_schema(url)


def _refuse_unknown(current: str | None) -> None:
    if current is not None and _unknown(current):
        raise SchemaVersionError(
            f"the catalog schema is at revision {current}, which this cloudimg does not"
            f" know (its newest is {head_revision()}): a newer cloudimg migrated it;"
            " run that version, or restore the catalog from before the upgrade"
        )


def check_models(url: str) -> None:
    """Raise ``ModelMismatchError`` when the catalog's schema differs from the models."""
    try:
        with _quiet_alembic():
            command.check(alembic_config(url))
    except CommandError as exc:
        raise ModelMismatchError(str(exc)) from None


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

    with _quiet_alembic():
        return asyncio.run(read())


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """No "Context impl" INFO lines for a mere look at the version table."""
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    database = sqlite_path(url)
    if database is None:
        yield
        return
    lock_path = database.with_name(database.name + ".migrate.lock")
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        yield


def readable_url(url: str) -> str:
    """The URL that opens the catalog at ``url`` for reading, leaving its files as they were.

    Creates and migrates nothing: not a SQLite file or its ``-wal``/``-shm``, no
    migration lock file, no schema. Blocking (runs event loops of its own).

    Raises:
        NoCatalogError: no catalog file, or an empty database: nothing to read yet.
        SchemaVersionError: the catalog exists at another schema revision than this
            code's (``cloudimg db upgrade`` first: a reader must not migrate).
    """
    readable = read_only_url(url)
    if readable is None or current_revision(readable) is None:
        raise NoCatalogError("there is no catalog yet")
    check_schema(readable)
    return readable
