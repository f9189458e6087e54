"""The uploads and downloads ``s3_bench.py`` times, each a callable that returns seconds.

Every HTTP side (cloudimg, distribution, SeaweedFS itself through a presigned URL) is
driven by the same raw-socket client (``clients.exchange``: the body is sent with
``sendfile`` and read into one reused buffer), so the client costs every side alike.
The plain S3 client is boto3: ``upload_file`` (managed multipart upload, 16 MiB parts,
its 10 threads) and ``get_object`` read in 1 MiB pieces.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from boto3.s3.transfer import TransferConfig
from clients import Response, download, exchange, upload_raw
from harness import MiB, cpu_seconds
from servers import Server

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

REPO, IMAGE = "bench", "disk"
_PART = 16 * MiB
_READ = MiB


@dataclass
class Side:
    """One way of moving the bytes, its times and the CPU it cost each process."""

    name: str
    run: Callable[[str], float]
    seconds: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)


def timed_with_cpu(side: Side, tag: str, watched: dict[str, list[int]]) -> None:
    """Run one transfer; note its seconds and each watched process tree's CPU seconds."""
    before = {name: cpu_seconds(pids) for name, pids in watched.items()}
    side.seconds.append(side.run(tag))
    for name, pids in watched.items():
        side.cpu.setdefault(name, []).append(cpu_seconds(pids) - before[name])


def expect(response: Response, status: int, what: str) -> Response:
    if response.status != status:
        raise RuntimeError(f"{what} answered {response.status}: {response.body[:300]!r}")
    return response


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()


# --------------------------------------------------------------------------------------
# Uploads


def cloudimg_put(server: Server, source: Path) -> Callable[[str], float]:
    """cloudimg's raw ``PUT /reg/...``: the clock stops at its 201 (stored and placed)."""

    def run(tag: str) -> float:
        path = f"/reg/{REPO}/{IMAGE}/{tag}"
        return expect(upload_raw(server.port, path, source), 201, f"PUT {path}").seconds

    return run


def boto3_multipart(client: S3Client, bucket: str, source: Path) -> Callable[[str], float]:
    """boto3's managed multipart upload of the file: what a plain S3 client does."""
    config = TransferConfig(multipart_threshold=_PART, multipart_chunksize=_PART)

    def run(tag: str) -> float:
        key = f"direct/{tag}"
        started = time.perf_counter()
        client.upload_file(str(source), bucket, key, Config=config)
        seconds = time.perf_counter() - started
        client.delete_object(Bucket=bucket, Key=key)  # untimed: keep the disk small
        return seconds

    return run


def registry_put(server: Server, source: Path, digests: dict[str, str]) -> Callable[[str], float]:
    """distribution's monolithic blob upload: ``POST`` opens a session, ``PUT ?digest=``
    carries the body (``digests[tag]``, hashed before the clock starts)."""

    def run(tag: str) -> float:
        opened = expect(
            exchange(server.port, "POST", f"/v2/{REPO}/{IMAGE}/blobs/uploads/"), 202, "POST"
        )
        location = re.sub(r"^https?://[^/]+", "", opened.headers["location"])
        separator = "&" if "?" in location else "?"
        path = f"{location}{separator}digest={digests[tag]}"
        put = expect(upload_raw(server.port, path, source), 201, "registry PUT")
        return opened.seconds + put.seconds

    return run


# --------------------------------------------------------------------------------------
# Downloads


def _read_all(port: int, path: str, size: int) -> float:
    got = expect(download(port, path), 200, f"GET {path[:60]}")
    if got.body_length != size:
        raise RuntimeError(f"GET {path[:60]} sent {got.body_length} bytes, not {size}")
    return got.seconds


def _followed(port: int, path: str, size: int) -> float:
    """A GET answered ``307``, and the GET of its ``Location`` (on the object store)."""
    answer = expect(exchange(port, "GET", path), 307, f"GET {path}")
    where = urlsplit(answer.headers["location"])
    assert where.port is not None
    return answer.seconds + _read_all(where.port, f"{where.path}?{where.query}", size)


def http_get(server: Server, path: str, size: int) -> Callable[[str], float]:
    return lambda _tag: _read_all(server.port, path, size)


def http_get_redirected(server: Server, path: str, size: int) -> Callable[[str], float]:
    return lambda _tag: _followed(server.port, path, size)


def presigned_get(url: str, size: int) -> Callable[[str], float]:
    """A GET of a presigned URL of the object, straight to SeaweedFS."""
    where = urlsplit(url)
    assert where.port is not None
    port, path = where.port, f"{where.path}?{where.query}"
    return lambda _tag: _read_all(port, path, size)


def boto3_get(client: S3Client, bucket: str, key: str, size: int) -> Callable[[str], float]:
    """boto3's ``get_object``, its body read in 1 MiB pieces (nothing kept)."""

    def run(_tag: str) -> float:
        started = time.perf_counter()
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        total = sum(len(piece) for piece in body.iter_chunks(_READ))
        seconds = time.perf_counter() - started
        if total != size:
            raise RuntimeError(f"boto3 read {total} bytes, not {size}")
        return seconds

    return run
