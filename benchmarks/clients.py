"""Minimal HTTP/1.1 clients on raw sockets, cheap enough that the server is what is timed.

An upload ``sendfile``s the source file between a head and a tail (no copy in Python, no
``Expect: 100-continue``); a download reads into one reusable 1 MiB buffer. The same
clients serve cloudimg and every reference, so they cost every side the same.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import Children

_RECV_BUFFER = 1024 * 1024
_START_TIMEOUT = 30.0


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    body_length: int
    seconds: float


def _read_head(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """Read a response head; returns status, headers and the body bytes read past it."""
    data = bytearray()
    view = memoryview(buffer)
    while b"\r\n\r\n" not in data:
        received = sock.recv_into(view)
        if received == 0:
            raise ConnectionError(f"connection closed before the response head: {bytes(data)!r}")
        data += view[:received]
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, rest


def _read_body(
    sock: socket.socket, buffer: bytearray, already: bytes, length: int | None, keep: bool
) -> tuple[bytes, int]:
    """Read ``length`` body bytes (or up to EOF) into ``buffer``; keep them only if asked."""
    kept = bytearray(already) if keep else bytearray()
    total = len(already)
    view = memoryview(buffer)
    while length is None or total < length:
        received = sock.recv_into(view)
        if received == 0:
            break
        total += received
        if keep:
            kept += view[:received]
    if length is not None and total != length:
        raise ConnectionError(f"body ended after {total} of {length} bytes")
    return bytes(kept), total


def exchange(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    head: bytes = b"",
    source: Path | None = None,
    tail: bytes = b"",
    keep_body: bool = True,
) -> Response:
    """One request on a fresh connection: ``head``, then ``source`` by sendfile, then ``tail``.

    The clock runs from connect to the last byte of the response, so an upload's time
    includes the server's fsync and commit.
    """
    size = source.stat().st_size if source is not None else 0
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(head) + size + len(tail)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + head
    buffer = bytearray(_RECV_BUFFER)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        try:
            sock.sendall(request)
            if source is not None:
                with source.open("rb") as file:
                    sock.sendfile(file, 0, size)
            sock.sendall(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (an error); read what it said
        status, response_headers, rest = _read_head(sock, buffer)
        length = response_headers.get("content-length")
        if method == "HEAD" or status in (204, 304):
            length = "0"
        body, total = _read_body(
            sock, buffer, rest, int(length) if length is not None else None, keep_body
        )
    return Response(status, response_headers, body, total, time.perf_counter() - started)


def upload_multipart(port: int, path: str, source: Path, meta: dict[str, str]) -> Response:
    """cloudimg's ``POST``: a ``meta`` part, then ``source`` as the ``img`` part."""
    boundary = "cloudimg-bench-" + secrets.token_hex(12)
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="meta"; filename="meta.json"\r\n'
        "Content-Type: application/json\r\n\r\n"
        f"{json.dumps(meta)}\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="img"; filename="image.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    return exchange(port, "POST", path, {"Content-Type": content_type}, head, source, tail)


def upload_raw(
    port: int, path: str, source: Path, headers: dict[str, str] | None = None
) -> Response:
    """A ``PUT`` whose body is the file itself (cloudimg's raw route, the references)."""
    every = {"Content-Type": "application/octet-stream", **(headers or {})}
    return exchange(port, "PUT", path, every, source=source)


def download(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    """GET ``path`` and read the body into one reusable buffer (nothing is kept)."""
    return exchange(port, "GET", path, headers, keep_body=False)


def call(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """A small request with http.client (listings, deletes, probes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body or None)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for_http(port: int, path: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        with contextlib.suppress(OSError):
            if download(port, path).status < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"no answer on port {port} after {_START_TIMEOUT}s")


def curl_downloads(
    children: Children,
    port: int,
    path: str,
    count: int,
    repeat: int = 1,
    limit_rate: str | None = None,
) -> list[subprocess.Popen[bytes]]:
    """``count`` niced curl processes, each downloading ``path`` ``repeat`` times in a row.

    Niced: in production the downloading clients sit on other hosts, so here they must
    not take the CPU the server needs for the requests being timed. ``limit_rate``
    (curl's ``--limit-rate``) makes a slow client: curl stops reading, the socket
    buffers fill, and the server must hold the connection open.
    """
    command = [
        "nice", "-n", "19", "curl", "-sS",
        "-w", "%{http_code} %{size_download}\n",
    ]  # fmt: skip
    if limit_rate:
        command += ["--limit-rate", limit_rate]
    # -o applies to one URL: without one each, curl would write the others to stdout.
    command += ["-o", "/dev/null", f"http://127.0.0.1:{port}{path}"] * repeat
    return [
        children.start(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(count)
    ]


def curl_outcomes(processes: Sequence[subprocess.Popen[bytes]]) -> list[list[str]]:
    """The ``status size`` lines each (finished or stopped) curl printed."""
    return [
        [line for line in (p.stdout.read().decode().splitlines() if p.stdout else []) if line]
        for p in processes
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
