"""Webhook endpoints of the change events: their settings file, which events each takes,
and the Standard Webhooks signature of each request (docs/events.md).

The settings file (``--events-config``) is JSON::

    {"source": "https://registry.example",
     "dead_letter_after_secs": 86400,
     "endpoints": [{"name": "cdi", "url": "https://hooks.example/cloudimg",
                    "secret_file": "/run/secrets/cdi-hook",
                    "types": ["io.cloudimg.tag.*"], "subjects": ["vms/*"]}]}

Signing follows Standard Webhooks (https://www.standardwebhooks.com/): headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">`` with the secret ``whsec_<base64 key>``; stdlib ``hmac``, no
library (the ``standardwebhooks`` package brings attrs, dateutil and more for two
functions).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Endpoint",
    "EventsConfig",
    "EventsConfigError",
    "load_events_config",
    "sign",
    "verify",
]

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
SECRET_PREFIX = "whsec_"


class EventsConfigError(ValueError):
    """The events settings file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One receiver of events."""

    name: str
    """Its key in the catalog's delivery state and in ``/metrics``."""
    url: str
    key: bytes
    """The signing key (the base64 part of ``whsec_...``, decoded)."""
    types: tuple[str, ...] = ("*",)
    """Glob patterns over event types; an event is sent when one matches."""
    subjects: tuple[str, ...] = ("*",)
    """Glob patterns over subjects (``repo/image:tag``, ``blake3:<hex>``, ``gc``)."""
    dead_letter_after_secs: float | None = None
    """This endpoint's own ``EventsConfig.dead_letter_after_secs`` (None: that one)."""

    def takes(self, type: str, subject: str) -> bool:
        """Whether the event passes both filters."""
        return any(fnmatch.fnmatchcase(type, t) for t in self.types) and any(
            fnmatch.fnmatchcase(subject, s) for s in self.subjects
        )


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """What the settings file says, with the defaults."""

    endpoints: tuple[Endpoint, ...] = ()
    source: str | None = None
    """The CloudEvents ``source`` of every event; None: the server's ``--public-url``, else
    ``cloudimg``."""
    dead_letter_after_secs: float = 86400.0
    """How long an event may fail at an endpoint before it is dead-lettered."""
    retry_initial_secs: float = 1.0
    retry_max_secs: float = 300.0
    timeout_secs: float = 10.0
    """Each request's time limit (connect, send, read)."""
    lease_secs: float = 15.0
    """How long the delivering replica's lease lasts unrenewed (another takes over after)."""


def parse_secret(text: str, where: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret."""
    text = text.strip()
    if not text.startswith(SECRET_PREFIX):
        raise EventsConfigError(f"{where}: the secret must be whsec_<base64>")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        raise EventsConfigError(f"{where}: the secret after whsec_ is not base64") from None
    if len(key) < 16:
        raise EventsConfigError(f"{where}: the secret must be at least 16 bytes")
    return key


def _secret(item: dict[str, Any], where: str, base: Path) -> bytes:
    if "secret_file" in item:
        path = base / str(item["secret_file"])
        try:
            return parse_secret(path.read_text(), f"{where}: secret_file {path}")
        except OSError as exc:
            message = f"{where}: cannot read secret_file {path}: {exc.strerror}"
            raise EventsConfigError(message) from None
    if "secret_env" in item:
        value = os.environ.get(str(item["secret_env"]))
        if value is None:
            raise EventsConfigError(f"{where}: the variable {item['secret_env']} is not set")
        return parse_secret(value, f"{where}: secret_env {item['secret_env']}")
    raise EventsConfigError(f"{where}: needs secret_file or secret_env")


def _globs(item: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = item.get(key, ["*"])
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise EventsConfigError(f"{where}: {key} must be a non-empty list of glob patterns")
    return tuple(value)


def _endpoint(item: Any, n: int, base: Path) -> Endpoint:
    where = f"endpoints[{n}]"
    if not isinstance(item, dict):
        raise EventsConfigError(f"{where}: must be an object")
    unknown = set(item) - {
        "name",
        "url",
        "secret_file",
        "secret_env",
        "types",
        "subjects",
        "dead_letter_after_secs",
    }
    if unknown:
        raise EventsConfigError(f"{where}: unknown keys {sorted(unknown)}")
    name, url = item.get("name"), item.get("url")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise EventsConfigError(f"{where}: name must be 1-63 of a-z 0-9 _ . - (first a-z 0-9)")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise EventsConfigError(f"{where}: url must be http(s)://...")
    key = _secret(item, where, base)
    dead_after = item.get("dead_letter_after_secs")
    if dead_after is not None:
        dead_after = _positive(dead_after, f"{where}: dead_letter_after_secs")
    types, subjects = _globs(item, "types", where), _globs(item, "subjects", where)
    return Endpoint(name, url, key, types, subjects, dead_after)


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise EventsConfigError(f"{where} must be a positive number")
    return float(value)


_NUMBERS = ("dead_letter_after_secs", "retry_initial_secs", "retry_max_secs", "timeout_secs")


def load_events_config(path: Path) -> EventsConfig:
    """Read and check the settings file; relative secret files are beside it.

    Raises:
        EventsConfigError: naming the file, the entry and what is wrong.
    """
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise EventsConfigError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise EventsConfigError(f"{path}: not JSON: {exc}") from None
    try:
        return _config(document, path.parent)
    except EventsConfigError as exc:
        raise EventsConfigError(f"{path}: {exc}") from None


def _config(document: Any, base: Path) -> EventsConfig:
    if not isinstance(document, dict):
        raise EventsConfigError("must be a JSON object")
    unknown = set(document) - {"endpoints", "source", "lease_secs", *_NUMBERS}
    if unknown:
        raise EventsConfigError(f"unknown keys {sorted(unknown)}")
    items = document.get("endpoints", [])
    if not isinstance(items, list):
        raise EventsConfigError("endpoints must be a list")
    endpoints = tuple(_endpoint(item, n, base) for n, item in enumerate(items))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise EventsConfigError("endpoint names must differ")
    numbers: dict[str, float] = {}
    for key in (*_NUMBERS, "lease_secs"):
        if key in document:
            numbers[key] = _positive(document[key], key)
    source = document.get("source")
    if source is not None and (not isinstance(source, str) or not source):
        raise EventsConfigError("source must be a non-empty string")
    return EventsConfig(endpoints, source, **numbers)


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one request."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + _signature(key, msg_id, timestamp, body),
    }


def verify(key: bytes, headers: dict[str, str], body: bytes) -> bool:
    """Whether ``headers`` carry a valid v1 signature of ``body`` (receivers also bound
    the timestamp's age; see docs/events.md)."""
    try:
        timestamp = int(headers["webhook-timestamp"])
        expected = _signature(key, headers["webhook-id"], timestamp, body)
    except (KeyError, ValueError):
        return False
    offered = [s.removeprefix("v1,") for s in headers.get("webhook-signature", "").split()]
    return any(hmac.compare_digest(expected, s) for s in offered)
