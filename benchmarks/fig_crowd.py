"""Issue 8, section 4, as a figure: probes and listings while a crowd holds the connections.

A server of its own (``--read-header-timeout-secs 300``, so that the crowd stays
connected for the whole measurement; every other limit at its default) gets a 32 MiB
image. ``/healthz``, ``/readyz``, the repository's listing and the image's listing are
then requested in turn, each on a new connection (``Connection: close``), first on the
idle server (the reference), then while ``--crowd-idle`` (1,000) connections that never
send a byte and ``--crowd-downloads`` (300) downloads whose clients read the response
head and then stop reading (a 16 KiB receive window: each download stays in progress on
the server) are held open. Target: p99 < 1 s (the issue's "every probe answers within
one second"), every answer a 200, and the whole crowd still connected at the end (else
the figure measured something other than the scenario, and fails).

``tests/test_connection_limits.py`` drives the same scenario and checks only what is not
a timing: every probe and listing answered correctly while the crowd holds on, and the
paused downloads going on with the right bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import resource
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from clients import upload_multipart
from harness import Children, MiB, Row, log, make_source, percentile, rss_kib, skipped
from servers import start_cloudimg

CROWD_P99_MS = 1000.0
IMAGE_SIZE = 32 * MiB
_SMALL_RCVBUF = 16 * 1024
_REPO, _IMAGE = "crowd", "disk"
_FD_MARGIN = 256
_TIMEOUT = 60.0


def crowd_label(idle: int, downloads: int) -> str:
    return f"3 probes+listings p99, {idle:,} idle connections + {downloads} paused downloads"


@contextlib.contextmanager
def _fd_limit(needed: int) -> Iterator[str | None]:
    """The soft open-file limit raised to ``needed`` for a while; why not, when it cannot be."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        yield f"needs {needed} open files, the hard limit is {hard}"
        return
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield None
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def _still_open(sock: socket.socket) -> bool:
    """True when the server has not closed ``sock`` (nothing to read, no EOF)."""
    sock.setblocking(False)  # a socket with a timeout would wait for it
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before the response head: {data[:200]!r}")
        data += chunk
    return data.partition(b"\r\n\r\n")[0]


def _probe(port: int, paths: list[str], rounds: int) -> tuple[list[float], int]:
    """``rounds`` rounds of GET on each path, each on a new connection; latencies, errors."""
    latencies: list[float] = []
    errors = 0
    for _ in range(rounds):
        for path in paths:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=_TIMEOUT)
            started = time.perf_counter()
            try:
                connection.request("GET", path, headers={"Connection": "close"})
                response = connection.getresponse()
                response.read()
                errors += response.status != 200
            except (OSError, http.client.HTTPException):
                errors += 1
                continue
            finally:
                connection.close()
            latencies.append(time.perf_counter() - started)
    return latencies, errors


def run_crowd(
    children: Children, kind: str, workdir: Path, idle: int, downloads: int, rounds: int
) -> list[Row]:
    label = crowd_label(idle, downloads)
    target = f"p99 < {CROWD_P99_MS:g} ms"
    with _fd_limit(idle + downloads + _FD_MARGIN) as refused:
        if refused is not None:
            return [skipped("crowd_probes", label, target, refused)]
        data_root = workdir / "data-crowd"
        source = workdir / "crowd.img"
        make_source(source, IMAGE_SIZE)
        server = start_cloudimg(
            children, kind, data_root, workdir, "--read-header-timeout-secs", "300"
        )
        try:
            return [_measure(server.port, server.pids, source, label, target, idle, downloads,
                             rounds)]  # fmt: skip
        finally:
            children.stop(server.process)
            source.unlink(missing_ok=True)
            shutil.rmtree(data_root, ignore_errors=True)


def _measure(
    port: int,
    pids: list[int],
    source: Path,
    label: str,
    target: str,
    idle: int,
    downloads: int,
    rounds: int,
) -> Row:
    path = f"/reg/{_REPO}/{_IMAGE}/v1"
    uploaded = upload_multipart(port, path, source, {"bench": "crowd"})
    if uploaded.status != 201:
        raise RuntimeError(f"the crowd's image upload answered {uploaded.status}")
    probes = ["/healthz", "/readyz", f"/reg/{_REPO}", f"/reg/{_REPO}/{_IMAGE}"]
    quiet, quiet_errors = _probe(port, probes, rounds)
    if quiet_errors or not quiet:
        raise RuntimeError(f"probes on the idle server failed ({quiet_errors} errors)")
    with ExitStack() as stack:
        crowd = [stack.enter_context(_connect(port)) for _ in range(idle)]
        paused = [stack.enter_context(_connect(port, _SMALL_RCVBUF)) for _ in range(downloads)]
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        for sock in paused:
            sock.sendall(request)
        heads = [_read_head(sock) for sock in paused]
        not_ok = [head[:40] for head in heads if not head.startswith(b"HTTP/1.1 200")]
        if not_ok:
            raise RuntimeError(f"paused downloads were refused: {not_ok[:3]}")
        log(f"  held: {idle} idle connections, {downloads} paused downloads")
        busy, errors = _probe(port, probes, rounds)
        rss_mib = rss_kib(pids) / 1024
        closed = sum(not _still_open(sock) for sock in [*crowd, *paused])
    if not busy:
        raise RuntimeError(f"no probe answered under the crowd ({errors} errors)")
    p50, p99 = percentile(busy, 0.5) * 1000, percentile(busy, 0.99) * 1000
    quiet_p99 = percentile(quiet, 0.99) * 1000
    measured = f"p99 {p99:.1f} ms (p50 {p50:.1f}, n={len(busy)}, errors {errors})"
    if closed:
        measured += f", {closed} of the crowd closed"
    log(f"  {label}: {measured}; server RSS {rss_mib:.0f} MiB")
    return Row(
        "crowd_probes",
        label,
        measured,
        f"idle p99 {quiet_p99:.1f} ms",
        p99 / quiet_p99,
        target,
        p99 < CROWD_P99_MS and errors == 0 and closed == 0,
        details={"p50_ms": p50, "p99_ms": p99, "max_ms": max(busy) * 1000, "count": len(busy),
                 "errors": errors, "closed": closed, "idle_p99_ms": quiet_p99,
                 "server_rss_mib": rss_mib},
    )  # fmt: skip
