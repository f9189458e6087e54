"""A bound on the request head, checked before routing (431 in the JSON error shape).

Granian's HTTP/1 read buffer (about 408 KiB) is an outer bound it does not always
enforce the same way: depending on how the bytes arrive, a larger head was sometimes
served. This limit is the one clients can count on.
"""

from __future__ import annotations

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

__all__ = ["MAX_HEADER_BYTES", "HeaderLimit"]

MAX_HEADER_BYTES = 64 * 1024
"""Request target plus every header name and value, in bytes."""


class HeaderLimit:
    """ASGI wrapper answering 431 to an HTTP request whose head is over the limit."""

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or _head_size(scope) <= self.limit:
            await self.app(scope, receive, send)
            return
        body = msgspec.json.encode(
            {
                "status": "RESOURCE_EXHAUSTED",
                "error": f"the request headers are larger than {self.limit} bytes",
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 431,
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
