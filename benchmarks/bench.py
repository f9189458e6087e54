#!/usr/bin/env python3
"""cloudimg benchmark: the figures of docs/performance.md, as ratios in one run.

Absolute numbers drift from machine to machine and from minute to minute, so every
figure is printed next to a reference measured in the same run, on the same file
system, with the same client:

1. upload throughput of a multipart POST to a fresh ``cloudimg serve`` against
   ``dd bs=4M conv=fsync`` of the same source file (target >= 0.8x);
2. download throughput (whole file, and one large range) against nginx serving the
   same blob file with ``sendfile on`` (target >= 0.8x);
3. peak server RSS during a 4 GiB upload (target < 150 MiB);
4. p50/p99 latency of listing and metadata requests while eight whole-file (and,
   separately, eight ranged) downloads of the image run (target p99 < 100 ms);
5. with ``--compare-uvicorn``: the same figures for the same app under uvicorn.

Clients are as cheap as they can be so that the server is what gets measured: the
upload is a raw socket that ``sendfile``s the source file between the multipart
head and tail; a download is a raw socket reading into one reusable buffer; the
concurrent downloads of figure 4 are ``nice -n 19 curl -o /dev/null`` processes.

Fairness: dd and each upload start from the same state (dirty pages synced, then a
scratch file written and deleted so both get "hot" free memory, see
``heat_page_cache``); dd and upload runs are interleaved, as are app and nginx
downloads (after one untimed round, from a warm page cache); medians are reported.
The CPU time the server and the reference spent per GiB is printed too: on a shared
machine it drifts much less than wall-clock throughput.

Run it from the repository root with the venv active::

    python benchmarks/bench.py                 # 2 GiB uploads, 4 GiB RSS upload
    python benchmarks/bench.py --compare-uvicorn --json
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import http.client
import json
import math
import os
import platform
import pwd
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

MiB = 1024 * 1024
GiB = 1024 * MiB
_UNITS = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}
_SOURCE_BLOCK = 16 * MiB
_RECV_BUFFER = 1 * MiB
_START_TIMEOUT = 30.0
_RSS_INTERVAL = 0.05
_SETTLE_SECONDS = 1.0
_BENCH_DIR = Path(__file__).resolve().parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

UPLOAD_RATIO_TARGET = 0.8
DOWNLOAD_RATIO_TARGET = 0.8
RSS_LIMIT_MIB = 150.0
P99_LIMIT_MS = 100.0

REPO, IMAGE = "bench", "disk"


def log(message: str) -> None:
    """Progress goes to stderr, so ``--json`` output on stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``512M``, ``4G``, ``4GiB``, ``1.5G`` or a plain byte count; binary multiples."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M, 2G, 4GiB)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def human_size(size: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} B"


def rate_text(bytes_per_second: float) -> str:
    return f"{bytes_per_second / MiB:,.0f} MiB/s"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settle() -> None:
    """Flush dirty pages and let the disk go idle, so one run does not pay for the last."""
    os.sync()
    time.sleep(_SETTLE_SECONDS)


def heat_page_cache(directory: Path, size: int) -> None:
    """Write and delete a scratch file, so the next write gets memory that is ready to use.

    On a VM whose guest memory is lazily backed by the host (a restored snapshot, free
    page reporting to a balloon), the first touch of a guest page costs a host fault:
    filling the page cache then runs at a few hundred MB/s, whatever the disk does, and
    how many "hot" free pages happen to exist decides the result. A scratch file of the
    same size, deleted just before the timed write, leaves that many hot free pages, so
    dd and the server start from the same memory state. The scratch file is never
    synced, so deleting it drops its pages without disk I/O.
    """
    scratch = directory / "heat.scratch"
    block = bytes(8 * MiB)
    with scratch.open("wb") as file:
        for _ in range(size // len(block) + 1):
            file.write(block)
    scratch.unlink()


def before_write(directory: Path, size: int, heat: bool) -> None:
    """The same preparation before every timed write (dd or upload)."""
    settle()
    if heat:
        heat_page_cache(directory, size + 256 * MiB)


# --------------------------------------------------------------------------------------
# Child processes and cleanup


class Children:
    """Every child process we start, so that all of them are stopped at the end."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C reaches only us, and we stop children in order.
        process: subprocess.Popen[bytes] = subprocess.Popen(
            list(command), start_new_session=True, **kwargs
        )
        self._running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
        if process in self._running:
            self._running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._running)):
            self.stop(process, timeout=5.0)


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------
# Minimal HTTP/1.1 clients on raw sockets


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
    while b"\r\n\r\n" not in data:
        view = memoryview(buffer)
        received = sock.recv_into(view)
        if received == 0:
            raise ConnectionError(f"connection closed before the response head: {bytes(data)!r}")
        data += view[:received]
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


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


def upload_file(port: int, path: str, source: Path, meta: dict[str, str]) -> Response:
    """POST ``source`` as the ``img`` part (after a ``meta`` part), streamed with sendfile.

    The clock runs from connect to the last byte of the response, so it includes the
    server's fsync and catalog commit.
    """
    size = source.stat().st_size
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
    request = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + size + len(tail)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    buffer = bytearray(64 * 1024)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock, source.open("rb") as file:
        try:
            sock.sendall(request + head)
            sock.sendfile(file, 0, size)
            sock.sendall(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (an error); read what it said
        status, headers, rest = _read_head(sock, buffer)
        length = int(headers["content-length"]) if "content-length" in headers else None
        body, total = _read_body(sock, buffer, rest, length, keep=True)
    return Response(status, headers, body, total, time.perf_counter() - started)


def download(port: int, path: str, extra_headers: dict[str, str] | None = None) -> Response:
    """GET ``path`` and read the body into one reusable 1 MiB buffer (nothing is kept)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (extra_headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    buffer = bytearray(_RECV_BUFFER)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        status, headers, rest = _read_head(sock, buffer)
        length = int(headers["content-length"]) if "content-length" in headers else None
        _, total = _read_body(sock, buffer, rest, length, keep=False)
    return Response(status, headers, b"", total, time.perf_counter() - started)


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


# --------------------------------------------------------------------------------------
# The servers under test and the references


@dataclass
class AppServer:
    """A running cloudimg app (under Granian or uvicorn) and its data root."""

    kind: str
    process: subprocess.Popen[bytes]
    port: int
    data_root: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def start_app_server(children: Children, kind: str, data_root: Path, log_path: Path) -> AppServer:
    """``cloudimg serve`` (Granian, in-process) or uvicorn with the benchmark's factory."""
    port = free_port()
    env = {**os.environ, "CLOUDIMG_DATA_ROOT": str(data_root)}
    if kind == "granian":
        command = [
            sys.executable, "-m", "cloudimg", "serve",
            "--listener-addr", f"127.0.0.1:{port}",
            "--data-root", str(data_root),
        ]  # fmt: skip
    elif kind == "uvicorn":
        command = [
            sys.executable, "-m", "uvicorn", "--factory",
            "--app-dir", str(_BENCH_DIR), "uvicorn_app:app_factory",
            "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    else:
        raise ValueError(kind)
    with log_path.open("ab") as log_file:
        process = children.start(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = AppServer(kind, process, port, data_root, log_path)
    try:
        wait_for_http(port, "/healthz", process, log_path)
    except BaseException:
        children.stop(process)
        raise
    return server


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int


def find_nginx(option: str | None) -> str | None:
    for candidate in (option, shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def start_nginx(children: Children, binary: str, root: Path, workdir: Path) -> Nginx:
    """nginx in the foreground, serving ``root`` with sendfile, all its files in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # As root, nginx's workers would switch to "nobody", who cannot enter our 0700 temp dirs.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = f"""
daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""
    config_path = workdir / "nginx.conf"
    config_path.write_text(config)
    log_path = workdir / "stderr.log"
    command = [binary, "-p", str(workdir), "-c", str(config_path), "-e", str(workdir / "error.log")]
    with log_path.open("ab") as log_file:
        process = children.start(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_http(port, "/", process, log_path)
    except BaseException:
        children.stop(process)
        raise
    return Nginx(process, port)


# --------------------------------------------------------------------------------------
# Figures


@dataclass
class Row:
    """One line of the result table."""

    key: str
    figure: str
    measured: float | None
    measured_text: str
    reference: float | None
    reference_text: str
    ratio: float | None
    target: str
    passed: bool | None
    details: dict[str, Any] = field(default_factory=dict)
    cpu: str = ""
    """Median CPU seconds per GiB moved: the server's, then the reference's."""

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "skip"}[self.passed]


def skipped(key: str, figure: str, target: str, reason: str) -> Row:
    return Row(key, figure, None, f"skipped: {reason}", None, "", None, target, None)


def make_source(path: Path, size: int) -> None:
    """A file of ``size`` bytes: random 16 MiB blocks, each stamped with its index."""
    log(f"writing the {human_size(size)} source file {path.name}")
    block = bytearray(os.urandom(_SOURCE_BLOCK))
    with path.open("wb") as file:
        written = 0
        index = 0
        while written < size:
            block[:8] = index.to_bytes(8, "little")
            chunk = memoryview(block)[: min(_SOURCE_BLOCK, size - written)]
            file.write(chunk)
            written += len(chunk)
            index += 1
        file.flush()
        os.fsync(file.fileno())


def stamp_source(path: Path, label: str) -> None:
    """Change the first bytes so that every upload is a new blob (no deduplication)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, label.encode().ljust(32, b"\0")[:32], 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def warm_page_cache(path: Path) -> None:
    """Read the file once, so every timed read comes from the page cache."""
    buffer = bytearray(8 * MiB)
    with path.open("rb", buffering=0) as file:
        while file.readinto(buffer):
            pass


@dataclass
class Timing:
    """Wall time of one timed operation and the CPU time its server (or dd) spent on it."""

    seconds: float
    cpu_seconds: float


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system time so far of these processes (all their threads)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's master and its workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                pids += process_tree(int(child))
    return pids


def time_dd(source: Path, target: Path) -> Timing:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        ["dd", f"if={source}", f"of={target}", "bs=4M", "conv=fsync", "status=none"], check=True
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Timing(seconds, cpu)


def time_upload(server: AppServer, source: Path, tag: str) -> Timing:
    cpu_before = cpu_seconds([server.pid])
    response = upload_file(server.port, f"/reg/{REPO}/{IMAGE}/{tag}", source, {"bench": tag})
    if response.status != 201:
        raise RuntimeError(f"upload answered {response.status}: {response.body[:500]!r}")
    return Timing(response.seconds, cpu_seconds([server.pid]) - cpu_before)


def cpu_text(size: int, measured: Sequence[Timing], reference: Sequence[Timing]) -> str:
    """Median CPU seconds per GiB of the server and of the reference."""
    per_gib = [
        median([t.cpu_seconds for t in timings]) * GiB / size for timings in (measured, reference)
    ]
    return f"{per_gib[0]:.2f} / {per_gib[1]:.2f}"


def _timing_details(name: str, timings: Sequence[Timing]) -> dict[str, list[float]]:
    return {
        f"{name}_seconds": [t.seconds for t in timings],
        f"{name}_cpu_seconds": [t.cpu_seconds for t in timings],
    }


def figure_upload(
    server: AppServer, source: Path, workdir: Path, repeats: int, heat: bool
) -> tuple[Row, list[str]]:
    """Figure 1: interleaved dd and upload runs of the same source; medians."""
    size = source.stat().st_size
    dd_runs: list[Timing] = []
    uploads: list[Timing] = []
    tags: list[str] = []
    warm_page_cache(source)
    for run in range(1, repeats + 1):
        before_write(workdir, size, heat)
        dd_out = workdir / "dd.out"
        dd_runs.append(time_dd(source, dd_out))
        dd_out.unlink()
        log(f"  run {run}/{repeats}: dd conv=fsync {rate_text(size / dd_runs[-1].seconds)}")
        tag = f"up-{run}"
        stamp_source(source, f"{server.kind}-{tag}")
        warm_page_cache(source)
        before_write(workdir, size, heat)
        uploads.append(time_upload(server, source, tag))
        tags.append(tag)
        log(
            f"  run {run}/{repeats}: {server.kind} upload {rate_text(size / uploads[-1].seconds)}"
            f" ({uploads[-1].cpu_seconds * GiB / size:.2f} CPU s/GiB,"
            f" dd {dd_runs[-1].cpu_seconds * GiB / size:.2f})"
        )
    measured = size / median([t.seconds for t in uploads])
    reference = size / median([t.seconds for t in dd_runs])
    ratio = measured / reference
    row = Row(
        "upload",
        f"1 upload {human_size(size)} (multipart POST)",
        measured,
        rate_text(measured),
        reference,
        f"dd conv=fsync {rate_text(reference)}",
        ratio,
        f">= {UPLOAD_RATIO_TARGET}x dd",
        ratio >= UPLOAD_RATIO_TARGET,
        {"bytes": size, **_timing_details("upload", uploads), **_timing_details("dd", dd_runs)},
        cpu_text(size, uploads, dd_runs),
    )
    return row, tags


def blob_path_of(server: AppServer, tag: str) -> tuple[Path, int]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", f"/reg/{REPO}/{IMAGE}/{tag}/meta")
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"meta of {tag} answered {response.status}")
        meta = json.loads(response.read())
    finally:
        connection.close()
    digest = str(meta["digest"]).removeprefix("blake3:")
    path = server.data_root / "blobs" / "blake3" / digest[:2] / digest[2:]
    return path, int(meta["size"])


@dataclass
class DownloadCase:
    """One kind of timed GET: where it goes, what it asks for, what it must get."""

    port: int
    path: str
    headers: dict[str, str]
    status: int
    length: int
    pids: list[int]

    def run(self) -> Timing:
        cpu_before = cpu_seconds(self.pids)
        response = download(self.port, self.path, self.headers)
        cpu = cpu_seconds(self.pids) - cpu_before
        if (response.status, response.body_length) != (self.status, self.length):
            raise RuntimeError(
                f"GET {self.path} {self.headers}: got {response.status} with "
                f"{response.body_length} bytes, expected {self.status} with {self.length}"
            )
        return Timing(response.seconds, cpu)


def figure_download(
    children: Children,
    server: AppServer,
    tag: str,
    nginx_binary: str | None,
    workdir: Path,
    repeats: int,
) -> list[Row]:
    """Figure 2: whole-file and ranged GET against nginx sendfile of the same blob file."""
    blob, size = blob_path_of(server, tag)
    first, last = size // 8, size - size // 8 - 1
    ranged = {"Range": f"bytes={first}-{last}"}
    range_length = last - first + 1
    app_path = f"/reg/{REPO}/{IMAGE}/{tag}"
    nginx: Nginx | None = None
    reason = ""
    if nginx_binary is None:
        reason = "nginx not found (install nginx-light or pass --nginx)"
    else:
        nginx = start_nginx(children, nginx_binary, blob.parent.parent, workdir / "nginx")
    try:
        warm_page_cache(blob)
        app_pids = [server.pid]
        cases = {
            "app_whole": DownloadCase(server.port, app_path, {}, 200, size, app_pids),
            "app_range": DownloadCase(server.port, app_path, ranged, 206, range_length, app_pids),
        }
        if nginx is not None:
            nginx_path = f"/{blob.parent.name}/{blob.name}"
            nginx_pids = process_tree(nginx.process.pid)
            cases["nginx_whole"] = DownloadCase(nginx.port, nginx_path, {}, 200, size, nginx_pids)
            cases["nginx_range"] = DownloadCase(
                nginx.port, nginx_path, ranged, 206, range_length, nginx_pids
            )
        timings: dict[str, list[Timing]] = {name: [] for name in cases}
        for run in range(repeats + 1):  # run 0 is a warm-up
            for name, case in cases.items():
                timing = case.run()
                if run:
                    timings[name].append(timing)
        log(
            "  downloads: "
            + ", ".join(
                f"{name} {rate_text(cases[name].length / median([t.seconds for t in runs]))}"
                f" ({median([t.cpu_seconds for t in runs]) * GiB / cases[name].length:.2f}"
                " CPU s/GiB)"
                for name, runs in timings.items()
            )
        )
    finally:
        if nginx is not None:
            children.stop(nginx.process)
    rows = []
    for key, label, length in (
        ("download", f"2 download {human_size(size)} whole file", size),
        ("download_range", f"2 download range bytes={first}-{last}", range_length),
    ):
        suffix = "whole" if key == "download" else "range"
        app = timings[f"app_{suffix}"]
        measured = length / median([t.seconds for t in app])
        target = f">= {DOWNLOAD_RATIO_TARGET}x nginx"
        details: dict[str, Any] = {"bytes": length, **_timing_details("app", app)}
        if nginx is None:
            rows.append(
                Row(
                    key,
                    label,
                    measured,
                    rate_text(measured),
                    None,
                    f"skipped: {reason}",
                    None,
                    target,
                    None,
                    details,
                )
            )
            continue
        ref = timings[f"nginx_{suffix}"]
        reference = length / median([t.seconds for t in ref])
        details.update(_timing_details("nginx", ref))
        ratio = measured / reference
        rows.append(
            Row(
                key,
                label,
                measured,
                rate_text(measured),
                reference,
                f"nginx sendfile {rate_text(reference)}",
                ratio,
                target,
                ratio >= DOWNLOAD_RATIO_TARGET,
                details,
                cpu_text(length, app, ref),
            )
        )
    return rows


class RssSampler:
    """Samples VmRSS of a process every ~50 ms in a thread; reads VmHWM at the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def status_kib(self, field_name: str) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak_kib = max(self.peak_kib, self.status_kib("VmRSS"))
                self.samples += 1
            self._stop.wait(_RSS_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def figure_rss(server: AppServer, source: Path, workdir: Path, heat: bool) -> Row:
    """Figure 3: peak RSS of a freshly started server while it receives a large upload."""
    size = source.stat().st_size
    sampler = RssSampler(server.pid)
    idle_kib = sampler.status_kib("VmRSS")
    stamp_source(source, f"{server.kind}-rss")
    warm_page_cache(source)
    before_write(workdir, size, heat)
    with sampler:
        seconds = time_upload(server, source, "rss").seconds
    hwm_kib = sampler.status_kib("VmHWM")
    peak_mib = max(sampler.peak_kib, hwm_kib) / 1024
    log(
        f"  RSS: idle {idle_kib / 1024:.0f} MiB, sampled peak {sampler.peak_kib / 1024:.0f} MiB, "
        f"VmHWM {hwm_kib / 1024:.0f} MiB ({sampler.samples} samples); "
        f"upload {rate_text(size / seconds)}"
    )
    return Row(
        "rss",
        f"3 peak RSS during a {human_size(size)} upload",
        peak_mib,
        f"{peak_mib:.0f} MiB",
        idle_kib / 1024,
        f"idle {idle_kib / 1024:.0f} MiB",
        peak_mib / (idle_kib / 1024),
        f"< {RSS_LIMIT_MIB:.0f} MiB",
        peak_mib < RSS_LIMIT_MIB,
        {
            "sampled_peak_vmrss_mib": sampler.peak_kib / 1024,
            "vmhwm_mib": hwm_kib / 1024,
            "samples": sampler.samples,
            "upload_bytes": size,
            "upload_seconds": seconds,
        },
    )


def listing_paths(tag: str) -> list[str]:
    return [
        "/reg",
        f"/reg/{REPO}",
        f"/reg/{REPO}/{IMAGE}",
        f"/reg/{REPO}/{IMAGE}/{tag}/meta",
    ]


def measure_latencies(
    port: int, paths: Sequence[str], keep_going: Callable[[int], bool]
) -> tuple[list[float], int]:
    """Request ``paths`` in turn on one keep-alive connection while ``keep_going(count)``."""
    latencies: list[float] = []
    errors = 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        while keep_going(len(latencies)):
            path = paths[len(latencies) % len(paths)]
            started = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors += 1
    finally:
        connection.close()
    return latencies, errors


def _curl_download(
    children: Children, port: int, path: str, headers: dict[str, str]
) -> subprocess.Popen[bytes]:
    # Niced: in production the downloading clients sit on other hosts, so here they
    # must not take the CPU the server needs to answer the listings being timed.
    command = [
        "nice", "-n", "19", "curl", "-sS", "-o", "/dev/null",
        "-w", "%{http_code} %{size_download}\n",
    ]  # fmt: skip
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return children.start(
        [*command, f"http://127.0.0.1:{port}{path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def figure_listing(
    children: Children, server: AppServer, tag: str, concurrency: int, ranged: bool
) -> Row:
    """Figure 4: listing latency while ``concurrency`` downloads of the image run."""
    kind = "ranged" if ranged else "whole-file"
    key = "listing_range" if ranged else "listing"
    label = f"4 listing p99, {concurrency} {kind} downloads"
    target = f"p99 < {P99_LIMIT_MS:.0f} ms"
    if shutil.which("curl") is None:
        return skipped(key, label, target, "curl not found")
    paths = listing_paths(tag)
    idle, _ = measure_latencies(server.port, paths, lambda count: count < 400)
    idle.sort()
    _, size = blob_path_of(server, tag)
    headers = {"Range": f"bytes={size // 8}-{size - size // 8 - 1}"} if ranged else {}
    expected_bytes = size - 2 * (size // 8) if ranged else size
    image_path = f"/reg/{REPO}/{IMAGE}/{tag}"
    started = time.perf_counter()
    downloads = [
        _curl_download(children, server.port, image_path, headers) for _ in range(concurrency)
    ]
    try:
        busy, errors = measure_latencies(
            server.port, paths, lambda _count: all(p.poll() is None for p in downloads)
        )
        for process in downloads:
            process.wait()
        elapsed = time.perf_counter() - started
    finally:
        for process in downloads:
            children.stop(process, timeout=1.0)
    outcomes = [(p.stdout.read().decode().split() if p.stdout else []) for p in downloads]
    failures = [o for o in outcomes if o[:2] != [str(206 if ranged else 200), str(expected_bytes)]]
    if failures or not busy:
        raise RuntimeError(f"concurrent downloads failed: {failures} ({len(busy)} samples)")
    busy.sort()
    p50, p99 = percentile(busy, 0.50), percentile(busy, 0.99)
    idle_p99 = percentile(idle, 0.99)
    aggregate = concurrency * expected_bytes / elapsed
    log(
        f"  listing during {concurrency} {kind} downloads: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {busy[-1] * 1000:.1f} ms, n={len(busy)}, "
        f"errors={errors}; idle p99 {idle_p99 * 1000:.1f} ms; downloads {rate_text(aggregate)}"
    )
    return Row(
        key,
        label,
        p99 * 1000,
        f"p99 {p99 * 1000:.1f} ms (p50 {p50 * 1000:.1f}, n={len(busy)})",
        idle_p99 * 1000,
        f"idle p99 {idle_p99 * 1000:.1f} ms",
        p99 / idle_p99,
        target,
        p99 * 1000 < P99_LIMIT_MS and errors == 0,
        {
            "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000,
            "max_ms": busy[-1] * 1000,
            "count": len(busy),
            "errors": errors,
            "idle_p50_ms": percentile(idle, 0.5) * 1000,
            "idle_p99_ms": idle_p99 * 1000,
            "aggregate_download_bytes_per_second": aggregate,
        },
    )


# --------------------------------------------------------------------------------------
# One server's whole run


@dataclass
class Options:
    size: int
    rss_size: int
    directory: Path | None
    repeats: int
    download_repeats: int
    concurrency: int
    servers: list[str]
    heat: bool
    nginx: str | None
    json: bool
    keep: bool


def bench_server(
    children: Children, kind: str, options: Options, workdir: Path, sources: dict[str, Path]
) -> list[Row]:
    """All figures for one ASGI server, on a data root of its own."""
    data_root = workdir / f"data-{kind}"
    log_path = workdir / f"{kind}.log"
    try:
        rows = _bench_server(children, kind, options, workdir, sources, data_root, log_path)
    except Exception:
        if log_path.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            log(f"{kind}: the benchmark failed; last lines of the server log:\n" + "\n".join(tail))
        raise
    if not options.keep:
        shutil.rmtree(data_root, ignore_errors=True)
    return sorted(rows, key=lambda r: r.figure[0])


def _bench_server(
    children: Children,
    kind: str,
    options: Options,
    workdir: Path,
    sources: dict[str, Path],
    data_root: Path,
    log_path: Path,
) -> list[Row]:
    rows: list[Row] = []
    log(f"{kind}: starting a fresh server on {data_root}")
    server = start_app_server(children, kind, data_root, log_path)
    try:
        log(f"{kind}: figure 1, upload vs dd ({options.repeats} runs each, interleaved)")
        row, tags = figure_upload(server, sources["upload"], workdir, options.repeats, options.heat)
        rows.append(row)
        nginx = find_nginx(options.nginx)
        log(f"{kind}: figure 2, downloads vs nginx ({options.download_repeats} runs each)")
        rows += figure_download(
            children, server, tags[-1], nginx, workdir, options.download_repeats
        )
        for ranged in (False, True):
            log(f"{kind}: figure 4, listing latency under {options.concurrency} downloads")
            rows.append(figure_listing(children, server, tags[-1], options.concurrency, ranged))
    finally:
        children.stop(server.process)
    if options.rss_size > 0:
        log(f"{kind}: figure 3, RSS during a {human_size(options.rss_size)} upload (fresh server)")
        server = start_app_server(children, kind, data_root, log_path)
        try:
            rows.append(figure_rss(server, sources["rss"], workdir, options.heat))
        finally:
            children.stop(server.process)
    else:
        rows.append(skipped("rss", "3 peak RSS during an upload", "", "--rss-size 0"))
    return rows


# --------------------------------------------------------------------------------------
# Output


def _print_table(headers: Sequence[str], lines: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    rule = "+".join("-" * (w + 2) for w in widths)
    print("|".join(f" {h:<{w}} " for h, w in zip(headers, widths, strict=True)), file=out)
    print(rule, file=out)
    for line in lines:
        print("|".join(f" {c:<{w}} " for c, w in zip(line, widths, strict=True)), file=out)


def print_results(results: dict[str, list[Row]], out: TextIO) -> None:
    for kind, rows in results.items():
        server = "cloudimg serve (Granian)" if kind == "granian" else "uvicorn (uvloop, httptools)"
        print(f"\n{server}", file=out)
        _print_table(
            ("figure", "measured", "reference", "ratio", "target", "result", "CPU s/GiB app / ref"),
            [
                (
                    r.figure,
                    r.measured_text,
                    r.reference_text,
                    f"{r.ratio:.2f}x" if r.ratio is not None else "-",
                    r.target,
                    r.verdict,
                    r.cpu or "-",
                )
                for r in rows
            ],
            out,
        )
    if len(results) > 1:
        kinds = list(results)
        print("\nASGI server comparison (same app, same run)", file=out)
        by_key = {kind: {r.key: r for r in rows} for kind, rows in results.items()}
        lines = []
        for row in results[kinds[0]]:
            cells = [row.figure]
            for kind in kinds:
                other = by_key[kind].get(row.key)
                if other is None:
                    cells.append("-")
                    continue
                ratio = f" ({other.ratio:.2f}x)" if other.ratio is not None else ""
                cells.append(f"{_short(other)}{ratio} {other.verdict}")
            cells.append(row.target)
            lines.append(cells)
        _print_table(("figure", *kinds, "target"), lines, out)


def _short(row: Row) -> str:
    if row.measured is None:
        return "skipped"
    if row.key.startswith("listing"):
        return f"p99 {row.measured:.1f} ms"
    if row.key == "rss":
        return f"{row.measured:.0f} MiB"
    return rate_text(row.measured)


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def environment(options: Options, workdir: Path, load_before: str) -> dict[str, Any]:
    """Where and how the figures were taken (the load shows how shared the machine was)."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workdir": str(workdir),
        "size": options.size,
        "rss_size": options.rss_size,
        "repeats": options.repeats,
        "download_repeats": options.download_repeats,
        "concurrency": options.concurrency,
        "heat": options.heat,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


# --------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Print cloudimg's performance figures (docs/performance.md) as ratios "
        "against references measured in the same run.",
    )
    parser.add_argument(
        "--size", type=parse_size, default=parse_size("2G"),
        help="size of the uploaded and downloaded image, e.g. 512M, 4G (default 2G)",
    )  # fmt: skip
    parser.add_argument(
        "--rss-size", type=parse_size, default=parse_size("4G"),
        help="size of the upload during which server RSS is sampled; 0 skips (default 4G)",
    )  # fmt: skip
    parser.add_argument(
        "--dir", type=Path, default=None,
        help="where the temp dir (sources, dd output, data roots) goes; it must be on the "
        "file system you want to measure (default: the current directory)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="upload and dd runs (median)")
    parser.add_argument(
        "--download-repeats", type=int, default=7, help="runs of each download (median)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="concurrent downloads in figure 4"
    )
    parser.add_argument(
        "--compare-uvicorn", action="store_true",
        help="also run the figures for the same app under uvicorn (uvloop, httptools)",
    )  # fmt: skip
    parser.add_argument(
        "--servers",
        type=lambda text: [part for part in text.split(",") if part],
        default=["granian"],
        help="comma-separated ASGI servers to run: granian (cloudimg serve), uvicorn",
    )
    parser.add_argument("--nginx", default=None, help="nginx binary (default: from PATH)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--no-heat",
        action="store_true",
        help="do not write and delete a scratch file before each timed write (see "
        "heat_page_cache: on VMs with lazily backed memory the references then drift)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (for debugging)")
    args = parser.parse_args(argv)
    if set(args.servers) - {"granian", "uvicorn"} or not args.servers:
        parser.error("--servers takes granian, uvicorn or both")
    if args.size < MiB:
        parser.error("--size must be at least 1M")
    if args.repeats < 1 or args.download_repeats < 1 or args.concurrency < 1:
        parser.error("--repeats, --download-repeats and --concurrency must be positive")
    return Options(
        size=args.size,
        rss_size=args.rss_size,
        directory=args.dir,
        repeats=args.repeats,
        download_repeats=args.download_repeats,
        concurrency=args.concurrency,
        servers=["granian", "uvicorn"] if args.compare_uvicorn else args.servers,
        heat=not args.no_heat,
        nginx=args.nginx,
        json=args.json,
        keep=args.keep,
    )


@contextlib.contextmanager
def workspace(options: Options) -> Iterator[Path]:
    parent = (options.directory or Path.cwd()).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cloudimg-bench-", dir=parent))
    try:
        yield workdir
    finally:
        if options.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    children = Children()
    load_before = load_average()
    try:
        with workspace(options) as workdir:
            try:
                log(f"working in {workdir} (load average {load_before})")
                sources = {"upload": workdir / "source.img", "rss": workdir / "source-rss.img"}
                make_source(sources["upload"], options.size)
                if options.rss_size > 0:
                    make_source(sources["rss"], options.rss_size)
                results = {
                    kind: bench_server(children, kind, options, workdir, sources)
                    for kind in options.servers
                }
            finally:
                # A second Ctrl-C must not cut the cleanup short.
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)
                children.stop_all()
    except KeyboardInterrupt:
        log("interrupted; child processes stopped and temp dir removed")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    env = environment(options, workdir, load_before)
    if options.json:
        document = {
            "environment": env,
            "results": {kind: [asdict(r) for r in rows] for kind, rows in results.items()},
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print(f"\n$ python {env['command']}")
        print(
            f"{env['date']}, {env['cpus']} CPUs, load average {env['load_average_before']} "
            f"before, {env['load_average_after']} after" + ("" if options.heat else ", --no-heat")
        )
        print_results(results, sys.stdout)
    return 1 if any(r.passed is False for rows in results.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
