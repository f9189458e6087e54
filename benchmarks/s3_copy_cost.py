#!/usr/bin/env python3
"""What a server-side copy costs SeaweedFS, against a put of the same bytes.

``place`` (the S3 store's last upload step) copies the staged object to the blob's key.
This times, on one SeaweedFS on loopback, each round: one ``CopyObject`` of an object;
the same copy as one ``UploadPartCopy`` part, and as four parts copied in parallel
(whether splitting the copy hides it); and a ``PutObject`` of the same bytes held in
memory. Each line gives MB/s and SeaweedFS's CPU seconds per GiB (its process, all
threads), which is what decides the rate on a machine whose cores are all busy::

    python benchmarks/s3_copy_cost.py --size-mib 256 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import GiB, MiB, cpu_seconds, load_average
from s3_servers import seaweedfs
from tests.object_store import s3_location

from cloudimg.blobstore.s3.client import client_for

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef


def copy_in_parts(client: S3Client, bucket: str, target: str, size: int, parts: int) -> None:
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=target)["UploadId"]
    step = -(-size // parts)

    def one(index: int) -> CompletedPartTypeDef:
        start = index * step
        end = min(size, start + step) - 1
        copied = client.upload_part_copy(
            Bucket=bucket,
            Key=target,
            UploadId=upload_id,
            PartNumber=index + 1,
            CopySource={"Bucket": bucket, "Key": "source"},
            CopySourceRange=f"bytes={start}-{end}",
        )
        return {"PartNumber": index + 1, "ETag": copied["CopyPartResult"]["ETag"]}

    with ThreadPoolExecutor(parts) as pool:
        done = list(pool.map(one, range(parts)))
    client.complete_multipart_upload(
        Bucket=bucket, Key=target, UploadId=upload_id, MultipartUpload={"Parts": done}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.size_mib < 20:
        parser.error("--size-mib must be 20 at least (4 copied parts of 5 MiB, S3's minimum)")
    size = args.size_mib * MiB
    print(f"{args.size_mib} MiB, load average {load_average()} before")
    with seaweedfs() as store:
        bucket = store.new_bucket()
        client = client_for(s3_location(store, bucket, prefix=""))
        data = os.urandom(size)
        client.put_object(Bucket=bucket, Key="source", Body=data)
        weed = [store.process.pid]

        def measure(name: str, work: Callable[[], object]) -> None:
            cpu, started = cpu_seconds(weed), time.perf_counter()
            work()
            seconds = time.perf_counter() - started
            spent = (cpu_seconds(weed) - cpu) * GiB / size
            print(f"  {name:32s} {size / seconds / 1e6:6.0f} MB/s  weed {spent:5.2f} CPU s/GiB")

        source: CopySourceTypeDef = {"Bucket": bucket, "Key": "source"}
        for number in range(args.rounds):
            measure(
                "CopyObject",
                partial(client.copy_object, Bucket=bucket, Key=f"copy-{number}", CopySource=source),
            )
            for parts in (1, 4):
                measure(
                    f"UploadPartCopy, {parts} part(s) at once",
                    partial(copy_in_parts, client, bucket, f"p{parts}-{number}", size, parts),
                )
            measure(
                "PutObject (bytes in memory)",
                partial(client.put_object, Bucket=bucket, Key=f"put-{number}", Body=data),
            )
    print(f"load average {load_average()} after")


if __name__ == "__main__":
    main()
