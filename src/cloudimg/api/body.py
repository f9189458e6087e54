"""Reading request bodies: every byte of a body the server reads comes through here.

One module owns the three things every reader of a body needs, so an upload and a
refused request (the write-token guard's, an upload's pre-checks) behave alike:

- :func:`body_of`: the body as it arrives, under ``--read-body-timeout-secs``;
- :func:`declared_length`: the Content-Length, parsed once, the same way for all;
- :func:`drain` and :func:`drain_refused`: reading a refused body to its end (up to
  ``MAX_DRAIN_BYTES``) before the error goes out. Granian closes a connection whose
  body was not read without saying so in a ``Connection: close`` header, so a client's
  next request on it would fail;
- :func:`linger_after`: an upload refused by what its first MiB holds answers at
  once, reads no more of the image, and then lingers (RFC 9112 section 9.6): the
  middleware :class:`cloudimg.api.middleware.Linger` reads and drops a little more of
  the body after the answer went out, so a client still sending reads the 422 before
  the connection closes, instead of a reset that could discard it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar.connection import ASGIConnection
from litestar.types import Receive, Scope

from cloudimg.errors import ClientDisconnectedError, RequestTimeoutError

__all__ = [
    "LINGER_KEY",
    "MAX_DRAIN_BYTES",
    "body_of",
    "declared_length",
    "drain",
    "drain_refused",
    "linger_after",
]

MAX_DRAIN_BYTES = 64 * 1024 * 1024
"""The most of a refused body read before answering; past it the connection is closed."""
LINGER_KEY = "cloudimg.linger"
"""The key of the request's scope state by which :func:`linger_after` marks it."""
_MAX_LENGTH_DIGITS = 19
"""More digits than this (over 9.9 EB) announce a body larger than any the server takes."""
_BEYOND_ANY_BODY = 10**_MAX_LENGTH_DIGITS


async def body_of(receive: Receive, idle_timeout: float | None) -> AsyncIterator[bytes]:
    """A request body as the server hands it over; a client that leaves is no server error.

    A client that sends nothing for ``idle_timeout`` seconds gets ``RequestTimeoutError``,
    so a stalled body holds no staging file, task or connection forever.
    """
    while True:
        try:
            # asyncio.timeout, not wait_for: no task per chunk on the upload's hot path.
            async with asyncio.timeout(idle_timeout):
                message = await receive()
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body sent nothing for {idle_timeout:g} seconds"
            ) from None
        if message["type"] != "http.request":
            raise ClientDisconnectedError("the client disconnected before the body was complete")
        if message["body"]:
            yield message["body"]
        if not message.get("more_body", False):
            return


def declared_length(connection: ASGIConnection[Any, Any, Any, Any]) -> int | None:
    """The request's Content-Length; ``None`` when it has none (chunked) or none that is a number.

    A header that is not ASCII digits is left to the HTTP server, which refuses it.
    """
    text = connection.headers.get("content-length")
    if text is None or not text.isascii() or not text.isdigit():
        return None
    return int(text) if len(text) <= _MAX_LENGTH_DIGITS else _BEYOND_ANY_BODY


async def drain(body: AsyncIterator[bytes], limit: int = MAX_DRAIN_BYTES) -> None:
    """Read and drop the rest of a refused request's body, up to ``limit`` bytes.

    Past the limit, when the body stalls past its timeout or when the client goes away,
    the connection is left to close.
    """
    received = 0
    with contextlib.suppress(Exception):
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                return


async def drain_refused(
    connection: ASGIConnection[Any, Any, Any, Any], idle_timeout: float | None
) -> None:
    """Before a refusal that comes ahead of the body: read and drop the body if it is worth it.

    Not when the client waits for ``100 Continue`` (it has not sent the body; answering
    now spares it the upload) and not when it announced more than ``MAX_DRAIN_BYTES``
    (the server closes the connection instead of reading it).
    """
    if "100-continue" in connection.headers.get("expect", "").lower():
        return
    if (declared_length(connection) or 0) <= MAX_DRAIN_BYTES:
        await drain(body_of(connection.receive, idle_timeout))


def linger_after(scope: Scope) -> None:
    """Have :class:`cloudimg.api.middleware.Linger` read a little more of this request's
    body after its answer."""
    scope.setdefault("state", {})[LINGER_KEY] = True
