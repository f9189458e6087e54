"""Issue 12, targets 2 and 3 (the cost of many downloads, and latency while they run).

The listings and ``/meta`` are requested in turn on one keep-alive connection, first on
an idle server (the reference), then while downloads run:

- eight whole-file downloads at full speed (curl, niced), target p99 < 50 ms;
- ``--slow-clients`` (200) rate-limited downloads (``curl --limit-rate``: the sockets
  fill, the server holds every connection open), target p99 < 250 ms. The server's
  RSS and CPU during that window are what many concurrent downloads cost.
"""

from __future__ import annotations

import http.client
import math
import subprocess
import time
from collections.abc import Callable, Sequence

from clients import curl_downloads, curl_outcomes
from fig_upload import IMAGE, REPO
from harness import (
    Children,
    Row,
    RssSampler,
    cpu_seconds,
    log,
    percentile,
    rss_kib,
)
from servers import Server

BUSY_P99_MS = 50.0
SLOW_P99_MS = 250.0
_IDLE_SAMPLES = 400


def listing_paths(tag: str) -> list[str]:
    return ["/reg", f"/reg/{REPO}", f"/reg/{REPO}/{IMAGE}", f"/reg/{REPO}/{IMAGE}/{tag}/meta"]


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
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            errors += response.status != 200
    finally:
        connection.close()
    return latencies, errors


def _latency_row(
    key: str, label: str, busy: list[float], idle: list[float], errors: int, limit_ms: float
) -> Row:
    p50, p99 = percentile(busy, 0.5) * 1000, percentile(busy, 0.99) * 1000
    idle_p99 = percentile(idle, 0.99) * 1000
    return Row(
        key,
        label,
        f"p99 {p99:.1f} ms (p50 {p50:.1f}, n={len(busy)}, errors {errors})",
        f"idle p99 {idle_p99:.1f} ms",
        p99 / idle_p99,
        f"p99 < {limit_ms:g} ms",
        p99 < limit_ms and errors == 0,
        details={"p50_ms": p50, "p99_ms": p99, "max_ms": max(busy) * 1000, "count": len(busy),
                 "errors": errors, "idle_p99_ms": idle_p99},
    )  # fmt: skip


def _stop(children: Children, processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        children.stop(process, timeout=2.0)


def run_latency(
    children: Children,
    cloudimg: Server,
    tag: str,
    size: int,
    busy_bytes: int,
    slow_clients: int,
    slow_rate: str,
    slow_seconds: float,
) -> list[Row]:
    paths = listing_paths(tag)
    image_path = f"/reg/{REPO}/{IMAGE}/{tag}"
    idle, _ = measure_latencies(cloudimg.port, paths, lambda count: count < _IDLE_SAMPLES)
    rows = []

    # Eight whole-file downloads, each fetching the image enough times to last a while.
    repeat = max(1, math.ceil(busy_bytes / size))
    downloads = curl_downloads(children, cloudimg.port, image_path, 8, repeat)
    try:
        busy, errors = measure_latencies(
            cloudimg.port, paths, lambda _count: all(p.poll() is None for p in downloads)
        )
    finally:
        _stop(children, downloads)
    wrong = [line for lines in curl_outcomes(downloads) for line in lines if line != f"200 {size}"]
    if wrong or not busy:
        raise RuntimeError(f"the eight downloads failed: {wrong[:5]} ({len(busy)} samples)")
    label = "3 listing+meta p99, 8 whole-file downloads"
    rows.append(_latency_row("latency_8_downloads", label, busy, idle, errors, BUSY_P99_MS))
    log(f"  {label}: {rows[-1].measured}")

    # Many slow downloads: the latency while they run, and what they cost the server.
    idle_rss = rss_kib(cloudimg.pids)
    slow = curl_downloads(children, cloudimg.port, image_path, slow_clients, 1, slow_rate)
    try:
        time.sleep(min(3.0, 1.0 + slow_clients / 100))  # let every client connect
        pids = cloudimg.pids
        cpu_before, started = cpu_seconds(pids), time.perf_counter()
        deadline = started + slow_seconds
        with RssSampler(pids) as sampler:
            busy, errors = measure_latencies(
                cloudimg.port, paths, lambda _count: time.perf_counter() < deadline
            )
        cores = (cpu_seconds(pids) - cpu_before) / (time.perf_counter() - started)
        ended = [p for p in slow if p.poll() is not None]
    finally:
        _stop(children, slow)
    failed = [lines for p, lines in zip(slow, curl_outcomes(slow), strict=True) if p in ended]
    failed = [lines for lines in failed if lines != [f"200 {size}"]]
    if failed:
        raise RuntimeError(f"slow downloads ended early: {failed[:5]}")
    label = f"3 listing+meta p99, {slow_clients} slow downloads ({slow_rate}B/s each)"
    rows.append(_latency_row("latency_slow_downloads", label, busy, idle, errors, SLOW_P99_MS))
    log(f"  {label}: {rows[-1].measured}")
    peak = sampler.peak_kib / 1024
    rows.append(
        Row(
            "slow_downloads_cost",
            f"2 cost of {slow_clients} concurrent slow downloads",
            f"RSS {peak:.0f} MiB (idle {idle_rss / 1024:.0f}), {cores:.2f} CPU cores",
            info=True,
            details={
                "peak_rss_mib": peak,
                "idle_rss_mib": idle_rss / 1024,
                "cpu_cores": cores,
                "rss_per_client_kib": (sampler.peak_kib - idle_rss) / slow_clients,
            },
        )
    )
    return rows
