"""The one way to open a registry: its blob store, catalog engine, catalog and the OCI
slice's store (whose hooks every tag write of the catalog runs).

Used by the app (``api/app.py``) and by the maintenance commands (``cli/output.py``),
so both honour the SQLite busy timeout and the same schema rule: only ``serve``,
``db upgrade`` and ``import-legacy`` (which may start a new data root) migrate;
``gc``, ``fsck``, ``du`` and ``unblock`` refuse a catalog that is behind, naming
``cloudimg db upgrade``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudimg.blobstore import FilesystemBlobStore
from cloudimg.catalog import Catalog, create_engine, upgrade_database
from cloudimg.catalog.database import check_schema, dispose_engine
from cloudimg.config import Settings
from cloudimg.oci.store import OciStore

__all__ = ["Registry", "open_registry"]


@dataclass(frozen=True)
class Registry:
    """An open registry; ``close()`` (or leaving ``async with``) releases its connections."""

    blobs: FilesystemBlobStore
    engine: AsyncEngine
    catalog: Catalog
    oci: OciStore
    """The OCI slice's tables (upload sessions, kept pushes, containerDisk digests)."""

    async def close(self) -> None:
        """Close the catalog's pooled connections (in the event loop that used them)."""
        await dispose_engine(self.engine)

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.close()


def open_registry(settings: Settings, *, migrate: bool | None) -> Registry:
    """Open the registry of ``settings``; connections are made on first use.

    ``migrate``: True creates the data root and its layout and brings the catalog
    schema to this code's head (``serve``, ``db upgrade``, ``import-legacy``); False
    requires the schema at head already (``gc``, ``fsck``, ``du``, ``unblock``); None leaves
    the schema alone and touches no database: the app, which ``cloudimg serve`` builds
    (in each worker) after it migrated once, and which must start even while the
    database is away (it answers 503 until it is back). Blocking (the schema step
    runs an event loop of its own): from inside a running loop it runs in a thread.

    Raises:
        SchemaVersionError: the schema is behind (run ``cloudimg db upgrade``) or ahead
            of this code.
    """
    url = settings.resolved_database_url
    blobs = FilesystemBlobStore(settings.data_root)
    if migrate:
        settings.data_root.mkdir(parents=True, exist_ok=True)
        _blocking(upgrade_database, url)
        blobs.ensure_layout()
    elif migrate is False:
        _blocking(check_schema, url)
    engine = create_engine(
        url, sqlite_busy_timeout_ms=round(settings.sqlite_busy_timeout_secs * 1000)
    )
    catalog = Catalog(
        engine,
        blobs,
        keep_history=settings.keep_history,
        immutable_rules=settings.immutable_tags,
    )
    oci = OciStore(engine, blobs)
    oci.hook_into(catalog.hooks)
    return Registry(blobs, engine, catalog, oci)


def _blocking(step: Callable[[str], None], url: str) -> None:
    """Run ``step(url)``; in a thread when an event loop runs here (asyncio.run cannot nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        step(url)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(step, url).result()
