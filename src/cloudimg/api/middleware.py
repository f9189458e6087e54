"""The ASGI wrappers around the app, outermost first: observation, head checks, lingering.

- :class:`RequestObserver`: the access log and the live request metrics of every
  request (an :class:`cloudimg.api.observer.Exchange` each);
- :class:`HeaderLimit`: checks of the request head made before routing, its size (431)
  and its transfer coding (501);
- :class:`Linger`: after the answer to an upload refused by its first MiB, read a
  little more of its body (:func:`cloudimg.api.body.linger_after`).

The head checks:

Granian's HTTP/1 read buffer (about 408 KiB) is an outer bound it does not always
enforce the same way: depending on how the bytes arrive, a larger head was sometimes
served. The size limit here is the one clients can count on.

Granian decodes the ``chunked`` transfer coding and no other, yet it hands a body sent
with ``Transfer-Encoding: gzip, chunked`` to the app with only ``chunked`` removed, so
the app would take still-encoded bytes for the body (a multipart body labelled so was
stored as is). RFC 9112 section 6.1 has a server answer a transfer coding it does not
understand with 501: any coding but one final ``chunked`` is refused.

Both answers are JSON in the API's error shape and close the connection: the body was
not read, and for a coding the server cannot decode it cannot be.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from cloudimg.api.body import LINGER_KEY, body_of, drain
from cloudimg.api.errors import error_body
from cloudimg.api.metrics import Metrics
from cloudimg.api.observer import Exchange
from cloudimg.logs import request_id_var

__all__ = [
    "LINGER_BYTES",
    "LINGER_SECONDS",
    "MAX_HEADER_BYTES",
    "HeaderLimit",
    "Linger",
    "RequestObserver",
    "unsupported_transfer_codings",
]

MAX_HEADER_BYTES = 64 * 1024
"""Request target plus every header name and value, in bytes."""
LINGER_SECONDS = 2.0
"""How long a lingering close reads on after its answer (the client sees it and stops)."""
LINGER_BYTES = 8 * 1024 * 1024
"""The most a lingering close reads: well short of an image, a few socket buffers."""


class RequestObserver:
    """ASGI middleware writing the access log and the live metrics (``metrics`` optional).

    It wraps the whole Litestar handler (``Litestar.asgi_handler``), outside routing and
    exception handling. The request's :class:`cloudimg.api.observer.Exchange` counts
    through the ``receive`` and ``send`` the app is given.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        exchange = Exchange(scope, self.metrics)
        token = request_id_var.set(exchange.request_id)
        failed = False
        try:
            await self.app(scope, exchange.receiver(receive), exchange.sender(send))
        except BaseException:
            failed = True
            raise
        finally:
            exchange.finish(failed)
            request_id_var.reset(token)


class HeaderLimit:
    """ASGI wrapper answering 431 to a head over the limit, 501 to an unknown transfer coding."""

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        if _head_size(scope) > self.limit:
            message = f"the request headers are larger than {self.limit} bytes"
            await _refuse(send, 431, "RESOURCE_EXHAUSTED", message)
            return
        codings = unsupported_transfer_codings(scope)
        if codings:
            message = "the server decodes no transfer coding but chunked"
            context = {"transfer_codings": codings}
            await _refuse(send, 501, "UNIMPLEMENTED", message, context)
            return
        await self.app(scope, receive, send)


def unsupported_transfer_codings(scope: Scope) -> list[str]:
    """The transfer codings of the request other than one final ``chunked``, in order.

    Empty for a request without ``Transfer-Encoding`` or with ``chunked`` alone (in any
    case, as the coding names are case-insensitive).
    """
    codings = [
        coding.strip().lower()[:100]
        for name, value in scope["headers"]
        if name.lower() == b"transfer-encoding"
        for coding in value.decode("latin-1").split(",")
        if coding.strip()
    ]
    if codings and codings[-1] == "chunked":
        codings.pop()
    return codings[:20]


async def _refuse(
    send: Send, status: int, code: str, message: str, context: dict[str, Any] | None = None
) -> None:
    body = msgspec.json.encode(error_body(code, message, context))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The body was not read: the connection cannot carry another request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _head_size(scope: Scope) -> int:
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return target + sum(len(name) + len(value) for name, value in scope["headers"])


class Linger:
    """ASGI wrapper: after the answer to a request marked by
    :func:`cloudimg.api.body.linger_after`, read and drop up to ``LINGER_BYTES`` more of
    its body for up to ``LINGER_SECONDS``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        state: Any = scope.get("state") or {}
        if scope["type"] == ScopeType.HTTP and state.get(LINGER_KEY):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LINGER_SECONDS):
                    await drain(body_of(receive, LINGER_SECONDS), LINGER_BYTES)
