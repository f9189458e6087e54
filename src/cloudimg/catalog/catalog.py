"""The catalog: one object over the database and the blob store, composed by job."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudimg.blobstore import BlobStore
from cloudimg.catalog.history import DEFAULT_KEEP_HISTORY
from cloudimg.catalog.hooks import TagHooks
from cloudimg.catalog.maintenance import CatalogMaintenance
from cloudimg.catalog.reads import CatalogReads
from cloudimg.catalog.summaries import CatalogSummaries
from cloudimg.catalog.tags import TagWrites

__all__ = ["Catalog"]


class Catalog(CatalogReads, CatalogSummaries, TagWrites, CatalogMaintenance):
    """The names-to-digests catalog over a blob store.

    API reads (``reads``), the web pages' summary listings (``summaries``), tag writes
    (``tags``), maintenance primitives (``maintenance``) over the transaction plumbing
    (``transaction``); tag history and retention (``history``) under the tag writes,
    which run the ``hooks`` a slice beside the catalog registers (``hooks``: the OCI
    slice's kept pushes, ``cloudimg.oci.store``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        blobs: BlobStore,
        *,
        keep_history: int = DEFAULT_KEEP_HISTORY,
        immutable_rules: Sequence[str] = (),
    ) -> None:
        super().__init__(engine, blobs)
        self.hooks = TagHooks([], [], [])
        self.configure_history(keep_history, immutable_rules)
