"""CPU cost of image inspection per GiB, against blake3 per GiB in the same run.

An upload's bytes reach the inspector in the staging writer's 4 MiB batches, on the
thread that also runs blake3 and sha256 over them; this times exactly that feeding
(``ImageInspector.feed`` then ``finish``) and the hashes over the same batches, in
interleaved rounds, and prints the medians and the ratios. Nothing touches the disk
while timing: each image is its real head (made by qemu-img: qcow2, a VMDK with a
footer as VMware writes it, raw) followed by random batches up to ``--size``, and for
the VMDK its real end (footer and end-of-stream marker).

    python benchmarks/inspect_cost.py                # 1 GiB, 5 rounds
    python benchmarks/inspect_cost.py --size 4G --rounds 7 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3

from cloudimg.config import parse_size
from cloudimg.images import ImageInspector, InspectionPolicy

BATCH = 4 * 1024 * 1024  # the staging writer's batch (cloudimg.blobstore.staging)
GIB = 1024**3


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def heads_and_tails(workdir: Path) -> dict[str, tuple[bytes, bytes]]:
    """Each kind's first bytes and last bytes, from a real image."""
    qcow2 = workdir / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(qcow2), "64G")
    raw = workdir / "disk.raw"
    raw.write_bytes(os.urandom(BATCH))
    vmdk = workdir / "disk.vmdk"
    qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
             str(raw), str(vmdk))  # fmt: skip
    stream = bytearray(vmdk.read_bytes())
    header = bytes(stream[:512])
    stream[56:64] = b"\xff" * 8  # grain directory "at the end": a footer follows
    footer = (1).to_bytes(8, "little") + bytes(4) + (3).to_bytes(4, "little")
    tail = footer.ljust(512, b"\0") + header + bytes(512)
    return {
        "raw": (b"", b""),
        "qcow2": (qcow2.read_bytes()[:BATCH], b""),
        "vmdk-footer": (bytes(stream), tail),
    }


def batches(head: bytes, tail: bytes, size: int, noise: list[bytes]) -> Iterator[bytes]:
    """``head``, then random 4 MiB batches, then ``tail``: ``size`` bytes in all."""
    body = size - len(head) - len(tail)
    if head:
        yield head
    for index in range(body // BATCH):
        yield noise[index % len(noise)]
    if body % BATCH:
        yield noise[0][: body % BATCH]
    if tail:
        yield tail


def timed(work: Callable[..., None], *args: object, **kwargs: object) -> float:
    start = time.process_time()  # CPU of every thread: blake3 may use several
    work(*args, **kwargs)
    return time.process_time() - start


def inspect_all(head: bytes, tail: bytes, size: int, noise: list[bytes]) -> None:
    inspector = ImageInspector(InspectionPolicy(max_virtual_size=2**63))
    fed = 0
    for batch in batches(head, tail, size, noise):
        inspector.feed(memoryview(batch))
        fed += len(batch)
    inspector.finish(fed)


def hash_all(head: bytes, tail: bytes, size: int, noise: list[bytes], sha256: bool) -> None:
    b3 = blake3.blake3(max_threads=blake3.blake3.AUTO)
    sha = hashlib.sha256()
    for batch in batches(head, tail, size, noise):
        b3.update(batch)
        if sha256:
            sha.update(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=GIB, help="bytes per image (1G)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    options = parser.parse_args()
    noise = [os.urandom(BATCH) for _ in range(4)]
    with tempfile.TemporaryDirectory() as workdir:
        kinds = heads_and_tails(Path(workdir))
    results: dict[str, dict[str, float]] = {}
    for kind, (head, tail) in kinds.items():
        per_gib = options.size / GIB
        samples: dict[str, list[float]] = {"inspect": [], "blake3": [], "blake3+sha256": []}
        for _ in range(options.rounds):  # interleaved: a noisy neighbour hits all alike
            image = (head, tail, options.size, noise)
            samples["inspect"].append(timed(inspect_all, *image))
            samples["blake3"].append(timed(hash_all, *image, sha256=False))
            samples["blake3+sha256"].append(timed(hash_all, *image, sha256=True))
        medians = {name: statistics.median(values) / per_gib for name, values in samples.items()}
        results[kind] = {
            "inspect_cpu_s_per_gib": medians["inspect"],
            "blake3_cpu_s_per_gib": medians["blake3"],
            "blake3_sha256_cpu_s_per_gib": medians["blake3+sha256"],
            "inspect_vs_blake3": medians["inspect"] / medians["blake3"],
            "inspect_vs_hashing_thread": medians["inspect"] / medians["blake3+sha256"],
        }
    if options.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(f"{'image':<12} {'inspect s/GiB':>14} {'blake3 s/GiB':>13} {'+sha256 s/GiB':>14} "
          f"{'inspect/blake3':>15} {'inspect/(b3+sha)':>17}")  # fmt: skip
    for kind, row in results.items():
        print(
            f"{kind:<12} {row['inspect_cpu_s_per_gib']:>14.4f} {row['blake3_cpu_s_per_gib']:>13.4f}"
            f" {row['blake3_sha256_cpu_s_per_gib']:>14.4f} {row['inspect_vs_blake3']:>15.4f}"
            f" {row['inspect_vs_hashing_thread']:>17.4f}"
        )


if __name__ == "__main__":
    main()
