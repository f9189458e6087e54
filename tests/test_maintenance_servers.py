"""Maintenance against real ``cloudimg serve`` processes sharing a data root and a catalog."""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, upload
from tests.invariants import assert_invariants
from tests.maintenance_support import age, cli, cli_json
from tests.support import blake3_hex, blob_path, random_image, wait_until


@pytest.mark.slow
def test_gc_in_a_loop_while_two_servers_take_uploads_and_deletes(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    servers = [server_factory(data_root=root), server_factory(data_root=root)]
    payloads = [random_image(random.randint(1, 400_000)) for _ in range(4)]
    tags = [f"/reg/shared/img/t{i}" for i in range(6)]
    expected: dict[str, bytes] = {}
    locks = {tag: threading.Lock() for tag in tags}
    stop = threading.Event()
    gc_runs: list[int] = []
    errors: list[str] = []

    def gc_loop() -> None:
        while not stop.is_set():
            done = cli("gc", "--data-root", str(root), "--grace", "0", "--json")
            gc_runs.append(done.returncode)
            if done.returncode != 0:
                errors.append(done.stdout + done.stderr)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with servers[seed % 2].client() as http:
            for _ in range(25):
                tag = rng.choice(tags)
                with locks[tag]:  # one writer per tag at a time: the expected state is known
                    if rng.random() < 0.7:
                        data = rng.choice(payloads)
                        response = upload(http, tag, data)
                        assert response.status_code == 201, response.text
                        expected[tag] = data
                    else:
                        response = http.delete(tag)
                        assert response.status_code == (200 if tag in expected else 404)
                        expected.pop(tag, None)

    gc_thread = threading.Thread(target=gc_loop)
    gc_thread.start()
    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        while len(gc_runs) < 3 and gc_thread.is_alive():
            time.sleep(0.1)
    finally:
        stop.set()
        gc_thread.join()
    assert errors == []
    assert len(gc_runs) >= 3

    report = cli_json("fsck", "--data-root", str(root), "--checksum", check=0)
    assert report["problems"] == []
    assert report["unreferenced"] == []
    with servers[1].client() as http:
        for tag in tags:
            response = http.get(tag)
            if tag in expected:
                assert response.content == expected[tag], tag
            else:
                assert response.status_code == 404
    assert_invariants(servers[0])


def test_corrupt_blob_is_quarantined_refused_and_healed(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(200_000)
    assert upload(client, f"/reg/{repo}/img/v1", data).status_code == 201
    digest = blake3_hex(data)
    path = blob_path(server.data_root, digest)
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00" if data[1000] else b"\x01")

    report = cli_json("fsck", "--data-root", str(server.data_root), "--checksum", check=1)
    assert [(p["kind"], p["digest"], p["quarantined"]) for p in report["problems"]] == [
        ("checksum", digest, True)
    ]
    assert report["problems"][0]["tags"] == [f"{repo}/img:v1"]
    for reference in ("v1", f"blake3:{digest}"):
        refused = client.get(f"/reg/{repo}/img/{reference}")
        assert refused.status_code == 500
        assert refused.json()["status"] == "DATA_LOSS"
        assert digest in refused.json()["error"]

    assert upload(client, f"/reg/{repo}/img/v1", data).status_code == 201
    assert client.get(f"/reg/{repo}/img/v1").content == data
    cli("fsck", "--data-root", str(server.data_root), "--checksum", check=0)


class _SlowBody:
    """A multipart body that sends its image part slowly and stops until released."""

    def __init__(self, size: int) -> None:
        self.boundary = secrets.token_hex(8)
        self.size = size
        self.release = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        b = self.boundary
        yield (
            f'--{b}\r\nContent-Disposition: form-data; name="meta"\r\n\r\n{{}}\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="img"; filename="i"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        chunk = random_image(1024 * 1024)
        for _ in range(self.size // len(chunk)):
            yield chunk
        self.release.wait(60)  # the upload hangs here, mid-image
        yield f"\r\n--{b}--\r\n".encode()


@pytest.mark.slow
def test_staging_of_a_live_upload_survives_and_kill_9_debris_goes(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory()
    body = _SlowBody(16 * 1024 * 1024)
    outcome: list[object] = []

    def send() -> None:
        try:
            with running.client() as http:
                outcome.append(
                    http.post(
                        "/reg/crash/img/v1",
                        content=iter(body),
                        headers={"content-type": f"multipart/form-data; boundary={body.boundary}"},
                    )
                )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_until(
            lambda: any(p.stat().st_size >= 8 * 1024 * 1024 for p in running.staging_files()),
            "the upload's staging file holds 8 MiB",
        )
        staged = running.staging_files()
        for path in staged:
            age(path)
        live = cli_json("gc", "--data-root", str(running.data_root), "--grace", "0", check=0)
        assert live["skipped_live_staging"] == 1
        assert live["totals"]["staging"]["count"] == 0
        assert running.staging_files() == staged

        running.kill()  # kill -9 in the middle of the image
        assert running.staging_files() == staged  # the debris a crash leaves
        dead = cli_json("gc", "--data-root", str(running.data_root), "--grace", "0", check=0)
        assert dead["totals"]["staging"]["count"] == 1
        assert running.staging_files() == []
    finally:
        body.release.set()
        sender.join()
    restarted = server_factory(data_root=running.data_root)
    with restarted.client() as http:
        assert http.get("/reg/crash/img/v1").status_code == 404
    assert_invariants(restarted)
