"""Tag history and retention: every change of a tag recorded, the last N digests held.

Each change of a tag (created, moved by an upload, retagged, deleted, made immutable or
released) adds a ``tag_history`` row keyed by the tag's names, so a deleted tag's history
stays readable. Retention: of the entries that pointed the tag at bytes (``created``,
``moved``, ``retagged``), the newest entry of each of the last ``keep_history`` distinct
digests the tag held *before* its current state is ``retained`` and holds one reference
on its blob, exactly as a tag does: a blob's reference count is its tags plus its
retained history entries. Older entries stay as records and hold nothing.

Every step runs inside the writer's transaction, after the tag row (or, for a deleted
tag, the tag's history rows) is locked, so two writers of one tag never interleave.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.catalog.events import tag_event
from cloudimg.catalog.hooks import TagHooks
from cloudimg.catalog.models import Blob, Tag, TagHistory, utcnow
from cloudimg.catalog.outbox import queue_event
from cloudimg.catalog.records import TagInfo
from cloudimg.catalog.transaction import CatalogBase, FileEffects
from cloudimg.errors import NotFoundError, TagImmutableError

__all__ = [
    "DEFAULT_KEEP_HISTORY",
    "Action",
    "HistoryEntry",
    "Precondition",
    "TagHistoryLog",
    "WriteOptions",
]

DEFAULT_KEEP_HISTORY = 3
"""Previous digests each tag holds, like CDI's ``importsToKeep``."""

Action = Literal["created", "moved", "retagged", "deleted", "immutable", "released"]
_POINTING = ("created", "moved", "retagged")
"""Actions that point the tag at bytes: the entries retention chooses from."""

Precondition = Callable[[TagInfo | None], None]
"""Called with the tag as it is, under the write lock (None: no such tag); raises
``PreconditionFailedError`` to refuse the write."""

Names = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """What a tag write carries besides its names and bytes."""

    actor: str | None = None
    """Who writes (a write token's name), recorded in the history; never a secret."""
    precondition: Precondition | None = None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change of a tag, as the history endpoint shows it."""

    id: int
    action: str
    digest: str
    size: int
    meta: dict[str, Any]
    at: datetime
    actor: str | None
    retained: bool
    """Whether the entry holds its bytes (they download by digest reference)."""


def _of(names: Names) -> Any:
    repo, image, tag = names
    return (TagHistory.repository == repo, TagHistory.image == image, TagHistory.tag == tag)


class TagHistoryLog(CatalogBase):
    """Record, retain, read and purge the history of tags; immutability rules."""

    keep_history: int = DEFAULT_KEEP_HISTORY
    immutable_rules: tuple[str, ...] = ()
    """Glob patterns over ``repo/image/tag``: an existing tag that matches is immutable."""
    hooks: TagHooks
    """What the slices beside the catalog run in and after every tag write (``hooks.py``)."""

    def configure(self, keep_history: int, immutable_rules: Sequence[str], hooks: TagHooks) -> None:
        """Set retention and the immutability rules (``Settings`` give them), and the hooks
        the tag writes run (the catalog's, which a slice registers with)."""
        if keep_history < 0:
            raise ValueError("keep_history must not be negative")
        self.keep_history = keep_history
        self.immutable_rules = tuple(immutable_rules)
        self.hooks = hooks

    def immutable_by_rule(self, names: Names) -> str | None:
        """The first rule ``repo/image/tag`` matches, None when none does."""
        path = "/".join(names)
        return next((r for r in self.immutable_rules if fnmatch.fnmatchcase(path, r)), None)

    def _refuse_immutable(self, names: Names, tag: Tag | None, doing: str) -> None:
        if tag is not None:
            self.refuse_immutable(names, tag.immutable, doing)

    def refuse_immutable(self, names: Names, immutable: bool, doing: str) -> None:
        """Raise ``TagImmutableError`` for an existing tag that is immutable (``immutable``,
        or by an operator's rule); callers outside a write check early with it."""
        rule = self.immutable_by_rule(names)
        if immutable or rule is not None:
            repo, image, name = names
            context: dict[str, Any] = {"repo": repo, "image": image, "tag": name}
            if rule is not None:
                context["rule"] = rule
            raise TagImmutableError(f"the tag is immutable and cannot be {doing}", context)

    async def _current_info(
        self, session: AsyncSession, names: Names, tag: Tag | None
    ) -> TagInfo | None:
        """The locked tag as a precondition sees it."""
        if tag is None:
            return None
        blob = await session.scalar(select(Blob).where(Blob.digest == tag.digest))
        assert blob is not None, "a tag names a blob row (foreign key)"
        return TagInfo(
            *names,
            digest=blob.digest,
            sha256=blob.sha256,
            size=blob.size,
            meta=dict(tag.meta),
            created=tag.created_at,
            updated=tag.updated_at,
        )

    async def _check(
        self, session: AsyncSession, names: Names, tag: Tag | None, options: WriteOptions
    ) -> None:
        if options.precondition is not None:
            options.precondition(await self._current_info(session, names, tag))

    async def _record(
        self,
        session: AsyncSession,
        names: Names,
        action: Action,
        blob: Blob,
        meta: dict[str, Any],
        actor: str | None,
        at: datetime | None = None,
        *,
        announce: bool = True,
    ) -> None:
        """Add the history entry of a change and, unless ``announce`` is off (an entry
        that records an old state, not a change), queue its event (``outbox``)."""
        repo, image, tag = names
        if announce:
            queue_event(session, *tag_event(names, action, blob, meta, actor))
        session.add(
            TagHistory(
                repository=repo,
                image=image,
                tag=tag,
                action=action,
                digest=blob.digest,
                size=blob.size,
                meta=meta,
                at=at or utcnow(),
                actor=actor,
                retained=False,
            )
        )
        await session.flush()

    async def _ensure_origin(self, session: AsyncSession, names: Names, tag: Tag) -> None:
        """Give a tag stored before history existed a ``created`` entry for its state.

        So that moving or deleting it retains its bytes like any other tag's.
        """
        known = await session.scalar(select(TagHistory.id).where(*_of(names)).limit(1))
        if known is not None:
            return
        blob = await session.scalar(select(Blob).where(Blob.digest == tag.digest))
        assert blob is not None, "a tag names a blob row (foreign key)"
        await self._record(
            session, names, "created", blob, dict(tag.meta), None, tag.updated_at, announce=False
        )

    async def _retain(
        self, session: AsyncSession, names: Names, current: str | None, effects: FileEffects
    ) -> None:
        """Set which entries of the tag hold their bytes, taking and dropping references.

        ``current``: the digest the tag names now (None: deleted). Gains are counted
        before losses are released, so bytes that stay held are never trashed.
        """
        entries = await self._candidates(session, names)
        wanted = self._chosen(entries, current)
        for entry in entries:
            if entry.id in wanted and not entry.retained:
                blob = await session.scalar(
                    select(Blob).where(Blob.digest == entry.digest).with_for_update()
                )
                if blob is not None:  # bytes freed before retention grew stay freed
                    blob.refcount += 1
                    entry.retained = True
        await session.flush()
        for entry in entries:
            if entry.retained and entry.id not in wanted:
                entry.retained = False
                await session.flush()
                await self._release(session, entry.digest, effects)

    async def _candidates(self, session: AsyncSession, names: Names) -> list[TagHistory]:
        """The tag's entries retention may choose or must release, newest first, locked.

        The log grows with every write; retention needs only the entries that hold
        bytes now and the newest pointing ones, so a long history is not read in full
        unless many of its newest entries repeat a digest.
        """
        pointing = select(TagHistory).where(*_of(names), TagHistory.action.in_(_POINTING))
        newest = pointing.order_by(TagHistory.id.desc()).with_for_update()
        window = 4 * (self.keep_history + 1)
        rows = list((await session.scalars(newest.limit(window))).all())
        if len(rows) == window and len({row.digest for row in rows}) <= self.keep_history:
            rows = list((await session.scalars(newest)).all())
        held = await session.scalars(pointing.where(TagHistory.retained).with_for_update())
        seen = {row.id for row in rows}
        rows += [row for row in held if row.id not in seen]
        return sorted(rows, key=lambda row: row.id, reverse=True)

    def _chosen(self, entries: Sequence[TagHistory], current: str | None) -> set[int]:
        """Ids of the newest entry of each of the last N previous digests."""
        chosen: dict[str, int] = {}
        previous = entries[1:] if current is not None and entries else entries
        for entry in previous:
            if len(chosen) >= self.keep_history:
                break
            if entry.digest != current and entry.digest not in chosen:
                chosen[entry.digest] = entry.id
        return set(chosen.values())

    async def _purge_history(
        self, session: AsyncSession, names: Names, effects: FileEffects
    ) -> bool:
        """Drop every entry of the tag, releasing the bytes the retained ones held.

        False when the tag had no entry.
        """
        entries = (
            await session.scalars(
                select(TagHistory).where(*_of(names)).order_by(TagHistory.id).with_for_update()
            )
        ).all()
        held = [entry.digest for entry in entries if entry.retained]
        await session.execute(delete(TagHistory).where(*_of(names)))
        await session.flush()
        for digest in held:
            await self._release(session, digest, effects)
        return bool(entries)

    async def tag_history(self, repo: str, image: str, tag: str) -> list[HistoryEntry]:
        """The tag's entries, newest first; ``NotFoundError`` when it has none."""
        names = (repo, image, tag)
        async with self._read() as session:
            rows = (
                await session.scalars(
                    select(TagHistory).where(*_of(names)).order_by(TagHistory.id.desc())
                )
            ).all()
        if not rows:
            raise NotFoundError(
                "the tag has no history", {"repo": repo, "image": image, "tag": tag}
            )
        return [
            HistoryEntry(
                row.id,
                row.action,
                row.digest,
                row.size,
                dict(row.meta),
                row.at,
                row.actor,
                row.retained,
            )
            for row in rows
        ]
