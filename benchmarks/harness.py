"""What every figure of ``bench.py`` shares: child processes, CPU and RSS readings, rows.

Nothing here measures anything by itself; the ``fig_*`` modules do, with these parts.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB
_UNITS = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}
_SOURCE_BLOCK = 16 * MiB
_MBR_SIGNATURE = slice(510, 512)
_RSS_INTERVAL = 0.05
_SETTLE_SECONDS = 1.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

BENCH_DIR = Path(__file__).resolve().parent


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


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


# --------------------------------------------------------------------------------------
# Result rows


@dataclass
class Row:
    """One line of the result table: a figure, its reference, their ratio, the verdict.

    ``passed`` is True/False for a target, None for a skipped one; ``info`` rows carry
    a figure the issue asks to report without a target.
    """

    key: str
    figure: str
    measured: str
    reference: str = ""
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    cpu: str = ""
    info: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.info:
            return "info"
        return {True: "PASS", False: "FAIL", None: "skip"}[self.passed]


def skipped(key: str, figure: str, target: str, reason: str) -> Row:
    return Row(key, figure, f"skipped: {reason}", target=target)


def ratio_row(
    key: str,
    figure: str,
    measured: str,
    reference: str,
    ratios: Sequence[float],
    minimum: float | None = None,
    maximum: float | None = None,
    **extra: Any,
) -> Row:
    """A row whose verdict is the median of per-round ratios against a bound."""
    ratio = median(ratios)
    if minimum is not None:
        target, passed = f">= {minimum:g}x", ratio >= minimum
    elif maximum is not None:
        target, passed = f"<= {maximum:g}x", ratio <= maximum
    else:
        raise ValueError("a ratio row needs a bound")
    details = {"round_ratios": list(ratios), **extra.pop("details", {})}
    return Row(key, figure, measured, reference, ratio, target, passed, details=details, **extra)


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
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self._running:
            self._running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._running)):
            self.stop(process, timeout=5.0)


def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------
# CPU, RSS, pinning


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's master and worker, Granian's workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                pids += process_tree(int(child))
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system time so far of these processes (all their threads)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def rss_kib(pids: Sequence[int], field_name: str = "VmRSS") -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
    return total


def pin(pids: Sequence[int], cpus: set[int]) -> None:
    """Move every thread of these processes to ``cpus`` (new threads inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def pinned(server_pids: Sequence[int], server_cpu: int, client_cpu: int) -> Any:
    """The server on one core, this process (the client) on the other, for a while."""
    every = os.sched_getaffinity(0)
    pin(server_pids, {server_cpu})
    os.sched_setaffinity(0, {client_cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, every)
        pin(server_pids, every)


class RssSampler:
    """Samples the summed VmRSS of some processes every ~50 ms in a thread."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, rss_kib(self.pids))
            self.samples += 1
            self._stop.wait(_RSS_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------
# Source files and the page cache


def make_source(path: Path, size: int) -> None:
    """``size`` random bytes in 16 MiB blocks, with no MBR signature (a raw image)."""
    log(f"writing the {human_size(size)} source file {path.name}")
    block = bytearray(os.urandom(_SOURCE_BLOCK))
    # Random bytes carry the 2-byte MBR signature once in 65,536 files: the image
    # inspection would then refuse a "partition table" (tests/support.py does the same).
    block[_MBR_SIGNATURE] = b"\0\0"
    with path.open("wb") as file:
        written = 0
        while written < size:
            chunk = memoryview(block)[: min(_SOURCE_BLOCK, size - written)]
            file.write(chunk)
            written += len(chunk)
        file.flush()
        os.fsync(file.fileno())


def stamp_source(path: Path, label: str) -> None:
    """Change bytes 16..48 so that every upload is a new blob (no deduplication)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, label.encode().ljust(32, b"\0")[:32], 16)
    finally:
        os.close(fd)


def warm_page_cache(path: Path) -> None:
    """Read the file once, so every timed read comes from the page cache."""
    buffer = bytearray(8 * MiB)
    with path.open("rb", buffering=0) as file:
        while file.readinto(buffer):
            pass


def heat_page_cache(directory: Path, size: int) -> None:
    """Write and delete a scratch file, so the next write gets memory that is ready to use.

    On a VM whose guest memory is lazily backed by the host, the first touch of a guest
    page costs a host fault: filling the page cache then runs at a few hundred MB/s,
    whatever the disk does. A scratch file of the same size, deleted just before the
    timed write, leaves that many hot free pages, so every writer starts from the same
    memory state. It is never synced, so deleting it drops its pages without disk I/O.
    """
    scratch = directory / "heat.scratch"
    block = bytes(8 * MiB)
    with scratch.open("wb") as file:
        for _ in range(size // len(block) + 1):
            file.write(block)
    scratch.unlink()


def before_write(directory: Path, size: int, heat: bool) -> None:
    """The same preparation before every timed write: sync, rest, warm free memory."""
    os.sync()
    time.sleep(_SETTLE_SECONDS)
    if heat:
        heat_page_cache(directory, size + 256 * MiB)
