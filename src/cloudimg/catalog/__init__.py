"""The catalog: names to digests, metadata and reference counts, in a SQL database."""

from cloudimg.catalog.database import create_engine, upgrade_database
from cloudimg.catalog.operations import BlobRef, Catalog, TagInfo

__all__ = ["BlobRef", "Catalog", "TagInfo", "create_engine", "upgrade_database"]
