"""The upload reference of issue 12: a bare ASGI app doing an upload's work and nothing else.

Any ``PUT`` or ``POST`` body is written raw to a new file in ``$BARE_APP_DIR`` and
hashed as it streams, blake3 (multi-threaded, as cloudimg's) on the writing thread and
sha256 on a thread of its own, in 4 MiB batches with one batch in flight; then the
file is fsynced and the answer is ``201`` with both digests. No multipart, no catalog,
no inspection, no framework. ``bench.py`` serves it with Granian, as ``cloudimg serve``
is served::

    granian --interface asgi --http 1 --working-dir benchmarks bare_app:app
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3

__all__ = ["app"]

_BATCH = 4 * 1024 * 1024
_DIRECTORY = Path(os.environ.get("BARE_APP_DIR", "."))
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-write")
_SHA256 = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-sha256")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _Sink:
    """A file and two hashes, fed batch by batch on their own threads."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.blake3 = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self.sha256 = hashlib.sha256()
        self.pending: list[asyncio.Future[Any]] = []

    def _write_and_blake3(self, batch: bytearray) -> None:
        view = memoryview(batch)
        while view:
            view = view[os.write(self.fd, view) :]
        self.blake3.update(batch)

    async def feed(self, batch: bytearray) -> None:
        await self.drain()  # one batch in flight: memory stays flat
        loop = asyncio.get_running_loop()
        self.pending = [
            loop.run_in_executor(_WRITER, self._write_and_blake3, batch),
            loop.run_in_executor(_SHA256, self.sha256.update, batch),
        ]

    async def drain(self) -> None:
        await asyncio.gather(*self.pending)
        self.pending = []

    async def finish(self) -> dict[str, str]:
        await self.drain()
        await asyncio.get_running_loop().run_in_executor(_WRITER, os.fsync, self.fd)
        os.close(self.fd)
        return {"blake3": self.blake3.hexdigest(), "sha256": self.sha256.hexdigest()}


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] not in ("PUT", "POST"):
        await _answer(send, 200 if scope["method"] == "GET" else 405, b"{}")
        return
    sink = _Sink(_DIRECTORY / f"upload-{secrets.token_hex(8)}")
    batch = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            await sink.drain()
            os.close(sink.fd)
            return
        batch += message.get("body", b"")
        more = message.get("more_body", False)
        if len(batch) >= _BATCH or not more:
            await sink.feed(batch)
            batch = bytearray()  # handed over whole: no copy
    await _answer(send, 201, json.dumps(await sink.finish()).encode())
