"""The catalog: names to digests, metadata and reference counts, in a SQL database."""

from cloudimg.catalog.catalog import Catalog
from cloudimg.catalog.database import create_engine, upgrade_database
from cloudimg.catalog.paging import ALL, Page
from cloudimg.catalog.records import (
    BlobBlock,
    BlobRecord,
    BlobRef,
    BlobState,
    CatalogSnapshot,
    RefcountRepair,
    StorageTotals,
    TagInfo,
    TagRecord,
)

__all__ = [
    "ALL",
    "BlobBlock",
    "BlobRecord",
    "BlobRef",
    "BlobState",
    "Catalog",
    "CatalogSnapshot",
    "Page",
    "RefcountRepair",
    "StorageTotals",
    "TagInfo",
    "TagRecord",
    "create_engine",
    "upgrade_database",
]
