"""Concurrent uploads, overwrites and deletes over HTTP keep docs/architecture.md's invariants.

Each test starts its requests together (a barrier, one client per thread) against one
real server, then checks the catalog and the blob tree from outside the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx
import pytest

from tests.conftest import RunningServer, serve_module, start_server, upload
from tests.databases import catalog_database
from tests.invariants import assert_invariants, read_catalog
from tests.support import blake3_hex, blob_path, random_image

T = TypeVar("T")
N = 8
ROUNDS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[RunningServer]:
    """This module's server runs with ``--keep-history 0``: a tag's old bytes go as soon as
    no tag names them, as with the old server (retention: tests/test_http_history.py)."""
    yield from serve_module(tmp_path_factory, backend, "--keep-history", "0")


def in_parallel(server: RunningServer, calls: list[Callable[[httpx.Client], T]]) -> list[T]:
    """Run each call in its own thread with its own client, all released at once."""
    return across([(server, call) for call in calls])


def across(calls: list[tuple[RunningServer, Callable[[httpx.Client], T]]]) -> list[T]:
    """Like :func:`in_parallel`, each call through its own server (process)."""
    barrier = threading.Barrier(len(calls))

    def run(target: tuple[RunningServer, Callable[[httpx.Client], T]]) -> T:
        server, call = target
        with server.client() as http:
            http.get("/healthz")  # connect before the barrier, so requests start together
            barrier.wait(timeout=30)
            return call(http)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def uploader(
    path: str, data: bytes, meta: dict[str, str] | None = None
) -> Callable[[httpx.Client], int]:
    return lambda http: upload(http, path, data, meta).status_code


def deleter(path: str) -> Callable[[httpx.Client], int]:
    return lambda http: http.delete(path).status_code


def test_same_bytes_to_many_tags_at_once_share_one_blob(server: RunningServer, repo: str) -> None:
    data = random_image(200_000)
    before = set(server.blob_files())
    statuses = in_parallel(server, [uploader(f"/reg/{repo}/img/t{i}", data) for i in range(N)])
    assert statuses == [201] * N
    assert set(server.blob_files()) - before == {blob_path(server.data_root, blake3_hex(data))}
    assert read_catalog(server).refcount(blake3_hex(data)) == N
    assert_invariants(server)


def test_same_bytes_to_many_tags_at_once_are_all_listed(server: RunningServer, repo: str) -> None:
    data = random_image(50_000)
    statuses = in_parallel(server, [uploader(f"/reg/{repo}/img/t{i}", data) for i in range(N)])
    assert statuses == [201] * N
    with server.client() as http:
        assert http.get(f"/reg/{repo}/img").json()["data"] == sorted(f"t{i}" for i in range(N))
        for i in range(N):
            assert http.get(f"/reg/{repo}/img/t{i}").content == data


def test_many_images_of_a_new_repo_at_once(server: RunningServer, repo: str) -> None:
    """Concurrent first uploads all create the repository row: none may fail."""
    calls = [uploader(f"/reg/{repo}/img{i}/t1", random_image(10_000)) for i in range(N)]
    assert in_parallel(server, calls) == [201] * N
    with server.client() as http:
        assert http.get(f"/reg/{repo}").json()["data"] == sorted(f"img{i}" for i in range(N))
    assert_invariants(server)


def test_overwrites_of_one_tag_at_once_leave_one_winner(server: RunningServer, repo: str) -> None:
    path = f"/reg/{repo}/img/t1"
    payloads = [random_image(100_000) for _ in range(N)]
    before = set(server.blob_files())
    statuses = in_parallel(server, [uploader(path, data) for data in payloads])
    assert statuses == [201] * N
    with server.client() as http:
        served = http.get(path).content
    assert served in payloads
    assert set(server.blob_files()) - before == {blob_path(server.data_root, blake3_hex(served))}
    assert read_catalog(server).refcount(blake3_hex(served)) == 1
    assert_invariants(server)


def test_overwrites_of_one_tag_at_once_keep_winner_meta(server: RunningServer, repo: str) -> None:
    path = f"/reg/{repo}/img/t1"
    payloads = [random_image(20_000) for _ in range(N)]
    calls = [uploader(path, payloads[i], {"writer": str(i)}) for i in range(N)]
    assert in_parallel(server, calls) == [201] * N
    with server.client() as http:
        view = http.get(f"{path}/meta").json()
    winner = int(view["data"]["writer"])
    assert view["digest"] == f"blake3:{blake3_hex(payloads[winner])}"


def test_deletes_of_one_tag_at_once_succeed_once(server: RunningServer, repo: str) -> None:
    path = f"/reg/{repo}/img/t1"
    with server.client() as http:
        assert upload(http, path, random_image(30_000)).status_code == 201
    statuses = in_parallel(server, [deleter(path) for _ in range(N)])
    assert sorted(statuses) == [200] + [404] * (N - 1)
    assert_invariants(server)


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_upload_racing_delete_of_a_tag_with_same_bytes(
    server: RunningServer, repo: str, round_: int
) -> None:
    """Upload X to A while B, the only holder of X, is deleted: A must serve X after."""
    data = random_image(150_000 + round_)
    a, b = f"/reg/{repo}/img/a{round_}", f"/reg/{repo}/img/b{round_}"
    with server.client() as http:
        assert upload(http, b, data).status_code == 201
    statuses = in_parallel(server, [uploader(a, data), deleter(b)])
    assert statuses == [201, 200]
    assert_invariants(server)
    with server.client() as http:
        assert http.get(a).content == data
        assert http.get(b).status_code == 404
    assert read_catalog(server).refcount(blake3_hex(data)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_upload_racing_delete_of_the_images_last_tag(
    server: RunningServer, repo: str, round_: int
) -> None:
    """The delete drops the image and repository rows the upload is adding a tag to."""
    with server.client() as http:
        assert upload(http, f"/reg/{repo}/img/old", random_image(20_000)).status_code == 201
    data = random_image(20_000)
    calls = [uploader(f"/reg/{repo}/img/new", data), deleter(f"/reg/{repo}/img/old")]
    assert in_parallel(server, calls) == [201, 200]
    with server.client() as http:
        assert http.get(f"/reg/{repo}/img").json()["data"] == ["new"]
        assert http.get(f"/reg/{repo}/img/new").content == data
    assert_invariants(server)


def test_uploads_racing_deletes_of_same_bytes_many_at_once(
    server: RunningServer, repo: str
) -> None:
    """Half the threads delete holders of X while the other half add new ones."""
    data = random_image(60_000)
    half = N // 2
    with server.client() as http:
        for i in range(half):
            assert upload(http, f"/reg/{repo}/img/old{i}", data).status_code == 201
    calls = [deleter(f"/reg/{repo}/img/old{i}") for i in range(half)]
    calls += [uploader(f"/reg/{repo}/img/new{i}", data) for i in range(half)]
    assert in_parallel(server, calls) == [200] * half + [201] * half
    assert_invariants(server)
    assert read_catalog(server).refcount(blake3_hex(data)) == half
    with server.client() as http:
        for i in range(half):
            assert http.get(f"/reg/{repo}/img/new{i}").content == data


def test_overwrite_racing_delete_of_the_old_bytes_holder(server: RunningServer, repo: str) -> None:
    """A moves from X to Y while B (the other holder of X) is deleted: X must go."""
    x, y = random_image(40_000), random_image(40_000)
    a, b = f"/reg/{repo}/img/ta", f"/reg/{repo}/img/tb"
    with server.client() as http:
        assert upload(http, a, x).status_code == 201
        assert upload(http, b, x).status_code == 201
    assert in_parallel(server, [uploader(a, y), deleter(b)]) == [201, 200]
    assert not blob_path(server.data_root, blake3_hex(x)).exists()
    assert_invariants(server)


# -- two server processes on one data root and catalog (docs/scaling.md) ---------------


@pytest.fixture(scope="module")
def two_servers(
    tmp_path_factory: pytest.TempPathFactory, backend: str
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two ``cloudimg serve`` processes sharing one data root and catalog."""
    root = tmp_path_factory.mktemp("shared") / "data"
    with catalog_database(backend, root):
        first = start_server(root, "--keep-history", "0")
        try:
            second = start_server(first.data_root, "--keep-history", "0")
        except BaseException:
            first.stop()
            raise
        yield first, second
        second.stop()
        first.stop()


def test_same_bytes_through_two_processes_share_one_blob(
    two_servers: tuple[RunningServer, RunningServer], repo: str
) -> None:
    data = random_image(100_000)
    first = two_servers[0]
    before = set(first.blob_files())
    statuses = across(
        [(two_servers[i % 2], uploader(f"/reg/{repo}/img/t{i}", data)) for i in range(N)]
    )
    assert statuses == [201] * N
    assert set(first.blob_files()) - before == {blob_path(first.data_root, blake3_hex(data))}
    assert read_catalog(first).refcount(blake3_hex(data)) == N
    assert_invariants(first)


def test_overwrites_through_two_processes_leave_one_winner(
    two_servers: tuple[RunningServer, RunningServer], repo: str
) -> None:
    path = f"/reg/{repo}/img/t1"
    payloads = [random_image(50_000) for _ in range(N)]
    first = two_servers[0]
    before = set(first.blob_files())
    statuses = across([(two_servers[i % 2], uploader(path, payloads[i])) for i in range(N)])
    assert statuses == [201] * N
    with first.client() as http:
        served = http.get(path).content
    assert served in payloads
    assert set(first.blob_files()) - before == {blob_path(first.data_root, blake3_hex(served))}
    assert_invariants(first)


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_upload_and_delete_of_same_bytes_in_two_processes(
    two_servers: tuple[RunningServer, RunningServer], repo: str, round_: int
) -> None:
    """Process 1 uploads X to A while process 2 deletes B, the only holder of X."""
    first, second = two_servers
    data = random_image(100_000 + round_)
    a, b = f"/reg/{repo}/img/ta", f"/reg/{repo}/img/tb"
    with second.client() as http:
        assert upload(http, b, data).status_code == 201
    assert across([(first, uploader(a, data)), (second, deleter(b))]) == [201, 200]
    assert_invariants(first)
    with second.client() as http:
        assert http.get(a).content == data
