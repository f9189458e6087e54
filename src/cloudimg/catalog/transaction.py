"""Transaction, retry and undo plumbing shared by every catalog operation.

Each change is one write transaction; file-system changes made inside it (trash,
quarantine) are undone when it rolls back and finished when it commits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from cloudimg.blobstore import BlobStore, StagedBlob
from cloudimg.catalog.database import WRITE, blocking_reader
from cloudimg.catalog.errors import is_retryable, translate
from cloudimg.catalog.models import Blob, utcnow
from cloudimg.catalog.outbox import wake_readers, write_queued
from cloudimg.errors import CloudimgError, UnavailableError
from cloudimg.images import Inspection

__all__ = ["CatalogBase", "FileEffects", "WriteAttempt"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_WRITE_ATTEMPTS = 5
# SQLite reads in a WAL database run side by side; a few threads keep a burst of
# listings from queueing behind one another without holding many connections open.
_QUERY_THREADS = 4
_readers: ThreadPoolExecutor | None = None


@dataclass
class FileEffects:
    """Blob store changes made inside a transaction: undone on rollback, finished on commit.

    Each is the store's key of the moved blob and its digest.
    """

    trashed: list[tuple[str, str]] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    """Digests whose blob row went and whose bytes a store that copies to trash removes
    after the commit (``CatalogBase.drop_unreferenced``): nothing to undo."""


def _query_threads() -> ThreadPoolExecutor:
    """The threads SQLite reads run on, made on first use (in the process that serves).

    Not the default executor: uploads hash and write there and image inspections take
    seconds, and a listing must not queue behind them.
    """
    global _readers
    if _readers is None:
        _readers = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix="cloudimg-catalog-read")
    return _readers


@contextmanager
def _domain_errors() -> Iterator[None]:
    """Driver errors raised inside leave as the domain's (``translate``); the domain's own
    errors, and what has no domain meaning, as they are."""
    try:
        yield
    except CloudimgError:
        raise
    except Exception as exc:
        domain = translate(exc)
        if domain is None:
            raise
        raise domain from exc


def _run_query(engine: Engine, query: Callable[[Session], T]) -> T:
    with Session(engine, expire_on_commit=False) as session:
        return query(session)


class WriteAttempt:
    """One try of a write transaction: a session in a transaction that takes the write
    lock, and the file moves made in it (undone on rollback, finished on commit)."""

    def __init__(self, base: CatalogBase, number: int) -> None:
        self._base = base
        self._number = number
        self._stack = AsyncExitStack()
        self.effects = FileEffects()
        self.committed = False

    async def begin(self) -> None:
        self.session = await self._stack.enter_async_context(self._base._sessions())
        await self._stack.enter_async_context(self.session.begin())
        await self.session.connection(execution_options=WRITE)

    async def __aenter__(self) -> tuple[AsyncSession, FileEffects]:
        return self.session, self.effects

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        _traceback: TracebackType | None,
    ) -> bool:
        """Commit (or roll back); True when the attempt lost a race and another follows.

        The events the change queued are written as its last statements (``outbox``).
        """
        error = exc
        announced = False
        if exc is None:
            try:
                announced = await write_queued(self.session)
            except BaseException as raised:  # rolls back below, like a failed change
                error, exc_type, _traceback = raised, type(raised), raised.__traceback__
        try:
            await self._stack.__aexit__(exc_type, error, _traceback)
        except BaseException as raised:  # the commit failed, or the rollback
            error = raised
        if error is None:
            self.committed = True
            if announced:
                wake_readers()
            for trash_key, _digest in self.effects.trashed:
                await self._base.blobs.purge(trash_key)
            for digest in self.effects.dropped:
                await self._base.drop_after_commit(digest)
            return False
        await self._base._undo(self.effects)
        if isinstance(error, Exception) and not isinstance(error, CloudimgError):
            if self._number < _WRITE_ATTEMPTS and is_retryable(error):
                log.info(
                    "catalog write lost a race (attempt %d), retrying: %s", self._number, error
                )
                await asyncio.sleep(0.01 * self._number)
                return True
            domain = translate(error)
            if domain is not None:
                raise domain from error
        if error is exc:
            return False
        raise error


class CatalogBase:
    """Sessions, the write-transaction helper and the row-level steps writers share."""

    def __init__(self, engine: AsyncEngine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._blocking = blocking_reader(engine)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        """A session for plain queries; driver errors leave it as domain errors."""
        with _domain_errors():
            async with self._sessions() as session:
                yield session

    async def _query(self, query: Callable[[Session], T]) -> T:
        """Run ``query``, reads in one session (one transaction), in one go.

        On SQLite ``query`` runs whole on a thread (``_query_threads``) over a blocking
        connection to the same file (``database.blocking_reader``): one hop to a thread
        and back, however many statements, so a listing does not queue for the event
        loop at every statement while downloads keep it busy. Elsewhere (asyncpg needs
        no thread) it runs in an async session. Driver errors leave it as domain errors,
        as from ``_read``.
        """
        if self._blocking is None:
            async with self._read() as session:
                return await session.run_sync(query)
        run = functools.partial(_run_query, self._blocking, query)
        with _domain_errors():
            return await asyncio.get_running_loop().run_in_executor(_query_threads(), run)

    async def _writes(self) -> AsyncIterator[WriteAttempt]:
        """The tries of one write transaction, until one commits; the caller's change runs
        in each: ``async for attempt in self._writes(): async with attempt as (session,
        effects): ...``.

        A lost race between writers (a retryable driver error, at the BEGIN, in the
        change or at the commit) rolls back, undoes the file moves and tries again, up to
        ``_WRITE_ATTEMPTS`` times; the caller's change is code of its own module, called
        by it, not a callback handed down here.
        """
        for number in range(1, _WRITE_ATTEMPTS + 1):
            attempt = WriteAttempt(self, number)
            try:
                await attempt.begin()
            except BaseException as exc:
                if await attempt.__aexit__(type(exc), exc, exc.__traceback__):
                    continue
                raise
            yield attempt
            if attempt.committed:
                return
        raise AssertionError("unreachable: the last attempt commits or raises")

    async def _undo(self, effects: FileEffects) -> None:
        for key, digest in effects.trashed + effects.quarantined:
            await self.blobs.restore_from_trash(key, digest)

    async def _needs_file(self, session: AsyncSession, digest: str) -> bool:
        """Lock the blob row: is it there, served (not quarantined), and its file missing?"""
        blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
        if blob is None or blob.quarantined_at is not None:
            return False
        return await self.blobs.size_of(digest) is None

    @staticmethod
    def _record_inspection(blob: Blob, inspection: Inspection) -> None:
        """What inspection found, on the (locked) blob row; a block is an operator's, left
        alone."""
        blob.format = inspection.format
        blob.virtual_size = inspection.virtual_size
        blob.partition_table = inspection.partition_table
        blob.inspected_at = utcnow()

    async def _lock_or_create_blob(self, session: AsyncSession, staged: StagedBlob) -> Blob:
        blob = await session.scalar(
            select(Blob).where(Blob.digest == staged.blake3).with_for_update()
        )
        if blob is None:
            blob = Blob(
                digest=staged.blake3,
                size=staged.size,
                sha256=staged.sha256,
                refcount=0,
                created_at=utcnow(),
            )
            session.add(blob)
            await session.flush()  # a concurrent creator makes this an IntegrityError: retry
        return blob

    async def _ensure_blob_file(self, staged: StagedBlob, *, displace: bool) -> None:
        """Put the staged bytes in place unless the blob exists (the lock is held)."""
        outcome = await self.blobs.place(staged, displace=displace)
        if outcome == "gone" and await self.blobs.size_of(staged.blake3) != staged.size:
            # A retry after the staging file was consumed, and the blob vanished meanwhile.
            raise UnavailableError("the upload lost a race with a delete; upload again")

    async def _release(self, session: AsyncSession, digest: str, effects: FileEffects) -> None:
        """Drop one reference to ``digest``; the last one trashes the file under the lock."""
        blob = await session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
        if blob is None:
            return
        blob.refcount -= 1
        if blob.refcount > 0:
            return
        await self._drop_blob(session, blob, effects)

    async def _drop_blob(self, session: AsyncSession, blob: Blob, effects: FileEffects) -> None:
        """Delete the (locked) blob row and trash its file under the lock: a rename on a
        file system. A store whose trash is a copy (an object store: time in proportion
        to the blob's size) keeps the blob's bytes until after the commit instead
        (``drop_unreferenced``), so no write waits for the copy."""
        await session.delete(blob)
        await session.flush()
        if self.blobs.trash_copies:
            effects.dropped.append(blob.digest)
            return
        trash_key = await self.blobs.move_to_trash(blob.digest)
        if trash_key is not None:
            effects.trashed.append((trash_key, blob.digest))

    async def drop_after_commit(self, digest: str) -> None:
        """``drop_unreferenced`` for a committed change, which stands whatever happens
        here: a store that fails leaves an orphan that gc removes, as a crash would."""
        try:
            await self.drop_unreferenced(digest)
        except (CloudimgError, OSError) as exc:
            log.warning("blob %s stays in the store until gc removes it: %s", digest, exc)

    async def drop_unreferenced(self, digest: str) -> bool:
        """Take the bytes of a blob no row names out of a store whose trash is a copy.

        The copy to trash is made first, with no lock held (readers open on the blob
        find its bytes there for the store's reader grace); then, under the digest's
        lock (a placeholder row, gone at commit: an upload committing the same digest
        waits for it), the blob's key is deleted if still no row names it, which takes
        no time in proportion to its size. A crash in between leaves an unreferenced
        blob and a trashed copy, both removed by gc after its grace; a blob named again
        meanwhile keeps its key. True when the blob's key went.
        """
        copy = await self.blobs.copy_to_trash(digest)
        if copy is None:
            return False
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                forgotten = await self._forget_unnamed(session, digest)
        await self.blobs.purge(copy)  # kept for readers until the grace, then deleted
        return forgotten

    async def _forget_unnamed(self, session: AsyncSession, digest: str) -> bool:
        """Under the digest's lock: delete the blob's key unless a row names it."""
        if await session.scalar(select(Blob.digest).where(Blob.digest == digest)):
            return False
        placeholder = Blob(digest=digest, size=0, sha256="0" * 64, refcount=0)
        placeholder.created_at = utcnow()
        session.add(placeholder)
        await session.flush()
        await self.blobs.forget(digest)
        await session.delete(placeholder)
        await session.flush()
        return True

    async def restore_blob(self, digest: str) -> bool:
        """Put a trashed file of ``digest`` back if the catalog still needs it.

        A crash between a delete's (or an overwrite's) rename into ``trash/`` and its
        commit leaves the blob row and its tags, with the file in trash. Under the
        digest's lock, as the delete took it, the file goes back when the row is still
        there (not quarantined) and its file is missing; a delete that is about to
        commit holds the lock, so we wait for it and then find no row. True when a
        file was put back.
        """
        copies = [entry.key for entry in await self.blobs.list_trash() if entry.digest == digest]
        if not copies:
            return False

        async def change(session: AsyncSession, _effects: FileEffects) -> bool:
            if await self._needs_file(session, digest):
                for key in copies:
                    if await self.blobs.restore_from_trash(key, digest):
                        return True
            return False

        async for attempt in self._writes():
            async with attempt as (session, effects):
                restored = await change(session, effects)
        if restored:
            log.warning(
                "put blob %s back from trash: its delete never committed (a crash?)", digest
            )
        return restored
