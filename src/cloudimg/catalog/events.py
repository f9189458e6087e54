"""Change events in the catalog: what each change's event says, and the outbox's reads,
each endpoint's delivery state, the dead letters and the delivery lease.

The writers queue the event of their change in its transaction (``outbox.queue_event``,
from ``history.py`` for tags and ``maintenance.py`` for blocks and gc runs); delivery
(``cloudimg.core.delivery``) and the pull endpoint read them back here. See docs/events.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.catalog.models import (
    Blob,
    Event,
    EventDeadLetter,
    EventEndpoint,
    EventLease,
    Image,
    Repository,
    Tag,
    utcnow,
)
from cloudimg.catalog.transaction import CatalogBase, FileEffects
from cloudimg.cloudevents import BLOB_BLOCKED, BLOB_UNBLOCKED, GC_RUN, TAG_TYPES, envelope

__all__ = [
    "DeadLetter",
    "EndpointState",
    "EventLog",
    "EventRecord",
    "blob_event",
    "gc_event",
    "tag_event",
]

_LEASE = "delivery"
_ERROR_CHARS = 500

Names = tuple[str, str, str]
Queued = tuple[str, str, dict[str, Any]]
"""An event's type, subject and data, as ``outbox.queue_event`` takes them."""


def _blob_fields(blob: Blob) -> dict[str, Any]:
    return {
        "digest": f"blake3:{blob.digest}",
        "sha256": f"sha256:{blob.sha256}",
        "size": blob.size,
        "format": blob.format,
    }


def tag_event(
    names: Names, action: str, blob: Blob, meta: dict[str, Any], actor: str | None
) -> Queued:
    """The event of one change of a tag (``action`` as the tag history names it)."""
    repo, image, tag = names
    data = {
        "repository": repo,
        "image": image,
        "tag": tag,
        **_blob_fields(blob),
        "metadata": meta,
        "actor": actor,
    }
    return TAG_TYPES[action], f"{repo}/{image}:{tag}", data


async def blob_event(session: AsyncSession, blocked: bool, blob: Blob, rule: str) -> Queued:
    """The event of a block or unblock: the blob and the tags that hold it now."""
    rows = await session.execute(
        select(Repository.name, Image.name, Tag.name)
        .join(Image, Image.id == Tag.image_id)
        .join(Repository, Repository.id == Image.repository_id)
        .where(Tag.digest == blob.digest)
        .order_by(Repository.name, Image.name, Tag.name)
    )
    tags = [f"{repo}/{image}:{tag}" for repo, image, tag in rows]
    data = {**_blob_fields(blob), "rule": rule, "tags": tags, "actor": None}
    return BLOB_BLOCKED if blocked else BLOB_UNBLOCKED, f"blake3:{blob.digest}", data


def gc_event(ok: bool, bytes_freed: int, duration_seconds: float) -> Queued:
    """The event of one recorded gc run."""
    data = {"ok": ok, "bytes_freed": bytes_freed, "duration_seconds": duration_seconds}
    return GC_RUN, "gc", data


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of the outbox; ``sequence`` is its id there (the pull cursor)."""

    sequence: int
    uid: str
    type: str
    subject: str
    time: datetime
    data: dict[str, Any]

    def document(self, source: str) -> dict[str, Any]:
        """The event as CloudEvents JSON, the same pulled and delivered."""
        return envelope(
            sequence=self.sequence,
            uid=self.uid,
            type=self.type,
            subject=self.subject,
            time=self.time,
            data=self.data,
            source=source,
        )


def _record(row: Event | EventDeadLetter) -> EventRecord:
    sequence = row.id if isinstance(row, Event) else row.event_id
    return EventRecord(sequence, row.uid, row.type, row.subject, row.time, dict(row.data))


@dataclass(frozen=True, slots=True)
class EndpointState:
    """Where delivery to one endpoint stands."""

    name: str
    position: int
    attempts: int
    failing_since: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_total: int
    failed_total: int
    dead_lettered_total: int
    pending: int = 0
    """Events after ``position`` (before the endpoint's filter)."""


def _state(row: EventEndpoint, pending: int = 0) -> EndpointState:
    return EndpointState(
        row.name,
        row.position,
        row.attempts,
        row.failing_since,
        row.next_attempt_at,
        row.last_error,
        row.delivered_total,
        row.failed_total,
        row.dead_lettered_total,
        pending,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event an endpoint did not take in time."""

    id: int
    endpoint: str
    event: EventRecord
    at: datetime
    error: str
    attempts: int
    resend: bool


class EventLog(CatalogBase):
    """The outbox's reads, delivery state, dead letters and lease."""

    async def events_after(self, after: int, limit: int) -> list[EventRecord]:
        """Up to ``limit`` events with an id above ``after``, oldest first."""
        async with self._read() as session:
            rows = await session.scalars(
                select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
            )
            return [_record(row) for row in rows]

    async def latest(self) -> int:
        """The id of the newest event (0: none)."""
        async with self._read() as session:
            return int(await session.scalar(select(func.max(Event.id))) or 0)

    async def endpoint(self, name: str) -> EndpointState:
        """The delivery state of ``name``; a new endpoint starts at the oldest event kept."""
        async with self._read() as session:
            row = await session.scalar(select(EventEndpoint).where(EventEndpoint.name == name))
            if row is not None:
                return _state(row)
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                row = await self._endpoint(session, name)
                state = _state(row)
        return state

    @staticmethod
    async def _endpoint(session: AsyncSession, name: str) -> EventEndpoint:
        row = await session.scalar(
            select(EventEndpoint).where(EventEndpoint.name == name).with_for_update()
        )
        if row is None:  # a concurrent first insert clashes and is retried
            row = EventEndpoint(
                name=name,
                position=0,
                attempts=0,
                delivered_total=0,
                failed_total=0,
                dead_lettered_total=0,
            )
            session.add(row)
            await session.flush()
        return row

    async def advance(self, name: str, position: int, *, delivered: int) -> None:
        """Move ``name`` past ``position`` (never back), counting ``delivered`` events
        it took (the others up to there its filter skipped); its failures start again."""
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                row = await self._endpoint(session, name)
                if position > row.position:
                    row.position = position
                row.attempts, row.failing_since, row.next_attempt_at = 0, None, None
                row.last_error = None
                row.delivered_total += delivered

    async def failed(
        self, name: str, event: EventRecord, error: str, retry_at: datetime, dead_after: timedelta
    ) -> bool:
        """Count a failed attempt at ``event``; once it has failed for ``dead_after``, it
        becomes a dead letter and the endpoint moves past it. True when it did."""
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                row = await self._fail(session, name, error[:_ERROR_CHARS], retry_at)
                since = row.failing_since or utcnow()
                dead = since + dead_after <= utcnow() and row.position < event.sequence
                if dead:
                    session.add(_dead_letter(name, event, error[:_ERROR_CHARS], row.attempts))
                    row.position = event.sequence
                    row.attempts, row.failing_since, row.next_attempt_at = 0, None, None
                    row.dead_lettered_total += 1
        return dead

    async def _fail(
        self, session: AsyncSession, name: str, error: str, retry_at: datetime
    ) -> EventEndpoint:
        row = await self._endpoint(session, name)
        row.attempts += 1
        row.failed_total += 1
        row.failing_since = row.failing_since or utcnow()
        row.next_attempt_at = retry_at
        row.last_error = error
        await session.flush()
        return row

    async def endpoint_states(self) -> list[EndpointState]:
        """Every endpoint delivery has seen, with its pending events (for ``/metrics``)."""
        pending = (
            select(func.count())
            .select_from(Event)
            .where(Event.id > EventEndpoint.position)
            .scalar_subquery()
        )
        async with self._read() as session:
            rows = await session.execute(
                select(EventEndpoint, pending).order_by(EventEndpoint.name)
            )
            return [_state(row, int(count or 0)) for row, count in rows]

    async def dead_letters(self, endpoint: str | None = None) -> list[DeadLetter]:
        """The dead letters, oldest first; of one endpoint when ``endpoint`` is given."""
        query = select(EventDeadLetter).order_by(EventDeadLetter.id)
        if endpoint is not None:
            query = query.where(EventDeadLetter.endpoint == endpoint)
        async with self._read() as session:
            return [
                DeadLetter(
                    row.id, row.endpoint, _record(row), row.at, row.error, row.attempts, row.resend
                )
                for row in await session.scalars(query)
            ]

    async def mark_resend(self, ids: list[int]) -> list[int]:
        """Ask delivery to send these dead letters again; the ids that exist."""
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                found = list(
                    await session.scalars(
                        select(EventDeadLetter.id).where(EventDeadLetter.id.in_(ids))
                    )
                )
                await session.execute(
                    update(EventDeadLetter).where(EventDeadLetter.id.in_(ids)).values(resend=True)
                )
        return sorted(found)

    async def resent(self, dead_letter: int) -> None:
        """The endpoint took a resent dead letter: it goes."""
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                await session.execute(
                    delete(EventDeadLetter).where(EventDeadLetter.id == dead_letter)
                )

    async def take_lease(self, owner: str, seconds: float) -> bool:
        """Take or renew the delivery lease for ``owner``: True while it holds it.

        A conditional update (one statement, on every backend): it succeeds when the
        lease is ``owner``'s or has expired; the first taker inserts the row.
        """
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                held = await self._lease(session, owner, seconds)
        return held

    async def _lease(self, session: AsyncSession, owner: str, seconds: float) -> bool:
        now = utcnow()
        expires = now + timedelta(seconds=seconds)
        result = await session.execute(
            update(EventLease)
            .where(
                EventLease.name == _LEASE,
                (EventLease.owner == owner) | (EventLease.expires_at < now),
            )
            .values(owner=owner, expires_at=expires)
        )
        if getattr(result, "rowcount", 0) == 1:
            return True
        if await session.scalar(select(EventLease.name).where(EventLease.name == _LEASE)):
            return False
        session.add(EventLease(name=_LEASE, owner=owner, expires_at=expires))
        await session.flush()  # a concurrent first taker clashes: retried, then updates
        return True

    async def release_lease(self, owner: str) -> None:
        """Give the lease up at shutdown, so another replica takes it at once."""
        async for attempt in self._writes():
            async with attempt as (session, _effects):
                await session.execute(
                    update(EventLease)
                    .where(EventLease.name == _LEASE, EventLease.owner == owner)
                    .values(expires_at=utcnow() - timedelta(seconds=1))
                )

    async def prune(self, older_than: datetime) -> int:
        """Drop events older than ``older_than`` (gc's retention); how many went."""

        async def change(session: AsyncSession, _effects: FileEffects) -> int:
            result = await session.execute(delete(Event).where(Event.time < older_than))
            return int(getattr(result, "rowcount", 0) or 0)

        async for attempt in self._writes():
            async with attempt as (session, effects):
                pruned = await change(session, effects)
        return pruned


def _dead_letter(name: str, event: EventRecord, error: str, attempts: int) -> EventDeadLetter:
    return EventDeadLetter(
        endpoint=name,
        event_id=event.sequence,
        type=event.type,
        subject=event.subject,
        time=event.time,
        uid=event.uid,
        data=event.data,
        at=utcnow(),
        error=error,
        attempts=attempts,
        resend=False,
    )
