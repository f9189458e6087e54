"""The catalog: one repository object per concern over one database and blob store.

Callers take the concern they use (``catalog.reads``, ``catalog.tags``, ...), not one
object with every method. Each concern is a ``CatalogBase`` (``transaction.py``: its
sessions, the write attempts and the row steps writers share) over the same engine,
so they share its connection pools and the SQLite blocking reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudimg.blobstore import BlobStore
from cloudimg.catalog.events import EventLog
from cloudimg.catalog.history import DEFAULT_KEEP_HISTORY
from cloudimg.catalog.hooks import TagHooks
from cloudimg.catalog.maintenance import CatalogMaintenance
from cloudimg.catalog.reads import CatalogReads
from cloudimg.catalog.summaries import CatalogSummaries
from cloudimg.catalog.tags import TagWrites
from cloudimg.catalog.usage import RepositoryUsage

__all__ = ["Catalog"]


class Catalog:
    """The names-to-digests catalog over a blob store, by concern.

    - ``reads``: what ``/reg`` and the web pages list and resolve, and a download's open;
    - ``summaries``: the web pages' repository and image summaries;
    - ``tags``: an upload's commit, a retag, a delete, immutability, and the tag history
      and retention those writes go through (``history.py``); they run the ``hooks`` a
      slice beside the catalog registers (the OCI slice's kept pushes);
    - ``maintenance``: the primitives of gc, fsck, ``unblock`` and start-up;
    - ``usage``: what each repository uses, as its quota counts it (``usage.py``);
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
        if keep_history < 0:
            raise ValueError("keep_history must not be negative")
        self.engine = engine
        self.blobs = blobs
        self.hooks = TagHooks([], [], [])
        self._keep_history = keep_history
        self._immutable_rules = tuple(immutable_rules)

    # Each concern is built on first use: a command builds only what it uses (gc no
    # tag writers, a download no summaries); they share the engine either way.

    @cached_property
    def reads(self) -> CatalogReads:
        return CatalogReads(self.engine, self.blobs)

    @cached_property
    def summaries(self) -> CatalogSummaries:
        return CatalogSummaries(self.engine, self.blobs)

    @cached_property
    def tags(self) -> TagWrites:
        tags = TagWrites(self.engine, self.blobs)
        tags.configure(self._keep_history, self._immutable_rules, self.hooks)
        return tags

    @cached_property
    def maintenance(self) -> CatalogMaintenance:
        return CatalogMaintenance(self.engine, self.blobs)

    @cached_property
    def usage(self) -> RepositoryUsage:
        return RepositoryUsage(self.engine, self.blobs)

    @cached_property
    def events(self) -> EventLog:
        return EventLog(self.engine, self.blobs)
