"""Delivery of the change events to the configured webhook endpoints (docs/events.md).

Every server runs one ``Deliverer`` beside its requests (``api/app.py``'s lifespan, in
each worker); only the holder of the catalog's lease sends, so one process of all the
replicas delivers at a time, and another takes over once an unrenewed lease expires
(a crash, ``kill -9``). Each endpoint is sent its events strictly in outbox order,
one at a time: a failing event holds its endpoint back, with backoff and jitter, until
it is taken or, after ``dead_letter_after_secs``, dead-lettered; so one tag's events
arrive in order. A position moves only after the endpoint answered 2xx, recorded every
``_RECORD_EVERY`` events: a crash sends those again (at least once; receivers
deduplicate by ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
import uuid
from datetime import timedelta

import httpx

from cloudimg.catalog.events import EndpointState, EventLog, EventRecord
from cloudimg.catalog.models import utcnow
from cloudimg.catalog.outbox import wait_for_events
from cloudimg.errors import CloudimgError
from cloudimg.webhooks import Endpoint, EventsConfig, sign

__all__ = ["Deliverer", "event_body"]

log = logging.getLogger(__name__)

_BATCH = 100
_RECORD_EVERY = 10
_RECHECK_SECS = 1.0
"""How often the deliverer reads the outbox without being woken: other replicas'
commits are not seen in this process."""


def event_body(event: EventRecord, source: str) -> bytes:
    """The request body of one event: its CloudEvents JSON (structured mode)."""
    return json.dumps(event.document(source), separators=(",", ":")).encode()


class Deliverer:
    """Sends the outbox's events to each endpoint while this process holds the lease."""

    def __init__(self, events: EventLog, config: EventsConfig, source: str) -> None:
        self.events = events
        self.config = config
        self.source = source
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._holding = False
        self._renew_at = 0.0

    async def run(self) -> None:
        """Deliver until cancelled; catalog or network trouble is logged and retried."""
        timeout = httpx.Timeout(self.config.timeout_secs)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            try:
                while True:
                    await self._round(client)
            finally:
                if self._holding:
                    await asyncio.shield(self._release())

    async def _release(self) -> None:
        try:
            await self.events.release_lease(self.owner)
        except Exception:  # shutting down: the lease expires anyway
            log.debug("events: could not release the delivery lease", exc_info=True)

    async def _round(self, client: httpx.AsyncClient) -> None:
        wait = _RECHECK_SECS
        try:
            held = await self._lease()
            if held != self._holding:
                log.info("events: %s the delivery lease", "took" if held else "lost")
            self._holding = held
            if held:
                for endpoint in self.config.endpoints:
                    await self._serve(client, endpoint)
            else:
                wait = self.config.lease_secs / 3
        except CloudimgError as exc:  # the catalog is away: try again later
            log.warning("events: delivery paused: %s", exc)
            wait = self.config.lease_secs / 3
        except Exception:  # a bug must not end delivery for the server's lifetime
            log.exception("events: delivery round failed; trying again")
            wait = self.config.lease_secs / 3
        await wait_for_events(wait)

    async def _lease(self) -> bool:
        """Take the lease, or renew it once a third of it has gone (not every round: a
        write each second would queue beside the uploads' on SQLite)."""
        if self._holding and time.monotonic() < self._renew_at:
            return True
        held = await self.events.take_lease(self.owner, self.config.lease_secs)
        self._renew_at = time.monotonic() + self.config.lease_secs / 3
        return held

    async def _serve(self, client: httpx.AsyncClient, endpoint: Endpoint) -> None:
        """Send what ``endpoint`` is owed now: its resent dead letters, then its events
        after its position in order, until one fails or the lease is gone."""
        state = await self.events.endpoint(endpoint.name)
        if state.next_attempt_at is not None and state.next_attempt_at > utcnow():
            return
        for dead in await self.events.dead_letters(endpoint.name):
            if dead.resend and await self._send(client, endpoint, dead.event) is None:
                await self.events.resent(dead.id)
        while await self._serve_batch(client, endpoint, state):
            state = await self.events.endpoint(endpoint.name)
            if time.monotonic() >= self._renew_at:
                return  # renew the lease (the next round) before going on

    async def _serve_batch(
        self, client: httpx.AsyncClient, endpoint: Endpoint, state: EndpointState
    ) -> bool:
        """One batch in order; True when it all went and more may follow.

        The position is written after every ``_RECORD_EVERY`` events taken (and at the
        batch's end or failure), not after each: fewer writes beside the requests, for
        at most that many events sent again after a crash (at least once either way).
        """
        batch = await self.events.events_after(state.position, _BATCH)
        recorded = done = state.position
        sent = 0
        for event in batch:
            if endpoint.takes(event.type, event.subject):
                error = await self._send(client, endpoint, event)
                if error is not None:
                    await self._record(endpoint, recorded, done, sent)
                    await self._failed(endpoint, state, event, error)
                    return False
                sent += 1
            done = event.sequence
            if sent >= _RECORD_EVERY:
                recorded, sent = await self._record(endpoint, recorded, done, sent), 0
        await self._record(endpoint, recorded, done, sent)
        return len(batch) == _BATCH

    async def _record(self, endpoint: Endpoint, recorded: int, done: int, sent: int) -> int:
        """Write the endpoint's progress when there is any; the position recorded."""
        if done > recorded or sent:
            await self.events.advance(endpoint.name, done, delivered=sent)
        return done

    async def _failed(
        self, endpoint: Endpoint, state: EndpointState, event: EventRecord, error: str
    ) -> None:
        backoff = min(
            self.config.retry_max_secs, self.config.retry_initial_secs * 2**state.attempts
        )
        retry_at = utcnow() + timedelta(seconds=backoff * random.uniform(0.5, 1.0))
        dead_after = timedelta(
            seconds=endpoint.dead_letter_after_secs or self.config.dead_letter_after_secs
        )
        if await self.events.failed(endpoint.name, event, error, retry_at, dead_after):
            log.warning(
                "events: endpoint %s dead-lettered event %d (%s): %s",
                endpoint.name,
                event.sequence,
                event.type,
                error,
            )
        else:
            log.info(
                "events: endpoint %s refused event %d: %s", endpoint.name, event.sequence, error
            )

    async def _send(
        self, client: httpx.AsyncClient, endpoint: Endpoint, event: EventRecord
    ) -> str | None:
        """POST one event, signed; None when the endpoint took it (2xx), else why not."""
        body = event_body(event, self.source)
        headers = sign(endpoint.key, event.uid, int(time.time()), body)
        headers["content-type"] = "application/cloudevents+json"
        try:
            response = await client.post(endpoint.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"
