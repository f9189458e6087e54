"""``GET /reg/_events``: the change events after a cursor, with long polling, for
controllers that cannot expose a webhook endpoint (docs/events.md).

The cursor is the events' ``sequence`` (the outbox id). With ``wait``, a request that
finds nothing waits up to that many seconds and answers as soon as events exist: woken
by this process's commits (``outbox.wait_for_events``) and reading again every second
for other replicas' and workers', holding no catalog connection while it waits.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery

from cloudimg.api.openapi import EventListView, error_responses, listing_response
from cloudimg.api.policy import Grants, grants_of
from cloudimg.catalog import Catalog
from cloudimg.catalog.outbox import wait_for_events
from cloudimg.errors import InvalidArgumentError

__all__ = ["MAX_EVENTS_PAGE", "MAX_EVENTS_WAIT_SECS", "EventsController"]

MAX_EVENTS_PAGE = 1000
MAX_EVENTS_WAIT_SECS = 60
"""The longest long poll: below the usual proxies' idle timeouts."""
_RECHECK_SECS = 1.0


def _visible(document: dict[str, Any], grants: Grants) -> dict[str, Any] | None:
    """The event as the caller may see it (``--policy-file``), None: not at all.

    A tag's event needs ``pull`` on its image; a blob's event shows only the tags the
    caller may pull (none: not shown); a gc run names no image.
    """
    if grants.unlimited:
        return document
    subject, data = str(document.get("subject", "")), document.get("data") or {}
    if "/" in subject:
        return document if grants.lists(subject.partition(":")[0]) else None
    tags = data.get("tags")
    if not isinstance(tags, list):
        return document
    shown = [tag for tag in tags if grants.lists(str(tag).partition(":")[0])]
    return {**document, "data": {**data, "tags": shown}} if shown else None


class EventsController(Controller):
    """The pull interface of the change events."""

    @get(
        "/_events",
        operation_id="GetEvents",
        summary="Change events after a cursor (after=sequence), oldest first, with long "
        "polling (wait=seconds)",
        description="A path no repository can take. `after`: the `next` of the previous "
        "answer (0: from the oldest event kept); `limit`: 1 to 1000 (default 100); `wait`: "
        "0 to 60 seconds to wait for an event when there is none yet (default 0).",
        responses={
            **listing_response(EventListView, "The events after the cursor, in order"),
            **error_responses(400),
        },
    )
    async def get_events(
        self,
        request: Request[Any, Any, Any],
        catalog: NamedDependency[Catalog],
        event_source: NamedDependency[str],
        after: FromQuery[int] = 0,
        limit: FromQuery[int] = 100,
        wait: FromQuery[int] = 0,
    ) -> dict[str, Any]:
        if after < 0:
            raise InvalidArgumentError("query parameter 'after' is 0 or more", {"after": after})
        if not 1 <= limit <= MAX_EVENTS_PAGE:
            raise InvalidArgumentError(
                f"query parameter 'limit' is 1 to {MAX_EVENTS_PAGE}", {"limit": limit}
            )
        if not 0 <= wait <= MAX_EVENTS_WAIT_SECS:
            raise InvalidArgumentError(
                f"query parameter 'wait' is 0 to {MAX_EVENTS_WAIT_SECS} seconds", {"wait": wait}
            )
        deadline = time.monotonic() + wait
        events = await catalog.events.events_after(after, limit)
        while not events and (left := deadline - time.monotonic()) > 0:
            await wait_for_events(min(left, _RECHECK_SECS))
            events = await catalog.events.events_after(after, limit)
        # Only what the caller may pull; ``next`` follows the events read, shown or not.
        grants = grants_of(request)
        documents = [_visible(event.document(event_source), grants) for event in events]
        return {
            "success": True,
            "data": [document for document in documents if document is not None],
            "next": events[-1].sequence if events else after,
        }
