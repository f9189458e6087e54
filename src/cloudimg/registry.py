"""The one way to open a registry: its blob store, catalog engine, catalog and the OCI
slice's store (whose hooks every tag write of the catalog runs).

Used by the app (``api/app.py``), by the maintenance commands (``cli/output.py``) and by
``import-legacy --dry-run`` (read only), so all honour the SQLite busy timeout and the
same schema rule: only ``serve``, ``db upgrade`` and ``import-legacy`` (which may start
a new data root) migrate; ``gc``, ``fsck``, ``du``, ``unblock`` and the dry run refuse a
catalog that is behind, naming ``cloudimg db upgrade``. Nothing here knows the database
library: the engine is the catalog's opaque ``CatalogEngine``
(``tests/test_architecture.py`` keeps it so).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from cloudimg.blobstore import FilesystemBlobStore, OpenedBlobStore
from cloudimg.catalog import Catalog, create_engine, upgrade_database
from cloudimg.catalog.database import CatalogEngine, dispose_engine
from cloudimg.catalog.schema import check_schema, readable_url
from cloudimg.config import Settings, SettingsError
from cloudimg.oci.store import OciStore

if TYPE_CHECKING:
    from cloudimg.blobstore.s3 import S3Location

__all__ = ["Registry", "blob_location", "open_blob_store", "open_registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Registry:
    """An open registry; ``close()`` (or leaving ``async with``) releases its connections."""

    blobs: OpenedBlobStore
    """The store the settings name (``open_blob_store``): callers use its interface only."""
    engine: CatalogEngine
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


def open_registry(settings: Settings, *, migrate: bool | None, read_only: bool = False) -> Registry:
    """Open the registry of ``settings``; connections are made on first use.

    ``migrate``: True creates the data root and its layout and brings the catalog
    schema to this code's head (``serve``, ``db upgrade``, ``import-legacy``); False
    requires the schema at head already (``gc``, ``fsck``, ``du``, ``unblock``); None leaves
    the schema alone and touches no database: the app, which ``cloudimg serve`` builds
    (in each worker) after it migrated once, and which must start even while the
    database is away (it answers 503 until it is back). Blocking (the schema step
    runs an event loop of its own): from inside a running loop it runs in a thread.

    ``read_only`` (with ``migrate=False``; ``import-legacy --dry-run``): the catalog is
    opened for reading only, creating nothing (not the data root, not a SQLite file or
    its ``-wal``/``-shm``, no migration lock file, no schema), and its connections
    refuse writes.

    Raises:
        SchemaVersionError: the schema is behind (run ``cloudimg db upgrade``) or ahead
            of this code.
        NoCatalogError: ``read_only`` and there is no catalog yet (no SQLite file, or a
            database without the schema).
    """
    url = settings.resolved_database_url
    blobs = open_blob_store(settings)
    if read_only:
        if migrate is not False:
            raise ValueError("a registry opened read only is not migrated: migrate=False")
        url = _blocking(readable_url, url)
    elif migrate:
        if settings.uses_data_root:
            settings.data_root.mkdir(parents=True, exist_ok=True)
        _blocking(upgrade_database, url)
        blobs.ensure_layout()
    elif migrate is False:
        _blocking(check_schema, url)
    engine = create_engine(
        url,
        sqlite_busy_timeout_ms=round(settings.sqlite_busy_timeout_secs * 1000),
        read_only=read_only,
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


def blob_location(settings: Settings) -> S3Location | None:
    """The bucket ``settings.blob_store`` names, or None for the data root's files.

    Credentials come from boto3's usual chain (``AWS_*`` variables, a shared credentials
    file, a role), never from the settings.

    Raises:
        SettingsError: on ``s3_endpoint`` or ``blob_store``, saying what is wrong.
    """
    if not settings.blob_store:
        return None
    # Imported here: boto3 costs every start ~0.2 s of CPU, and only a bucket needs it.
    from cloudimg.blobstore.s3.url import check_endpoint, parse_s3_url

    try:
        check_endpoint(settings.s3_endpoint)
    except ValueError as exc:
        raise SettingsError("s3_endpoint", str(exc)) from None
    try:
        return parse_s3_url(
            settings.blob_store,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            path_style=settings.s3_path_style,
        )
    except ValueError as exc:
        raise SettingsError("blob_store", str(exc)) from None


def open_blob_store(settings: Settings) -> OpenedBlobStore:
    """The blob store ``settings.blob_store`` names: a bucket, or the data root's files.

    Nothing is reached yet (``OpenedBlobStore.check`` is the start-up's one attempt).

    Raises:
        SettingsError: ``blob_store`` or ``s3_endpoint`` cannot be used.
    """
    location = blob_location(settings)
    if location is None:
        return FilesystemBlobStore(settings.data_root)
    from cloudimg.blobstore.s3 import S3BlobStore  # boto3: see blob_location

    return S3BlobStore(location)


def _blocking(step: Callable[[str], T], url: str) -> T:
    """Run ``step(url)``; in a thread when an event loop runs here (asyncio.run cannot nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return step(url)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(step, url).result()
