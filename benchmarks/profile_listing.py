#!/usr/bin/env python3
"""Where does a listing wait while eight downloads run? A py-spy profile of the server.

Starts ``cloudimg serve`` on a temp data root, uploads one image, then runs eight
whole-file curl downloads of it and the listing loop of ``fig_latency`` while
``py-spy record --idle --threads --format raw`` samples the server. Prints the
listing p99, how much of the window the event loop thread ran and how much it
waited for a CPU (``/proc/<pid>/task/<tid>/schedstat``), and, per thread, the share
of samples by leaf function and by frame (any depth), and two ``py-spy dump``
snapshots of the server's threads.

    python benchmarks/profile_listing.py [--size 1G] [--seconds 20] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from clients import curl_downloads, upload_multipart
from fig_latency import listing_paths, measure_latencies
from fig_upload import IMAGE, REPO
from harness import Children, GiB, log, make_source, parse_size, percentile
from servers import start_cloudimg

_TOP = 12
_COMMON = 0.8
"""Frames on more than this share of a thread's stacks (the loop's own) say nothing."""


def _schedstat(pid: int) -> tuple[float, float]:
    """Seconds the thread ``pid`` has run on a CPU, and waited runnable for one."""
    running, waiting, _slices = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(running) / 1e9, int(waiting) / 1e9


def _summarise(raw: Path) -> None:
    """Per thread: the leaf functions and the frames (any depth) the samples fall in."""
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    frames: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        parts = stack.split(";")
        thread, calls = parts[0], parts[1:]
        count = int(count_text)
        totals[thread] += count
        if calls:
            leaves[thread][calls[-1]] += count
        for frame in set(calls):
            frames[thread][frame] += count
    for thread, total in totals.most_common():
        print(f"\n== {thread}: {total} samples")
        print("  leaf functions:")
        for frame, count in leaves[thread].most_common(_TOP):
            print(f"    {100 * count / total:5.1f} %  {frame}")
        print(f"  frames anywhere on the stack (those on under {_COMMON:.0%} of them):")
        common = [(f, c) for f, c in frames[thread].most_common() if c <= _COMMON * total]
        for frame, count in common[:_TOP]:
            print(f"    {100 * count / total:5.1f} %  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=GiB)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="cloudimg-profile-", dir=args.dir or Path.cwd()))
    try:
        source = workdir / "source.img"
        make_source(source, args.size)
        server = start_cloudimg(children, "granian", workdir / "data", workdir)
        tag = "profiled"
        response = upload_multipart(server.port, f"/reg/{REPO}/{IMAGE}/{tag}", source, {})
        if response.status != 201:
            raise RuntimeError(f"upload answered {response.status}")
        repeat = max(1, (args.seconds + 10) * 2 * GiB // args.size // 8)
        downloads = curl_downloads(children, server.port, f"/reg/{REPO}/{IMAGE}/{tag}", 8, repeat)
        time.sleep(1.0)
        raw = workdir / "listing.raw"
        record = children.start(
            [py_spy, "record", "--pid", str(server.process.pid), "--idle", "--threads",
             "--rate", "200", "--duration", str(args.seconds), "--format", "raw",
             "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        results: list[tuple[list[float], int]] = []
        sched_before, started = _schedstat(server.process.pid), time.monotonic()
        deadline = time.monotonic() + args.seconds
        loop = threading.Thread(
            target=lambda: results.append(
                measure_latencies(
                    server.port, listing_paths(tag), lambda _n: time.monotonic() < deadline
                )
            )
        )
        loop.start()
        for _ in range(2):
            time.sleep(args.seconds / 3)
            dump = subprocess.run(
                [py_spy, "dump", "--pid", str(server.process.pid), "--nonblocking"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            print(dump.stdout)
        loop.join()
        sched_after = _schedstat(server.process.pid)
        ran, waited = (b - a for a, b in zip(sched_before, sched_after, strict=True))
        window = time.monotonic() - started
        record.wait(timeout=args.seconds + 60)
        running = sum(p.poll() is None for p in downloads)
        for process in downloads:
            children.stop(process, timeout=2.0)
        latencies, errors = results[0]
        print(
            f"listing+meta under 8 downloads ({running} still running at the end): "
            f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, n={len(latencies)}, "
            f"errors {errors}"
        )
        print(
            f"event loop thread over {window:.1f} s: on a CPU {ran / window:.0%}, "
            f"runnable but waiting for a CPU {waited / window:.0%} (/proc schedstat)"
        )
        _summarise(raw)
    finally:
        children.stop_all()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
