"""A full data volume, for real (a tmpfs filled to the last byte), on both catalog backends.

On a full volume the server starts, serves downloads and listings, is ready, refuses
uploads with 507, and DELETE and ``cloudimg gc`` free space; ``fsck`` and ``du`` run.
A SQLite catalog on the volume needs room to open (its ``-shm`` file) and to commit:
it keeps ``catalog.sqlite3.reserve`` for that, and uploads leave 8 MiB free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudimg.catalog.database import RESERVE_BYTES
from tests.conftest import RunningServer, upload
from tests.invariants import assert_invariants, wait_for_no_staging
from tests.maintenance_support import age, cli, cli_json
from tests.support import assert_error, blake3_hex, blob_path, random_image
from tests.test_faults import chunked_upload
from tests.volumes import fill, free_bytes, tmpfs


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs as the data root."""
    with tmpfs(tmp_path / "volume") as mounted:
        yield mounted


def reserve_of(volume: Path) -> Path:
    return volume / "catalog.sqlite3.reserve"


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def populate(running: RunningServer) -> dict[str, bytes]:
    """Three tags, two sharing their bytes; returns path -> bytes."""
    shared, alone = random_image(300_000), random_image(2_000_000)
    images = {
        "/reg/full/img/kept": shared,
        "/reg/full/img/twin": shared,
        "/reg/full/img/gone": alone,
    }
    with running.client() as http:
        for path, data in images.items():
            assert upload(http, path, data).status_code == 201, path
    return images


@pytest.mark.parametrize("filled", ["before start", "while running, before any request"])
def test_full_volume_serves_refuses_uploads_and_delete_frees_space(
    server_factory: Callable[..., RunningServer], volume: Path, backend: str, filled: str
) -> None:
    """The reported failures: serve died at start-up, /readyz said 503 on a full volume."""
    images = populate(server_factory(data_root=volume))
    if backend == "sqlite":
        assert reserve_of(volume).stat().st_size == RESERVE_BYTES
    server_factory_stop_all(volume)  # a clean stop: SQLite removes its -wal and -shm files
    if filled == "before start":
        filler = fill(volume)
        running = server_factory(data_root=volume)
    else:
        running = server_factory(data_root=volume)
        filler = fill(volume)
    assert free_bytes(volume) < RESERVE_BYTES + 1024 * 1024

    with running.client() as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["data"] == {"catalog": "ok", "data_root": "ok", "free_bytes": 0}
        assert http.get("/reg/full/img").json()["data"] == ["gone", "kept", "twin"]
        for path, data in images.items():
            assert http.get(path).content == data
            assert http.head(path).status_code == 200
        assert http.get("/reg/full/img/kept/meta").status_code == 200

        # Uploads: refused before the body (Content-Length) and while streaming (chunked).
        assert_error(
            upload(http, "/reg/full/img/new", random_image(100_000)), 507, "RESOURCE_EXHAUSTED"
        )
        assert_error(chunked_upload(http, "/reg/full/img/new", 100_000), 507, "RESOURCE_EXHAUSTED")
        assert wait_for_no_staging(running) == []
        assert http.get("/reg/full/img").json()["data"] == ["gone", "kept", "twin"]

        # DELETE with its history purged frees space; one of two tags of shared bytes
        # frees nothing but works. (A plain delete keeps the bytes in the tag's history.)
        # The server's background hashing of containerDisk layers holds a blob open while
        # it reads it, and a deleted file open somewhere frees nothing: a manifest request
        # waits for the hashing of its tag's blob to end.
        for path in images:
            tag = path.removeprefix("/reg/full/img/")
            assert http.head(f"/v2/full/img/manifests/{tag}", timeout=120).status_code == 200
        before = free_bytes(volume)
        purge = {"purge": "history"}
        assert http.delete("/reg/full/img/gone", params=purge).status_code == 200
        assert http.delete("/reg/full/img/twin", params=purge).status_code == 200
        assert free_bytes(volume) >= before + 2_000_000 - 256 * 1024  # less the WAL frames
        assert http.get("/reg/full/img/gone").status_code == 404
        assert http.get("/reg/full/img/kept").content == images["/reg/full/img/kept"]
        assert http.get("/reg/full/img").json()["data"] == ["kept"]

        filler.unlink()  # the operator makes room: uploads work, the reserve comes back
        again = random_image(500_000)
        assert upload(http, "/reg/full/img/again", again).status_code == 201
        assert http.get("/reg/full/img/again").content == again
    if backend == "sqlite":
        assert reserve_of(volume).stat().st_size == RESERVE_BYTES
    assert running.process.poll() is None
    assert_invariants(running)


_STARTED: dict[Path, list[RunningServer]] = {}


def server_factory_stop_all(volume: Path) -> None:
    """Stop (SIGTERM) every server started on ``volume`` by this module's tests."""
    for running in _STARTED.pop(volume, []):
        running.stop()


@pytest.fixture
def server_factory(
    server_factory: Callable[..., RunningServer],
) -> Callable[..., RunningServer]:
    """The shared factory, remembering servers per data root so a test can stop them."""

    def start(*args: str, data_root: Path, **kwargs: object) -> RunningServer:
        running = server_factory(*args, data_root=data_root, **kwargs)
        _STARTED.setdefault(data_root, []).append(running)
        return running

    return start


def test_gc_fsck_and_du_run_on_a_full_volume_and_gc_frees_space(
    server_factory: Callable[..., RunningServer], volume: Path, backend: str
) -> None:
    """They died with `disk I/O error`, so the tool that frees space could not run."""
    first = server_factory(data_root=volume)
    images = populate(first)
    orphan = random_image(1_500_000)  # a blob file no catalog row names: gc's to reclaim
    orphan_path = blob_path(first.data_root, blake3_hex(orphan))
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(orphan)
    age(orphan_path)
    server_factory_stop_all(volume)
    fill(volume)
    before = free_bytes(volume)

    fsck = cli_json("fsck", "--data-root", str(volume), check=0)
    assert fsck["ok"] is True
    du = cli_json("du", "--data-root", str(volume), check=0)
    assert du["repositories"][0]["tags"] == 3
    report = cli_json("gc", "--data-root", str(volume), "--grace", "0", check=0)
    assert report["totals"]["orphan-blob"] == {"count": 1, "bytes": len(orphan)}
    assert not orphan_path.exists()
    assert free_bytes(volume) >= before + len(orphan) - 64 * 1024  # less what the catalog grew

    running = server_factory(data_root=volume)
    with running.client() as http:
        for path, data in images.items():
            assert http.get(path).content == data
    assert_invariants(running)


def test_a_volume_full_again_after_the_reserve_went_is_one_line(
    server_factory: Callable[..., RunningServer], volume: Path, backend: str
) -> None:
    """The reserve is given once: filled again, gc says so in one line, no traceback."""
    if backend != "sqlite":
        pytest.skip("the reserve is the SQLite catalog's")
    populate(server_factory(data_root=volume))
    server_factory_stop_all(volume)
    fill(volume)
    cli("du", "--data-root", str(volume), check=0)  # takes the reserve
    assert not reserve_of(volume).exists()
    fill(volume, "filler-2")
    done = cli("gc", "--data-root", str(volume), "--grace", "0")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "full" in line
    assert "reserve is used up" in line
