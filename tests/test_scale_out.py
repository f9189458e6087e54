"""Several processes on one catalog: migrations at start-up, ``--workers``, races with gc.

Every test runs on SQLite and on PostgreSQL (the ``backend`` fixture), with real
``cloudimg`` processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudimg.catalog.schema import head_revision, upgrade_database
from tests.conftest import RunningServer, start_server, upload
from tests.databases import catalog_database, catalog_held, query
from tests.invariants import assert_invariants, read_catalog
from tests.maintenance_support import cli
from tests.support import blake3_hex, blob_path, random_image
from tests.test_http_races import across, deleter, uploader

PROCESSES = 4


@pytest.fixture
def fresh_catalog(tmp_path: Path, backend: str) -> Iterator[tuple[Path, str]]:
    """A data root and the URL of its empty catalog database."""
    root = tmp_path / "data"
    with catalog_database(backend, root) as url:
        yield root, url


def start_at_once(root: Path, url: str, *command: str) -> list[subprocess.Popen[str]]:
    """Start ``PROCESSES`` copies of ``cloudimg COMMAND`` without waiting in between."""
    env = {**os.environ, "CLOUDIMG_DATABASE_URL": url, "CLOUDIMG_DATA_ROOT": str(root)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "cloudimg", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(PROCESSES)
    ]


def outputs(processes: list[subprocess.Popen[str]]) -> list[str]:
    """Wait for every process; assert each exited 0; return their outputs."""
    results = [process.communicate(timeout=120)[0] for process in processes]
    for process, output in zip(processes, results, strict=True):
        assert process.returncode == 0, output
    return results


def versions(url: str) -> list[tuple[str, ...]]:
    return [tuple(row) for row in query(url, "SELECT version_num FROM alembic_version")]


def test_processes_starting_at_once_migrate_a_fresh_database_once(
    fresh_catalog: tuple[Path, str],
) -> None:
    root, url = fresh_catalog
    logs = outputs(start_at_once(root, url, "db", "upgrade"))
    assert sum(log.count("Running upgrade  -> 0001") for log in logs) == 1, logs
    assert versions(url) == [(head_revision(),)]


def test_processes_starting_at_once_upgrade_an_older_database_once(
    fresh_catalog: tuple[Path, str],
) -> None:
    root, url = fresh_catalog
    upgrade_database(url, "0001")
    assert versions(url) == [("0001",)]
    with catalog_held(url, waiters=PROCESSES):  # they queue behind it, then go at once
        processes = start_at_once(root, url, "db", "upgrade")
    logs = outputs(processes)
    assert sum(log.count("Running upgrade 0001 -> 0002") for log in logs) == 1, logs
    assert versions(url) == [(head_revision(),)]


@pytest.mark.parametrize("command", [("gc",), ("fsck",), ("du",)])
def test_maintenance_refuses_a_catalog_that_is_behind(
    fresh_catalog: tuple[Path, str], command: tuple[str, ...]
) -> None:
    """Only serve, db upgrade and import-legacy migrate: a report must not change the schema."""
    root, url = fresh_catalog
    upgrade_database(url, "0001")
    done = cli(*command, "--data-root", str(root), check=1)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cloudimg db upgrade" in done.stderr
    assert versions(url) == [("0001",)]
    cli("db", "upgrade", "--data-root", str(root), check=0)
    cli(*command, "--data-root", str(root), check=0)


def test_servers_starting_at_once_on_a_fresh_database(
    fresh_catalog: tuple[Path, str], repo: str
) -> None:
    root, url = fresh_catalog
    servers: list[RunningServer] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            servers.append(start_server(root))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert versions(url) == [(head_revision(),)]
        data = random_image(10_000)
        with servers[0].client() as http:
            assert upload(http, f"/reg/{repo}/img/v1", data).status_code == 201
        for running in servers:
            with running.client() as http:
                assert http.get(f"/reg/{repo}/img/v1").content == data
    finally:
        for running in servers:
            running.stop()


def test_a_schema_newer_than_the_code_is_refused(fresh_catalog: tuple[Path, str]) -> None:
    root, url = fresh_catalog
    upgrade_database(url)
    query(url, "UPDATE alembic_version SET version_num = '9999'")
    for command in (["db", "upgrade"], ["serve", "--listener-addr", "127.0.0.1:0"]):
        done = subprocess.run(
            [sys.executable, "-m", "cloudimg", *command, "--data-root", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "CLOUDIMG_DATABASE_URL": url},
        )
        assert done.returncode != 0, done.stdout
        assert "revision 9999" in done.stderr
        assert "newer cloudimg" in done.stderr
        assert "Traceback" not in done.stderr
    assert versions(url) == [("9999",)]


# -- serve --workers N -----------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """The pids of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("how", ["flag", "env"])
def test_two_workers_serve_uploads_and_downloads_on_one_port(
    server_factory: Callable[..., RunningServer], repo: str, how: str
) -> None:
    if how == "flag":
        running = server_factory("--workers", "2")
    else:
        running = server_factory(env={"CLOUDIMG_WORKERS": "2"})
    workers = children_of(running.process.pid)
    assert len(workers) == 2, running.log()
    payloads = {f"/reg/{repo}/img/t{i}": random_image(300_000 + i) for i in range(6)}
    calls = [(running, uploader(path, data)) for path, data in payloads.items()]
    assert across(calls) == [201] * len(payloads)
    with running.client() as http:
        for path, data in payloads.items():
            response = http.get(path)
            assert response.status_code == 200
            assert response.content == data
            ranged = http.get(path, headers={"Range": "bytes=10-19"})
            assert (ranged.status_code, ranged.content) == (206, data[10:20])
    assert sorted(children_of(running.process.pid)) == sorted(workers)
    assert_invariants(running)


# -- two servers and gc in a third process ------------------------------------------------


@pytest.mark.slow
def test_races_through_two_servers_while_gc_runs_in_a_third_process(
    server_factory: Callable[..., RunningServer], tmp_path: Path, repo: str
) -> None:
    root = tmp_path / "shared"
    first, second = server_factory(data_root=root), server_factory(data_root=root)
    stop = threading.Event()
    running = threading.Lock()  # held during each gc run; the checks take it between runs
    gc_failures: list[str] = []
    gc_runs: list[int] = []

    def gc_loop() -> None:
        while not stop.is_set():
            with running:
                done = cli("gc", "--data-root", str(root), "--grace", "0", "--json")
            gc_runs.append(done.returncode)
            if done.returncode != 0:
                gc_failures.append(done.stdout + done.stderr)

    def check() -> None:
        with running:
            assert_invariants(first)

    gc_thread = threading.Thread(target=gc_loop)
    gc_thread.start()
    try:
        for round_ in range(2):
            same = random_image(80_000 + round_)
            calls = [
                (first if i % 2 else second, uploader(f"/reg/{repo}/img/s{i}", same))
                for i in range(4)
            ]
            assert across(calls) == [201] * 4
            check()
            assert read_catalog(first).refcount(blake3_hex(same)) == 4

            path = f"/reg/{repo}/img/over"
            payloads = [random_image(40_000) for _ in range(4)]
            calls = [(first if i % 2 else second, uploader(path, payloads[i])) for i in range(4)]
            assert across(calls) == [201] * 4
            check()
            with second.client() as http:
                assert http.get(path).content in payloads

            data = random_image(60_000)
            a, b = f"/reg/{repo}/img/a{round_}", f"/reg/{repo}/img/b{round_}"
            with second.client() as http:
                assert upload(http, b, data).status_code == 201
            assert across([(first, uploader(a, data)), (second, deleter(b))]) == [201, 200]
            check()
            assert blob_path(first.data_root, blake3_hex(data)).exists()

            fresh = f"r{round_}-{repo}"
            with first.client() as http:
                assert upload(http, f"/reg/{fresh}/img/old", random_image(1000)).status_code == 201
            new = random_image(2000)
            calls = [
                (second, uploader(f"/reg/{fresh}/img/new", new)),
                (first, deleter(f"/reg/{fresh}/img/old")),
            ]
            assert across(calls) == [201, 200]
            check()
            with second.client() as http:
                assert http.get(f"/reg/{fresh}/img").json()["data"] == ["new"]
                assert http.get(f"/reg/{fresh}/img/new").content == new
        while not gc_runs and gc_thread.is_alive():
            stop.wait(0.1)
    finally:
        stop.set()
        gc_thread.join()
    assert gc_failures == []
    assert gc_runs
    assert_invariants(first)
