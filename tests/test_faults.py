"""Faults made for real against ``cloudimg serve``: kill -9, a full disk, a locked catalog,
an image over the size limit, a client that stalls mid-body (docs/architecture.md).

After each fault the invariants hold (``assert_invariants``), ``cloudimg gc --grace 0``
clears what a crash left, and the server goes on serving. These faults are about the
SQLite catalog on the data root, so the module runs on SQLite only.
"""

from __future__ import annotations

import contextlib
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, upload
from tests.crash_support import FREE_AT_ONCE
from tests.invariants import assert_invariants, read_catalog, wait_for_no_staging
from tests.maintenance_support import cli, cli_json
from tests.support import (
    MULTIPART,
    assert_error,
    blake3_hex,
    blob_path,
    multipart_head,
    multipart_tail,
    random_image,
    wait_until,
)
from tests.volumes import fill, tmpfs

GC = [sys.executable, "-m", "cloudimg", "gc", "--grace", "0"]


@pytest.fixture(scope="module")
def backend() -> str:
    """Locks, tmpfs and the catalog file are SQLite's: one backend here."""
    return "sqlite"


def chunked_upload(http: httpx.Client, path: str, size: int) -> httpx.Response:
    """POST an image of ``size`` random bytes without a Content-Length (chunked)."""

    def body() -> Iterator[bytes]:
        yield multipart_head()
        left = size
        while left:
            piece = min(left, 1024 * 1024)
            yield random_image(piece)
            left -= piece
        yield multipart_tail()

    return http.post(
        path,
        content=body(),
        headers={"content-type": MULTIPART},
    )


def raw_exchange(server: RunningServer, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` and ``body`` on a new connection; everything the server answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def post_head(server: RunningServer, path: str, content_length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: {MULTIPART}\r\n"
        f"Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    ).encode()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# -- kill -9 during deletes and during gc ---------------------------------------------


def delete_until_killed(
    running: RunningServer, paths: list[str], kill_after: int
) -> tuple[dict[str, int], list[str]]:
    """DELETE ``paths`` one after the other and kill -9 the server after ``kill_after``
    answers; returns the answers and the path whose delete was in flight at the kill."""
    answered: dict[str, int] = {}
    in_flight: list[str] = []

    def churn() -> None:
        with running.client() as http:
            for path in paths:
                in_flight[:] = [path]
                try:
                    answered[path] = http.delete(path).status_code
                except httpx.TransportError:
                    return

    worker = threading.Thread(target=churn)
    worker.start()
    deadline = time.monotonic() + 30
    while len(answered) < kill_after and time.monotonic() < deadline:
        time.sleep(0.001)
    running.kill()
    worker.join()
    return answered, in_flight


@pytest.mark.slow
def test_kill_9_during_deletes_then_gc_restores_the_invariants(
    server_factory: Callable[..., RunningServer],
) -> None:
    """kill -9 while deletes stream in: answered ones hold, gc clears the debris.

    Three rounds, each killed at another moment: a delete in flight may be committed or
    not, but never half done, and what a crash leaves in trash or staging is gc's.
    """
    running = server_factory(*FREE_AT_ONCE)
    rng = random.Random(4)
    data_root = running.data_root
    expected: dict[str, bytes] = {}
    for round_no in range(3):
        with running.client() as http:
            for i in range(24):
                data = random_image(rng.randint(1, 60_000))
                path = f"/reg/crash/img/r{round_no}-t{i}"
                assert upload(http, path, data).status_code == 201
                expected[path] = data
        paths = [p for p in expected if p.startswith(f"/reg/crash/img/r{round_no}")]
        answered, in_flight = delete_until_killed(running, paths, kill_after=4 + 6 * round_no)
        assert len(answered) >= 4 + 6 * round_no, "the deletes never got going"

        cli_json("gc", "--data-root", str(data_root), "--grace", "0", check=0)
        running = server_factory(*FREE_AT_ONCE, data_root=data_root)
        with running.client() as http:
            for path, status in answered.items():
                assert status == 200
                assert http.get(path).status_code == 404, path
                expected.pop(path)
            for path, data in list(expected.items()):
                response = http.get(path)
                if path in in_flight and response.status_code == 404:
                    expected.pop(path)  # the delete in flight had committed
                    continue
                assert response.content == data, path
        assert_invariants(running)


@pytest.mark.slow
def test_kill_9_of_gc_mid_run_and_of_the_server_then_gc_clears_everything(
    server_factory: Callable[..., RunningServer],
) -> None:
    """A gc killed between two reclaimed blobs, then the server killed: a new gc finishes."""
    running = server_factory(*FREE_AT_ONCE)
    with running.client() as http:
        kept = random_image(100_000)
        assert upload(http, "/reg/keep/img/v1", kept).status_code == 201
    orphans = []
    for _ in range(400):  # blob files no catalog row names: gc reclaims them one by one
        data = random_image(64)
        digest = blake3_hex(data)
        path = blob_path(running.data_root, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        orphans.append(path)

    gc = subprocess.Popen(
        [*GC, "--data-root", str(running.data_root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and gc.poll() is None:
            if sum(not p.exists() for p in orphans) >= 20:
                break
            time.sleep(0.002)
        gc.kill()  # kill -9 with some orphans reclaimed and others not
    finally:
        gc.wait()
    left = sum(p.exists() for p in orphans)
    if gc.returncode == 0 or left == 0:
        pytest.fail("gc finished before the kill: more orphans are needed to catch it mid-run")
    assert 0 < left < len(orphans)

    with running.client() as http:  # the server is untouched by a dying gc
        assert http.get("/reg/keep/img/v1").content == kept
    running.kill()
    cli_json("gc", "--data-root", str(running.data_root), "--grace", "0", check=0)
    assert not any(p.exists() for p in orphans)
    restarted = server_factory(*FREE_AT_ONCE, data_root=running.data_root)
    with restarted.client() as http:
        assert http.get("/reg/keep/img/v1").content == kept
    assert_invariants(restarted)


# -- a full disk --------------------------------------------------------------------


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs: a data volume that fills up for real."""
    with tmpfs(tmp_path / "volume") as volume:
        yield volume


def test_full_disk_upload_is_507_leaves_nothing_and_serving_goes_on(
    server_factory: Callable[..., RunningServer], small_volume: Path
) -> None:
    running = server_factory("--sqlite-busy-timeout-secs", "2", data_root=small_volume)
    kept = random_image(200_000)
    with running.client() as http:
        assert upload(http, "/reg/full/img/kept", kept).status_code == 201
    before = read_catalog(running)
    blobs_before = running.blob_files()

    with running.client() as http:
        # Larger than the whole volume and sent without a Content-Length: refused as the
        # disk fills up, while the image streams.
        assert_error(
            chunked_upload(http, "/reg/full/img/big", 40 * 1024 * 1024), 507, "RESOURCE_EXHAUSTED"
        )
        assert wait_for_no_staging(running) == []
        assert running.blob_files() == blobs_before
        assert read_catalog(running) == before

        filler = fill(small_volume)
        # The disk is full: a small upload fails as well, a read still works.
        assert_error(
            chunked_upload(http, "/reg/full/img/small", 300_000), 507, "RESOURCE_EXHAUSTED"
        )
        assert wait_for_no_staging(running) == []
        assert http.get("/reg/full/img/kept").content == kept
        assert http.get("/reg/full").json()["data"] == ["img"]
        assert http.get("/healthz").status_code == 200
        # A delete needs room in the catalog's journal: it works or says 507/503, never 500.
        deleted = http.delete("/reg/full/img/kept")
        if deleted.status_code != 200:
            assert deleted.status_code in (503, 507), deleted.text
            assert deleted.json()["status"] in ("RESOURCE_EXHAUSTED", "UNAVAILABLE")
            assert http.get("/reg/full/img/kept").content == kept

        filler.unlink()  # space is back
        again = random_image(500_000)
        assert upload(http, "/reg/full/img/again", again).status_code == 201
        assert http.get("/reg/full/img/again").content == again
    assert running.process.poll() is None
    assert_invariants(running)


def test_content_length_over_the_free_space_is_507_before_the_body(
    server_factory: Callable[..., RunningServer], small_volume: Path
) -> None:
    running = server_factory(data_root=small_volume)
    head = post_head(running, "/reg/full/img/big", 1024 * 1024 * 1024)
    # Only the start of the body is sent: the answer must not wait for the rest.
    answer = raw_exchange(running, head, multipart_head() + random_image(1000))
    assert status_of(answer) == 507, answer[:300]
    assert b'"RESOURCE_EXHAUSTED"' in answer
    assert running.staging_files() == []
    with running.client() as http:
        assert http.get("/reg").json()["data"] == []
    assert_invariants(running)


# -- the image size limit -------------------------------------------------------------


def test_image_over_max_image_size_is_413_while_streaming(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory("--max-image-size", "1M")
    with running.client() as http:
        assert upload(http, "/reg/lim/img/fits", random_image(1024 * 1024)).status_code == 201
        body = assert_error(
            chunked_upload(http, "/reg/lim/img/over", 1024 * 1024 + 1), 413, "RESOURCE_EXHAUSTED"
        )
        assert body["context"]["limit"] == 1024 * 1024
        # A Content-Length within the allowance for the framing: refused while streaming.
        over = upload(http, "/reg/lim/img/over", random_image(1024 * 1024 + 10))
        assert_error(over, 413, "RESOURCE_EXHAUSTED")
        assert http.get("/reg/lim/img").json()["data"] == ["fits"]
    assert wait_for_no_staging(running) == []
    assert_invariants(running)


def test_content_length_over_max_image_size_is_413_before_the_body(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory(env={"CLOUDIMG_MAX_IMAGE_SIZE": "2M"})
    head = post_head(running, "/reg/lim/img/big", 10 * 1024**3)
    answer = raw_exchange(running, head, multipart_head() + random_image(1000))
    assert status_of(answer) == 413, answer[:300]
    assert b'"RESOURCE_EXHAUSTED"' in answer
    assert running.staging_files() == []
    assert_invariants(running)


def test_bad_max_image_size_is_refused_at_start(tmp_path: Path) -> None:
    done = cli("serve", "--data-root", str(tmp_path), "--max-image-size", "lots")
    assert done.returncode != 0
    assert "--max-image-size" in done.stderr


# -- a locked catalog ------------------------------------------------------------------


@contextlib.contextmanager
def locked_catalog(data_root: Path) -> Iterator[None]:
    """Hold SQLite's write lock on the catalog from another process's connection."""
    db = sqlite3.connect(data_root / "catalog.sqlite3", isolation_level=None, timeout=15)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def test_locked_catalog_gives_503_and_readyz_says_so(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory("--sqlite-busy-timeout-secs", "0.3")
    kept = random_image(50_000)
    with running.client() as http:
        assert upload(http, "/reg/lock/img/kept", kept).status_code == 201
        assert http.get("/readyz").status_code == 200
        with locked_catalog(running.data_root):
            assert_error(upload(http, "/reg/lock/img/new", b"new"), 503, "UNAVAILABLE")
            assert_error(http.delete("/reg/lock/img/kept"), 503, "UNAVAILABLE")
            ready = assert_error(http.get("/readyz"), 503, "UNAVAILABLE")
            assert "locked" in ready["context"]["catalog"]
            assert http.get("/healthz").status_code == 200
            # Reads go on: WAL readers do not wait for the writer.
            assert http.get("/reg/lock/img/kept").content == kept
        assert wait_for_no_staging(running) == []
        assert running.process.poll() is None
        assert http.get("/readyz").json()["data"]["catalog"] == "ok"
        assert upload(http, "/reg/lock/img/new", b"new").status_code == 201
        assert http.delete("/reg/lock/img/kept").status_code == 200
    assert_invariants(running)


def test_catalog_without_its_tables_gives_503_not_500(
    server_factory: Callable[..., RunningServer],
) -> None:
    """A catalog that lost its tables (a wrong restore, a dropped schema): 503 everywhere.

    The tables are renamed away from another connection and renamed back afterwards.
    """
    running = server_factory()
    catalog = running.data_root / "catalog.sqlite3"
    renames = [("tags", "tags_away"), ("blobs", "blobs_away")]

    def rename(pairs: list[tuple[str, str]]) -> None:
        with contextlib.closing(sqlite3.connect(catalog, timeout=15)) as db:
            for old, new in pairs:
                db.execute(f"ALTER TABLE {old} RENAME TO {new}")
            db.commit()

    with running.client() as http:
        assert upload(http, "/reg/gone/img/v1", b"abc").status_code == 201
        rename(renames)
        try:
            assert_error(http.get("/reg/gone/img/v1/meta"), 503, "UNAVAILABLE")
            assert_error(http.get("/reg/gone/img/v1"), 503, "UNAVAILABLE")
            assert_error(upload(http, "/reg/gone/img/v2", b"xyz"), 503, "UNAVAILABLE")
            assert_error(http.delete("/reg/gone/img/v1"), 503, "UNAVAILABLE")
            ready = assert_error(http.get("/readyz"), 503, "UNAVAILABLE")
            assert "no such table" in ready["context"]["catalog"]
            assert str(running.data_root) not in http.get("/readyz").text
            assert http.get("/healthz").status_code == 200
        finally:
            rename([(new, old) for old, new in reversed(renames)])
        assert running.process.poll() is None
        assert http.get("/reg/gone/img/v1").content == b"abc"
        assert http.get("/readyz").status_code == 200
    assert wait_for_no_staging(running) == []
    assert_invariants(running)


# -- a client that stalls mid-body ---------------------------------------------------------


def test_stalled_body_is_dropped_after_the_read_body_timeout(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory("--read-body-timeout-secs", "1")
    head = post_head(running, "/reg/slow/img/v1", 10 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(head + multipart_head() + random_image(300_000))  # ... and nothing more
        wait_until(running.staging_files, "the upload reaches its staging file", timeout=10)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert status_of(answer) == 408, answer[:300]
    assert b'"DEADLINE_EXCEEDED"' in answer
    assert wait_for_no_staging(running) == []
    with running.client() as http:
        assert http.get("/reg").json()["data"] == []
    assert_invariants(running)
