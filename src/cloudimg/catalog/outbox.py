"""The events outbox inside a write transaction: queue an event with the change, write
it just before the commit, wake the readers after it (docs/events.md).

A change queues its event on its session (``queue_event``); the write attempt
(``cloudimg.catalog.transaction``) writes the queued events as its last statements
(``write_queued``), so they commit or roll back with the change, and a retried attempt,
on a session of its own, queues them again. Ids come from the one ``event_counter`` row,
locked there: writers of events take it in commit order, so ids grow in commit order
on PostgreSQL too (a sequence would hand out ids that commit out of order, and a reader
past a later id would never see the earlier one). Holding it from the last statement
to the commit keeps the serialised stretch short.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Final

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloudimg.catalog.models import Event, EventCounter, utcnow

__all__ = ["queue_event", "wait_for_events", "wake_readers", "write_queued"]

_QUEUE: Final = "cloudimg_events"
_waiters: set[asyncio.Event] = set()


def queue_event(session: AsyncSession, type: str, subject: str, data: dict[str, Any]) -> None:
    """Add an event to the transaction of ``session``; written at its commit."""
    session.info.setdefault(_QUEUE, []).append(
        {"uid": str(uuid.uuid4()), "type": type, "subject": subject, "time": utcnow(), "data": data}
    )


async def write_queued(session: AsyncSession) -> bool:
    """Write the events queued on ``session`` under the counter's lock; True if any."""
    queued: list[dict[str, Any]] = session.info.pop(_QUEUE, [])
    if not queued:
        return False
    counter = await session.scalar(
        select(EventCounter).where(EventCounter.id == 1).with_for_update()
    )
    if counter is None:  # the first event ever; a concurrent first insert clashes: retried
        counter = EventCounter(id=1, last_id=0)
        session.add(counter)
    first = counter.last_id + 1
    counter.last_id += len(queued)
    rows = [{"id": first + n, **event} for n, event in enumerate(queued)]
    await session.execute(insert(Event), rows)
    await session.flush()
    return True


def wake_readers() -> None:
    """Tell this process's waiting readers (long polls, the deliverer) events committed."""
    for waiter in list(_waiters):
        waiter.set()


async def wait_for_events(seconds: float) -> None:
    """Return when this process commits events, or after ``seconds`` (another replica's
    commits are seen only by reading again: callers recheck on return)."""
    waiter = asyncio.Event()
    _waiters.add(waiter)
    try:
        async with asyncio.timeout(seconds):
            await waiter.wait()
    except TimeoutError:
        pass
    finally:
        _waiters.discard(waiter)
