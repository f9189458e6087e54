"""What ``cloudimg gc`` and ``cloudimg fsck`` cost on a bucket of many objects.

A catalog and a bucket of their own: a cloudimg server makes the catalog (its
migrations) and stores one seed image, and is stopped; then ``objects`` small blobs
(4 KiB of random bytes each) are put straight into the bucket under their blob keys
by boto3 on 16 threads, and their rows (blob, one tag each, its history entry) are
added in bulk through the project's models, as ``fig_scale`` fills a catalog. That
is the state ``objects`` uploads leave, in a fraction of the time. Each command then
runs once as a child process, timed from start to exit: ``gc`` (nothing to reclaim:
it lists the bucket and compares it with the catalog), ``fsck`` (listings and sizes)
and ``fsck --checksum`` (reads and hashes every object).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import blake3
import boto3
from botocore.config import Config
from clients import upload_raw
from harness import Children, Row, log
from s3_servers import s3_args, start_cloudimg_s3
from s3_transfers import expect
from sqlalchemy import create_engine, insert, select
from tests.object_store import SeaweedFS

from cloudimg.catalog.models import Blob, Image, Repository, Tag, TagHistory
from cloudimg.config import Settings

OBJECT_SIZE = 4096
_THREADS = 16
_COMMANDS = (
    ("gc", ["gc", "--grace", "1h"]),
    ("fsck", ["fsck"]),
    ("fsck --checksum", ["fsck", "--checksum"]),
)


def _blobs(count: int) -> list[tuple[str, str, bytes]]:
    """``count`` random blobs: blake3 hex, sha256 hex, bytes."""
    found = []
    for _ in range(count):
        data = os.urandom(OBJECT_SIZE)
        found.append((blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest(), data))
    return found


def _put_all(store: SeaweedFS, bucket: str, blobs: list[tuple[str, str, bytes]]) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=_THREADS),
    )

    def put(blob: tuple[str, str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=f"blobs/blake3/{blob[0]}", Body=blob[2])

    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(put, blobs))


def _add_rows(data_root: Path, blobs: list[tuple[str, str, bytes]]) -> None:
    """One repository ``scale``, image ``img``, a tag per blob, as uploads leave them."""
    url = Settings(data_root=data_root).resolved_database_url.replace("+aiosqlite", "")
    engine = create_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as db:
        db.execute(
            insert(Blob),
            [
                {"digest": digest, "size": OBJECT_SIZE, "sha256": sha, "refcount": 1,
                 "created_at": now, "format": "raw", "virtual_size": OBJECT_SIZE,
                 "inspected_at": now}
                for digest, sha, _data in blobs
            ],
        )  # fmt: skip
        db.execute(insert(Repository), [{"name": "scale", "created_at": now}])
        repo_id = db.execute(select(Repository.id).where(Repository.name == "scale")).scalar_one()
        db.execute(insert(Image), [{"repository_id": repo_id, "name": "img", "created_at": now}])
        image_id = db.execute(select(Image.id).where(Image.repository_id == repo_id)).scalar_one()
        db.execute(
            insert(Tag),
            [{"image_id": image_id, "name": f"t{n:05d}", "digest": digest, "meta": {},
              "created_at": now, "updated_at": now}
             for n, (digest, _sha, _data) in enumerate(blobs)],
        )  # fmt: skip
        db.execute(
            insert(TagHistory),
            [{"repository": "scale", "image": "img", "tag": f"t{n:05d}", "action": "created",
              "digest": digest, "size": OBJECT_SIZE, "meta": {}, "at": now}
             for n, (digest, _sha, _data) in enumerate(blobs)],
        )  # fmt: skip
    engine.dispose()


def fill(
    children: Children, store: SeaweedFS, workdir: Path, seed: Path, objects: int
) -> tuple[Path, str]:
    """A catalog and bucket holding ``objects`` blobs (plus the seed's); where they are."""
    bucket = store.new_bucket()
    data_root = workdir / "data-scale"
    started = time.perf_counter()
    server = start_cloudimg_s3(children, store, bucket, data_root, workdir)
    try:
        expect(upload_raw(server.port, "/reg/seed/img/v1", seed), 201, "seed PUT")
    finally:
        children.stop(server.process)
    blobs = _blobs(objects)
    _put_all(store, bucket, blobs)
    _add_rows(data_root, blobs)
    log(f"  {objects:,} objects and their rows in {time.perf_counter() - started:.1f} s")
    return data_root, bucket


def run_maintenance(
    children: Children, store: SeaweedFS, workdir: Path, seed: Path, objects: int
) -> list[Row]:
    """One info row per command: seconds and objects a second."""
    data_root, bucket = fill(children, store, workdir, seed, objects)
    rows = []
    for name, words in _COMMANDS:
        command = [sys.executable, "-m", "cloudimg", *words, "--data-root", str(data_root)]
        command += [*s3_args(store, bucket), "--json", "--quiet"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        total = objects + 1
        log(f"  {name}: {seconds:.1f} s, exit {done.returncode}")
        if done.returncode != 0:
            log(f"  {name} said: {(done.stdout + done.stderr)[-500:]}")
        rows.append(
            Row(
                f"s3_{name.replace(' --', '_').replace(' ', '_')}",
                f"s3 {name}, {total:,}-object bucket",
                f"{seconds:.1f} s, {total / seconds:,.0f} objects/s",
                f"exit {done.returncode}",
                info=True,
                details={"seconds": seconds, "objects": total, "exit": done.returncode},
            )
        )
    return rows
