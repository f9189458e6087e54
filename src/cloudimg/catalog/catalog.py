"""The catalog: one repository object per concern over one database and blob store.

Callers take the concern they use (``catalog.reads``, ``catalog.tags``, ...), not one
object with every method. Each concern is a ``CatalogBase`` (``transaction.py``: its
sessions, the write attempts and the row steps writers share) over the same engine,
so they share its connection pools and the SQLite blocking reader.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudimg.blobstore import BlobStore
from cloudimg.catalog.events import EventLog
from cloudimg.catalog.history import DEFAULT_KEEP_HISTORY
from cloudimg.catalog.hooks import TagHooks
from cloudimg.catalog.maintenance import CatalogMaintenance
from cloudimg.catalog.reads import CatalogReads
from cloudimg.catalog.summaries import CatalogSummaries
from cloudimg.catalog.tags import TagWrites

__all__ = ["Catalog"]


class Catalog:
    """The names-to-digests catalog over a blob store, by concern.

    - ``reads``: what ``/reg`` and the web pages list and resolve, and a download's open;
    - ``summaries``: the web pages' repository and image summaries;
    - ``tags``: an upload's commit, a retag, a delete, immutability, and the tag history
      and retention those writes go through (``history.py``); they run the ``hooks`` a
      slice beside the catalog registers (the OCI slice's kept pushes);
    - ``maintenance``: the primitives of gc, fsck, ``unblock`` and start-up;
    - ``events``: the change events every write above queues in its transaction, each
      endpoint's delivery state, the dead letters and the delivery lease (docs/events.md).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        blobs: BlobStore,
        *,
        keep_history: int = DEFAULT_KEEP_HISTORY,
        immutable_rules: Sequence[str] = (),
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.hooks = TagHooks([], [], [])
        self.reads = CatalogReads(engine, blobs)
        self.summaries = CatalogSummaries(engine, blobs)
        self.tags = TagWrites(engine, blobs)
        self.tags.configure(keep_history, immutable_rules, self.hooks)
        self.maintenance = CatalogMaintenance(engine, blobs)
        self.events = EventLog(engine, blobs)
