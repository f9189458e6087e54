"""Alembic environment: async engines, the catalog's metadata, batch mode for SQLite."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from cloudimg.catalog.database import WRITE, create_engine
from cloudimg.catalog.models import Base
from cloudimg.catalog.schema import lock_migrations

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        lock_migrations(connection)  # PostgreSQL: one migrating process at a time
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.connect() as connection:
            # SQLite: each migration transaction takes the write lock when it begins
            # (BEGIN IMMEDIATE), so it waits for other writers instead of failing when
            # it upgrades the read lock of its version check.
            writing = await connection.execution_options(**WRITE)
            await writing.run_sync(_configure)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    asyncio.run(_run_online())
