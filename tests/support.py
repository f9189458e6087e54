"""Helpers the test modules share: the error shape, random image bytes, hand-made upload
bodies, digests, where a blob lies, and polling for a state the server reaches on its own.

One copy of each, so that a change in the API's error body or the blob layout is made
in one place; the fixtures that start servers live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest

BOUNDARY = "cloudimg-test-boundary-7f3a"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"

POLL_SECS = 30.0
"""How long a poll waits by default: far above what the awaited step takes, so a slow
machine does not fail a test; it bounds a hang, it is not a latency assertion."""


# -- the JSON error body ---------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """``response`` is the API's JSON error with ``status`` and ``code``; its body."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    return assert_error_body(response.status_code, response.json(), status, code)


def assert_error_body(
    status: int, body: Any, expected_status: int | tuple[int, ...], code: str | None = None
) -> dict[str, Any]:
    """The JSON error shape (``status``, ``error``, optional ``context``) of a raw answer.

    ``body`` is the parsed JSON or the raw bytes; ``expected_status`` one status or the
    statuses allowed; ``code``, when given, the ``status`` field's value.
    """
    allowed = (expected_status,) if isinstance(expected_status, int) else expected_status
    assert status in allowed, (status, body[:300] if isinstance(body, bytes) else body)
    if isinstance(body, bytes):
        body = json.loads(body)
    assert isinstance(body, dict), body
    assert isinstance(body["status"], str)
    if code is not None:
        assert body["status"] == code
    assert isinstance(body["error"], str)
    assert body["error"]
    assert set(body) <= {"status", "error", "context"}
    return body


# -- random image bytes ------------------------------------------------------------------

_MBR_SIGNATURE = slice(510, 512)
"""Where an MBR's 0x55 0xAA signature lies: random bytes hit it 1 time in 65,536, and the
inspector then refuses an MBR whose random partition entries fail the safety check."""


def random_image(size: int) -> bytes:
    """``size`` random bytes that every upload accepts as a raw image.

    Only a 2-byte magic at a fixed offset, the MBR signature, is likely enough to appear
    by chance, so it is zeroed. The other magics oslo's inspectors and
    ``cloudimg.images`` look for are 4 bytes or more (qcow2, qed, vhd, vhdx, vmdk, luks
    at 0, vdi at 0x40, ISO 9660/UDF at 32 KiB + 1): at most 1 in 2**32 each. A text VMDK
    descriptor needs ASCII with ``createType="`` before the first NUL: never by chance.
    """
    data = bytearray(os.urandom(size))
    data[_MBR_SIGNATURE] = bytes(len(data[_MBR_SIGNATURE]))
    return bytes(data)


# -- hand-made multipart bodies ----------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part of a hand-made multipart body (``name`` None: a disposition without one)."""

    name: str | None
    data: bytes
    filename: str | None = None


def multipart_body(parts: Sequence[Part], *, close: bool = True) -> bytes:
    """A ``multipart/form-data`` body with :data:`BOUNDARY`; ``close=False`` drops the end."""
    out = bytearray()
    for part in parts:
        disposition = "form-data" if part.name is None else f'form-data; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if part.filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + part.data + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def meta_part(meta: Any) -> Part:
    return Part("meta", json.dumps(meta).encode(), "meta.json")


def img_part(data: bytes) -> Part:
    return Part("img", data, "image.bin")


def multipart_head(meta: Any = None) -> bytes:
    """The start of an upload body: the ``meta`` part and the ``img`` part's headers."""
    img_head = multipart_body([img_part(b"")], close=False).removesuffix(b"\r\n")
    return multipart_body([meta_part({} if meta is None else meta)], close=False) + img_head


def multipart_tail() -> bytes:
    """What closes a body begun by :func:`multipart_head` once the image bytes are sent."""
    return f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_body(data: bytes, meta: Any) -> tuple[bytes, str]:
    """A whole ``meta`` + ``img`` upload body (its exact length known) and its content type."""
    return multipart_body([meta_part(meta), img_part(data)]), MULTIPART


# -- digests and blob files --------------------------------------------------------------


def blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_path(data_root: Path, digest: str) -> Path:
    """Where the file-system blob store keeps the blob ``digest`` (blake3 hex)."""
    return data_root / "blobs" / "blake3" / digest[:2] / digest[2:]


# -- servers ---------------------------------------------------------------------------

_LISTENING = re.compile(r'Listening at: http://[^\s"]+:(\d+)')


def listening_port(log: str) -> int | None:
    """The port a ``cloudimg serve`` log says it listens on (Granian's start-up line).

    With ``--listener-addr host:0`` the kernel picks a free port as the socket is bound:
    no port picked in advance that a server started in parallel could take first.
    """
    found = _LISTENING.search(log)
    return None if found is None else int(found.group(1))


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for as long as the block runs.

    The socket is bound but never listens: a connection is refused, and no other process
    can take the port meanwhile (a port found free and released could be taken).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# -- what test processes share -------------------------------------------------------------


@contextlib.contextmanager
def exclusively(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` for the block.

    For what lives outside a test's ``tmp_path`` and is filled once for every run, such as
    the tools in pytest's cache (``.pytest_cache``): the pytest-xdist workers of one run,
    and other runs in the same checkout, each check and fill it under this lock, so only
    one of them downloads and the others wait and then find it filled. The kernel drops
    the lock when its holder exits, also on ``kill -9``: no stale lock file to clean up.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


# -- polling -----------------------------------------------------------------------------


def poll(condition: Callable[[], object], timeout: float = POLL_SECS) -> bool:
    """Call ``condition`` until it is true or ``timeout`` seconds pass; whether it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def wait_until(condition: Callable[[], object], what: str, timeout: float = POLL_SECS) -> None:
    """Poll ``condition``; fail the test, naming ``what``, if it never becomes true."""
    if not poll(condition, timeout):
        pytest.fail(f"not within {timeout}s: {what}")
