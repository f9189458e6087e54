"""The access log and the live request metrics of one request: :class:`Exchange`.

The outermost ASGI middleware (:class:`cloudimg.api.middleware.RequestObserver`, outside
routing and exception handling, so 404s, 405s and errors are seen too) makes one per
request and hands the app its ``receive`` and ``send``; the exchange:

- takes the ``X-Request-ID`` header when it is a sane id, or makes one (the middleware
  sets it in ``cloudimg.logs.request_id_var``: error logs of the request carry it) and
  sends it back in the ``X-Request-ID`` response header;
- counts body bytes in both directions as they pass (so a long transfer shows in the
  byte counters while it runs), and the uploads and downloads in flight;
- at the end, counts the request by method, route template and status, observes its
  duration, and writes one access log record (logger ``cloudimg.access``) with
  ``request_id``, ``method``, ``path``, ``route``, ``status``, ``bytes_received``,
  ``bytes_sent``, ``duration_ms``, ``client`` and ``user_agent``.

No other request header is ever logged, and the query string is not either: the
``Authorization`` header (tokens) never reaches a log line.

The ``receive`` and ``send`` it hands over are called from deep inside the app (the
body readers, the responses); they live here, apart from the middleware below every
request, so those calls go one way and never come back into a module under them.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any, Final

from litestar.types import Message, Receive, Scope, Send

from cloudimg.api.metrics import UNMATCHED_ROUTE, Metrics

__all__ = ["REQUEST_ID_HEADER", "TRANSFER_OPT", "Exchange"]

access_log = logging.getLogger("cloudimg.access")

REQUEST_ID_HEADER: Final = "x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_CLIENT_CLOSED: Final = 499
TRANSFER_OPT: Final = "transfer"
"""Key of a route handler's ``opt`` marking its requests as image transfers: the value
is ``"upload"`` or ``"download"``, counted in the in-flight gauges."""


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope.get("headers", ()) if k.lower() == name), None)


def _request_id(scope: Scope) -> str:
    given = _header(scope, REQUEST_ID_HEADER.encode())
    if given is not None and _SANE_ID.fullmatch(given):
        return given.decode()
    return uuid.uuid4().hex


def _transfer(scope: Scope) -> str | None:
    """What the routed handler's ``opt`` says its requests transfer (routing sets it)."""
    handler = scope.get("route_handler")
    opt = getattr(handler, "opt", None) or {}
    return opt.get(TRANSFER_OPT)


class Exchange:
    """What is observed of one request while it runs: the middleware hands the app
    :meth:`receiver` and :meth:`sender`, and calls :meth:`finish` at the end."""

    def __init__(self, scope: Scope, metrics: Metrics | None) -> None:
        self.scope = scope
        self.metrics = metrics
        self.method = str(scope.get("method", ""))
        self.path: str = scope.get("root_path", "") + scope.get("path", "")
        self.request_id = _request_id(scope)
        self.started = time.perf_counter()
        self.status: int | None = None
        self.received = 0
        self.sent = 0
        self.uploading = False
        self.downloading = False
        self._byte_counters: dict[str, Any] = {}

    @property
    def route(self) -> str:
        # Routing fills in ``path_template`` on this same scope before the handler runs.
        template = self.scope.get("path_template")
        return str(template) if template else UNMATCHED_ROUTE

    def receiver(self, receive: Receive) -> Receive:
        """``receive``, counting the body bytes it brings and the uploads in flight."""

        async def observed_receive() -> Any:
            if not self.uploading and self.metrics is not None and self._is_upload():
                self.uploading = True
                self.metrics.uploads_in_flight.inc()
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if size:
                    self.received += size
                    if self.metrics is not None:
                        self._bytes_counter("received").inc(size)
            return message

        return observed_receive

    def sender(self, send: Send) -> Send:
        """``send``, taking the status, adding ``X-Request-ID`` and counting what goes out."""

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), self.request_id.encode()))
                message = {**message, "headers": headers}
                if self.metrics is not None and self._is_download():
                    self.downloading = True
                    self.metrics.downloads_in_flight.inc()
            elif message["type"] == "http.response.body":
                size = len(message.get("body", b""))
                if size:
                    self.sent += size
                    if self.metrics is not None:
                        self._bytes_counter("sent").inc(size)
            await send(message)

        return observed_send

    def _bytes_counter(self, direction: str) -> Any:
        # A download sends a chunk per megabyte: looking the labelled child up once per
        # route, not per chunk, keeps that work off the event loop (it was ~2 % of it).
        route = self.route
        key = f"{direction} {route}"
        counter = self._byte_counters.get(key)
        if counter is None:
            assert self.metrics is not None
            family = self.metrics.sent if direction == "sent" else self.metrics.received
            counter = self._byte_counters[key] = family.labels(route)
        return counter

    def _is_upload(self) -> bool:
        return _transfer(self.scope) == "upload"

    def _is_download(self) -> bool:
        # HEAD shares the download's handler but sends no bytes.
        return (
            self.method == "GET"
            and self.status in (200, 206)
            and _transfer(self.scope) == "download"
        )

    def finish(self, failed: bool) -> None:
        """Count the request and write its access log record (``failed``: the app raised)."""
        duration = time.perf_counter() - self.started
        # No response started: an error, or a client that left before the answer.
        fallback = 500 if failed else _CLIENT_CLOSED
        status = self.status if self.status is not None else fallback
        route = self.route
        if self.metrics is not None:
            if self.uploading:
                self.metrics.uploads_in_flight.dec()
            if self.downloading:
                self.metrics.downloads_in_flight.dec()
            self.metrics.requests.labels(self.method, route, str(status)).inc()
            self.metrics.latency.labels(self.method, route).observe(duration)
        user_agent = _header(self.scope, b"user-agent")
        client = self.scope.get("client")
        access_log.log(
            logging.WARNING if status >= 500 else logging.INFO,
            "%s %s %d",
            self.method,
            self.path,
            status,
            extra={
                "request_id": self.request_id,
                "method": self.method,
                "path": self.path,
                "route": route,
                "status": status,
                "bytes_received": self.received,
                "bytes_sent": self.sent,
                "duration_ms": round(duration * 1000, 3),
                "client": f"{client[0]}:{client[1]}" if client else None,
                "user_agent": user_agent.decode("latin-1")[:256] if user_agent else None,
            },
        )
