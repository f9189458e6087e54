"""Wall time of the qemu-img cross-check per upload, against blake3 over 1 GiB in the same run.

The cross-check (``cloudimg.images.cross_check``, docs/security.md) runs one confined
``qemu-img info`` per accepted upload on the staged bytes. Its cost does not grow with
the image (qemu-img reads headers and tables, not data), so it is timed on real images
of each kind and printed beside the time blake3 takes over 1 GiB (what every upload of
1 GiB pays anyway), in interleaved rounds, medians.

    python benchmarks/qemu_img_check_cost.py            # 15 rounds
    python benchmarks/qemu_img_check_cost.py --rounds 31 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import blake3

from cloudimg.images import Inspection, cross_check, find_qemu_img

GIB = 1024**3
BATCH = 4 * 1024 * 1024


class _FileReader:
    """The one thing ``cross_check`` asks of a blob reader: its file descriptor."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)


def _make(folder: Path) -> dict[str, Path]:
    made = {}
    for fmt, size in (("raw", "1G"), ("qcow2", "1G"), ("vmdk", "1G")):
        path = folder / f"disk.{fmt}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
        made[fmt] = path
    return made


def _blake3_seconds(data: bytes) -> float:
    start = time.perf_counter()
    hasher = blake3.blake3()
    for _ in range(GIB // len(data)):
        hasher.update(data)
    return time.perf_counter() - start


def _check_seconds(qemu_img: str, fmt: str, path: Path) -> float:
    # Each image is a 1 GiB disk made by qemu-img: that is what inspection records.
    inspection = Inspection(fmt, GIB, None)
    reader = _FileReader(path)
    try:
        start = time.perf_counter()
        cross_check(qemu_img, reader, inspection)  # type: ignore[arg-type]
        return time.perf_counter() - start
    finally:
        reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    qemu_img = find_qemu_img()
    if qemu_img is None:
        raise SystemExit("qemu-img is not on PATH")
    batch = os.urandom(BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        made = _make(Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in [*made, "blake3-1GiB"]}
        for _ in range(args.rounds):
            for name, path in made.items():
                times[name].append(_check_seconds(qemu_img, name, path))
            times["blake3-1GiB"].append(_blake3_seconds(batch))
    medians = {name: statistics.median(values) for name, values in times.items()}
    if args.json:
        print(json.dumps(medians, indent=2))
        return
    reference = medians["blake3-1GiB"]
    print(f"blake3 over 1 GiB: {reference * 1000:.0f} ms (median of {args.rounds})")
    print("image      cross-check ms   / blake3 of 1 GiB")
    for name in made:
        print(f"{name:<10} {medians[name] * 1000:>14.1f}   {medians[name] / reference:>15.3f}")


if __name__ == "__main__":
    main()
