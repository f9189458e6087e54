"""The change events' shape: their CloudEvents 1.0 types and envelope (docs/events.md).

Pure: the catalog writes the fields of an event in the transaction of its change
(``cloudimg.catalog.events``); delivery (``cloudimg.core.delivery``) and the pull
endpoint (``/reg/_events``) put them in this envelope.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

__all__ = [
    "BLOB_BLOCKED",
    "BLOB_UNBLOCKED",
    "EVENT_TYPES",
    "GC_RUN",
    "TAG_TYPES",
    "envelope",
]

_PREFIX: Final = "io.cloudimg."
TAG_TYPES: Final = {
    "created": _PREFIX + "tag.created",
    "moved": _PREFIX + "tag.moved",
    "retagged": _PREFIX + "tag.retagged",
    "deleted": _PREFIX + "tag.deleted",
    "immutable": _PREFIX + "tag.immutability.set",
    "released": _PREFIX + "tag.immutability.released",
}
"""The event type of each action of the tag history (``cloudimg.catalog.history``)."""
BLOB_BLOCKED: Final = _PREFIX + "blob.blocked"
BLOB_UNBLOCKED: Final = _PREFIX + "blob.unblocked"
GC_RUN: Final = _PREFIX + "gc.run"
EVENT_TYPES: Final = (*TAG_TYPES.values(), BLOB_BLOCKED, BLOB_UNBLOCKED, GC_RUN)
SEQUENCE_ATTRIBUTE: Final = "sequence"
"""The extension attribute that carries the outbox id (the pull cursor)."""


def envelope(
    *,
    sequence: int,
    uid: str,
    type: str,
    subject: str,
    time: datetime,
    data: dict[str, Any],
    source: str,
) -> dict[str, Any]:
    """The structured-mode CloudEvents 1.0 JSON object of one event.

    ``source`` names the registry (its public URL, or ``cloudimg`` when unset); ``uid``
    is unique per source; ``sequence`` orders the events of one registry.
    """
    return {
        "specversion": "1.0",
        "id": uid,
        "source": source,
        "type": type,
        "subject": subject,
        "time": time.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        SEQUENCE_ATTRIBUTE: sequence,
        "data": data,
    }
