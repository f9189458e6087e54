"""Replicas with no shared volume under a crash: two ``cloudimg serve`` over one bucket
(a real SeaweedFS) and one PostgreSQL catalog, each with an empty data root of its own,
``cloudimg gc --grace 0`` looping in a third process, and one replica killed with
kill -9 in the middle of an upload, then started again.

The approach of test_maintenance_servers.py's gc loop on a shared volume (one writer
per tag at a time, so the expected state is known), with the invariants read from the
bucket through the store's interface (tests/invariants.py).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudimg.blobstore.s3 import S3BlobStore
from cloudimg.blobstore.s3.client import S3Location
from tests.conftest import RunningServer, upload
from tests.databases import catalog_database, registered_url
from tests.invariants import assert_invariants
from tests.maintenance_support import cli
from tests.object_store import SeaweedFS
from tests.support import blake3_hex, random_image, wait_until
from tests.test_maintenance_servers import _SlowBody
from tests.test_s3_registry import PREFIX, BucketRegistry, serve_bucket


@pytest.fixture
def replicas(
    tmp_path: Path, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[BucketRegistry]]:
    bucket = seaweedfs.new_bucket()
    first = tmp_path / "a" / "data"
    with catalog_database("postgresql", first):
        database = registered_url(first)
        assert database is not None
        running = [serve_bucket(first, seaweedfs, bucket)]
        try:
            running.append(
                serve_bucket(tmp_path / "b" / "data", seaweedfs, bucket, "--database-url", database)
            )
            for name, value in running[0].env.items():  # for gc, run by cli()
                monkeypatch.setenv(name, value)
            yield running
        finally:
            for replica in running:
                replica.server.stop()


def _restarted(replica: BucketRegistry) -> BucketRegistry:
    """The same replica started again (same data root and flags) after its crash."""
    old = replica.server
    again = serve_bucket(old.data_root, replica.store, replica.bucket, *_own_args(old))
    return again


def _own_args(server: RunningServer) -> list[str]:
    """The server's arguments past the blob store's (its --database-url, if any)."""
    args = server.extra_args
    if "--database-url" in args and args[0] != "--database-url":
        at = args.index("--database-url")
        return args[at : at + 2]
    return []


def _store(replica: BucketRegistry) -> S3BlobStore:
    store = replica.store
    return S3BlobStore(
        S3Location(
            bucket=replica.bucket,
            prefix=PREFIX,
            endpoint_url=store.endpoint,
            path_style=True,
            access_key=store.access_key,
            secret_key=store.secret_key,
        )
    )


def _open_uploads(replica: BucketRegistry) -> list[str]:
    listed = replica.store.client().list_multipart_uploads(Bucket=replica.bucket, Prefix=PREFIX)
    return [item["Key"] for item in listed.get("Uploads", [])]


@pytest.mark.slow
@pytest.mark.postgres
def test_replicas_on_a_bucket_survive_kill_9_mid_upload_with_gc_looping(
    replicas: list[BucketRegistry],
) -> None:
    payloads = [random_image(random.randint(1, 400_000)) for _ in range(4)]
    tags = [f"/reg/shared/img/t{i}" for i in range(6)]
    expected: dict[str, bytes] = {}
    uncertain: dict[str, bytes | None] = {}
    """Tags whose last request died with the killed replica: it may have committed (this
    value, None for a delete) or not (``expected``), until a later request says."""
    locks = {tag: threading.Lock() for tag in tags}
    stop = threading.Event()
    gc_runs: list[int] = []
    errors: list[str] = []
    root = str(replicas[0].server.data_root)
    servers = [replica.server for replica in replicas]

    def gc_loop() -> None:
        while not stop.is_set():
            done = cli("gc", "--data-root", root, "--grace", "0", "--json")
            gc_runs.append(done.returncode)
            if done.returncode != 0:
                errors.append(done.stdout + done.stderr)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20):
            server = servers[rng.randrange(2)]  # the one killed comes back on another port
            tag = rng.choice(tags)
            with locks[tag]:
                attempt: list[bytes | None] = []
                try:
                    with server.client() as http:
                        step(http, rng, tag, attempt)
                    if attempt:  # an answered change: the tag's state is known again
                        uncertain.pop(tag, None)
                except httpx.TransportError:
                    if attempt:  # killed under this request: it may have committed
                        uncertain[tag] = attempt[0]
                except AssertionError as exc:
                    errors.append(f"{tag}: {exc}")

    def step(http: httpx.Client, rng: random.Random, tag: str, attempt: list[bytes | None]) -> None:
        roll = rng.random()
        if roll < 0.55:
            data = rng.choice(payloads)
            attempt.append(data)
            response = upload(http, tag, data)
            assert response.status_code == 201, response.text
            expected[tag] = data
        elif roll < 0.75:
            source = next((t for t in tags if t in expected and t != tag), None)
            if source is None:
                return
            data = expected[source]
            attempt.append(data)
            response = http.post(f"{tag}/retag", json={"digest": f"blake3:{blake3_hex(data)}"})
            if response.status_code in (200, 201):
                expected[tag] = data
            else:  # the source tag's bytes may be gone meanwhile (deleted, gc'd)
                assert response.status_code in (404, 409), response.text
                attempt.clear()  # nothing changed
        else:
            attempt.append(None)
            response = http.delete(tag)
            if tag in uncertain:  # the killed request's outcome decides
                assert response.status_code in (200, 404), response.text
            else:
                assert response.status_code == (200 if tag in expected else 404), response.text
            expected.pop(tag, None)

    gc_thread = threading.Thread(target=gc_loop)
    gc_thread.start()
    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    body = _SlowBody(24 * 1024 * 1024)
    crashed: list[object] = []

    def send() -> None:
        try:
            with servers[0].client() as http:
                crashed.append(
                    http.post(
                        "/reg/shared/crash/v1",
                        content=iter(body),
                        headers={"content-type": f"multipart/form-data; boundary={body.boundary}"},
                    )
                )
        except httpx.HTTPError as exc:
            crashed.append(exc)

    sender = threading.Thread(target=send)
    try:
        for thread in workers:
            thread.start()
        sender.start()
        # A part of the slow upload went out: a multipart upload is open in staging.
        wait_until(lambda: _open_uploads(replicas[0]) != [], "a multipart upload is open")
        replicas[0].server.kill()
        body.release.set()
        sender.join()
        replicas[0] = _restarted(replicas[0])
        servers[0] = replicas[0].server
        for thread in workers:
            thread.join()
        while len(gc_runs) < 3 and gc_thread.is_alive():
            time.sleep(0.1)
    finally:
        stop.set()
        body.release.set()
        gc_thread.join()
        sender.join()
    assert errors == []
    assert len(gc_runs) >= 3
    assert not any(isinstance(answer, httpx.Response) for answer in crashed)

    final = cli("gc", "--data-root", root, "--grace", "0", "--json")
    assert final.returncode == 0, final.stdout + final.stderr
    for server in servers:
        with server.client() as http:
            assert http.get("/reg/shared/crash/v1").status_code == 404
            for tag in tags:
                response = http.get(tag)
                allowed = {expected.get(tag)}
                if tag in uncertain:
                    allowed.add(uncertain[tag])
                got = response.content if response.status_code == 200 else None
                assert response.status_code in (200, 404), tag
                assert got in allowed, tag
    assert _open_uploads(replicas[0]) == []
    assert_invariants(servers[0], _store(replicas[0]))
    for server in servers:  # nothing local: each data root stays empty
        assert sorted(p.name for p in server.data_root.iterdir()) == [], server.data_root
