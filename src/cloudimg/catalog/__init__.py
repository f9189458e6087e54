"""The catalog: names to digests, metadata and reference counts, in a SQL database."""

from cloudimg.catalog.catalog import Catalog
from cloudimg.catalog.database import create_engine
from cloudimg.catalog.history import (
    DEFAULT_KEEP_HISTORY,
    HistoryEntry,
    Precondition,
    WriteOptions,
)
from cloudimg.catalog.paging import ALL, SORTS, Page, Sort
from cloudimg.catalog.records import (
    META_INDEX_CHARS,
    BlobBlock,
    BlobRecord,
    BlobRef,
    BlobState,
    CatalogSnapshot,
    GcRecord,
    ImageDetails,
    MetaQuery,
    RefcountRepair,
    RepositoryDetails,
    StorageTotals,
    TagDetails,
    TagInfo,
    TagRecord,
)
from cloudimg.catalog.schema import upgrade_database
from cloudimg.catalog.usage import QuotaGuard, RepoUse

__all__ = [
    "ALL",
    "DEFAULT_KEEP_HISTORY",
    "META_INDEX_CHARS",
    "SORTS",
    "BlobBlock",
    "BlobRecord",
    "BlobRef",
    "BlobState",
    "Catalog",
    "CatalogSnapshot",
    "GcRecord",
    "HistoryEntry",
    "ImageDetails",
    "MetaQuery",
    "Page",
    "Precondition",
    "QuotaGuard",
    "RefcountRepair",
    "RepoUse",
    "RepositoryDetails",
    "Sort",
    "StorageTotals",
    "TagDetails",
    "TagInfo",
    "TagRecord",
    "WriteOptions",
    "create_engine",
    "upgrade_database",
]
