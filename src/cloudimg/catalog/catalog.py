"""The catalog: one object over the database and the blob store, composed by job."""

from __future__ import annotations

from cloudimg.catalog.maintenance import CatalogMaintenance
from cloudimg.catalog.reads import CatalogReads
from cloudimg.catalog.tags import TagWrites

__all__ = ["Catalog"]


class Catalog(CatalogReads, TagWrites, CatalogMaintenance):
    """The names-to-digests catalog over a blob store.

    API reads (``reads``), tag writes (``tags``), maintenance primitives
    (``maintenance``) over the transaction plumbing (``transaction``).
    """
