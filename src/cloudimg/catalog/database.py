"""Engine creation and schema migrations for the catalog database."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["WRITE", "alembic_config", "create_engine", "upgrade_database"]

SQLITE_BUSY_TIMEOUT_MS = 15_000
WRITE = {"cloudimg_write": True}
"""Execution options of a connection that will write: on SQLite it takes the write
lock when its transaction begins, so two writers queue on the busy timeout instead
of failing when one of them upgrades a read lock."""


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    engine = create_async_engine(url, **kwargs)
    if make_url(url).get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching to WAL waits for other connections' locks.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
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
    """Apply migrations up to ``revision``. Blocking: call it from a thread in async code."""
    command.upgrade(alembic_config(url), revision)
