"""Quotas (``--quota-file``): per repository, a limit on the bytes its tags and retained
history reference and on its tags; refused before the bytes are stored, checked again
in the catalog's write under the repository's lock (two replicas too), shown by
``cloudimg du`` and the storage page. Real servers, both catalog backends."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from cloudimg.core.quotas import Quota, Quotas, parse_quotas
from tests.conftest import RunningServer, serve_module, start_server, upload, upload_raw
from tests.databases import _dsn, catalog_database, catalog_url, query
from tests.maintenance_support import cli, cli_json
from tests.oci_support import (
    artifact_manifest,
    assert_oci_error,
    push_blob,
    put_manifest,
    sha256_digest,
    start_upload,
)
from tests.support import assert_error, blake3_hex, random_image, wait_until
from tests.test_client import client as run_client

LIMIT = 100_000
QUOTAS = f"""
# the narrowest first: the first rule that matches is a repository's quota
quotas:
  - repos: "small-*"
    bytes: {LIMIT}
  - repos: "tags-*"
    tags: 2
  - repos: "s*"          # never reached for small-*: the first match wins
    bytes: 1
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[RunningServer]:
    quota_file = tmp_path_factory.mktemp("quotas") / "quotas.yaml"
    quota_file.write_text(QUOTAS)
    yield from serve_module(tmp_path_factory, backend, "--quota-file", str(quota_file))


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def small() -> str:
    return "small-" + secrets.token_hex(5)


def tags_of(http: httpx.Client, repo: str, image: str = "img") -> list[str]:
    response = http.get(f"/reg/{repo}/{image}")
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    return sorted(response.json()["data"])


def used_bytes(server: RunningServer, repo: str) -> int:
    """What the catalog says ``repo`` uses, by the quota's definition, in plain SQL."""
    rows = query(
        server.database_url,
        "SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN ("
        " SELECT t.digest FROM tags t JOIN images i ON i.id = t.image_id"
        " JOIN repositories r ON r.id = i.repository_id WHERE r.name = ?"
        " UNION SELECT h.digest FROM tag_history h WHERE h.repository = ? AND h.retained)",
        repo,
        repo,
    )
    return int(rows[0][0])


def quota_error(response: httpx.Response, repo: str, used: int, adds: int) -> None:
    body = assert_error(response, 403, "RESOURCE_EXHAUSTED")
    assert body["context"] == {
        "repo": repo,
        "quota": "small-*",
        "quota_bytes": LIMIT,
        "used_bytes": used,
        "upload_bytes": adds,
    }
    assert "quota" in body["error"]
    assert repo in body["error"]


def nothing_stored(server: RunningServer, before: list[Path]) -> None:
    assert server.staging_files() == []
    assert server.blob_files() == before


def retag(http: httpx.Client, path: str, digest: str) -> httpx.Response:
    return http.post(f"{path}/retag", json={"digest": digest})


# -- the file ---------------------------------------------------------------------------


def test_the_first_matching_rule_is_the_quota() -> None:
    quotas = parse_quotas(QUOTAS)
    assert quotas.of("small-x") == Quota("small-*", bytes=LIMIT)
    assert quotas.of("tags-x") == Quota("tags-*", tags=2)
    assert quotas.of("sx") == Quota("s*", bytes=1)
    assert quotas.of("other") is None
    units = parse_quotas("quotas: [{repos: '*', bytes: 50GiB, tags: 200}]")
    assert units == Quotas((Quota("*", 50 * 1024**3, 200),))
    assert parse_quotas("quotas: []") == Quotas()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("quotas: [", "not YAML or JSON"),
        ("quota: []", "the one key 'quotas'"),
        ("quotas: {repos: a}", "not a list of rules"),
        ("quotas: [{bytes: 1}]", "a rule is a mapping"),
        ("quotas: [{repos: a, bytes: 1, size: 2}]", "a rule is a mapping"),
        ("quotas: [{repos: a}]", "needs 'bytes', 'tags' or both"),
        ("quotas: [{repos: a/b, bytes: 1}]", "no '/'"),
        ("quotas: [{repos: a, bytes: 5 apples}]", "quota 1: 'bytes'"),
        ("quotas: [{repos: a, bytes: -1}]", "quota 1: 'bytes'"),
        ("quotas: [{repos: a, tags: 1.5}]", "quota 1: 'tags' is not a whole number"),
        ("quotas: [{repos: a, tags: yes}]", "quota 1: 'tags' is not a number"),
    ],
)
def test_a_malformed_quota_file_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_quotas(text)


def test_a_malformed_quota_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "quotas.yaml").write_text("quotas: [{repos: 'a/b', bytes: 1}]\n")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "cloudimg", "serve", "--listener-addr", "127.0.0.1:1"),
            *("--data-root", str(tmp_path / "data")),
            *("--quota-file", str(tmp_path / "quotas.yaml")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    assert "--quota-file" in errors[0]
    assert "no '/'" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching the data root


def test_du_refuses_a_malformed_quota_file(tmp_path: Path) -> None:
    quota_file = tmp_path / "quotas.yaml"
    quota_file.write_text("quotas: [{repos: a, bytes: lots}]\n")
    done = cli("du", "--data-root", str(tmp_path / "data"), "--quota-file", str(quota_file))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, done.stderr
    assert "--quota-file" in errors[0]
    assert "quota 1: 'bytes'" in errors[0]
    assert not (tmp_path / "data").exists()


# -- uploads ------------------------------------------------------------------------------


def test_an_announced_upload_over_the_quota_is_refused_and_changes_nothing(
    server: RunningServer, client: httpx.Client
) -> None:
    repo = small()
    assert upload_raw(client, f"/reg/{repo}/img/ta", random_image(60_000)).status_code == 201
    before = server.blob_files()
    refused = upload_raw(client, f"/reg/{repo}/img/tb", random_image(60_000))
    quota_error(refused, repo, 60_000, 60_000)
    nothing_stored(server, before)
    assert tags_of(client, repo) == ["ta"]
    # A multipart body carries its framing beside the image: it is refused as its image
    # passes what is left, with the bytes received by then.
    refused = upload(client, f"/reg/{repo}/img/tb", random_image(60_000))
    assert_error(refused, 403, "RESOURCE_EXHAUSTED")
    assert refused.json()["context"]["upload_bytes"] > 40_000
    nothing_stored(server, before)
    assert tags_of(client, repo) == ["ta"]
    assert used_bytes(server, repo) == 60_000


def test_a_body_announced_over_the_quota_is_answered_before_it_is_sent(
    server: RunningServer,
) -> None:
    """Expect: 100-continue and a Content-Length past what is left: the 403 comes unread."""
    repo = small()
    head = (
        f"PUT /reg/{repo}/img/ta HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {10 * LIMIT}\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        received = b""
        while b"RESOURCE_EXHAUSTED" not in received:  # the head and the body may come apart
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    answer = received.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 403"), answer
    assert "RESOURCE_EXHAUSTED" in answer
    assert server.staging_files() == []


def test_a_chunked_upload_is_stopped_once_it_passes_the_quota(
    server: RunningServer, client: httpx.Client
) -> None:
    repo = small()
    assert upload_raw(client, f"/reg/{repo}/img/ta", random_image(50_000)).status_code == 201
    before = server.blob_files()
    image = random_image(80_000)

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for start in range(0, len(image), 10_000):
            yield image[start : start + 10_000]

    raw = {"content-type": "application/octet-stream"}
    refused = client.put(f"/reg/{repo}/img/tb", content=chunks(), headers=raw)
    # Stopped at the piece that passed what is left (pieces arrive as the server reads
    # them, not as the client cut them).
    adds = refused.json()["context"]["upload_bytes"]
    assert 50_000 < adds <= len(image)
    quota_error(refused, repo, 50_000, adds)
    nothing_stored(server, before)
    assert tags_of(client, repo) == ["ta"]


def test_exactly_at_the_limit_passes(server: RunningServer, client: httpx.Client) -> None:
    repo = small()
    held = random_image(60_000)
    assert upload_raw(client, f"/reg/{repo}/img/ta", random_image(40_000)).status_code == 201
    assert upload(client, f"/reg/{repo}/img/tb", held).status_code == 201  # multipart
    assert used_bytes(server, repo) == LIMIT
    quota_error(upload_raw(client, f"/reg/{repo}/img/tc", random_image(1)), repo, LIMIT, 1)
    # Bytes the repository holds already would add nothing, but the check before the
    # body cannot know them: sent again they are refused; a retag names them.
    quota_error(upload_raw(client, f"/reg/{repo}/img/tc", held), repo, LIMIT, 60_000)
    assert retag(client, f"/reg/{repo}/img/tc", f"blake3:{blake3_hex(held)}").status_code == 201
    assert used_bytes(server, repo) == LIMIT


def test_the_tag_limit(server: RunningServer, client: httpx.Client) -> None:
    repo = "tags-" + secrets.token_hex(5)
    one = random_image(1000)
    assert upload_raw(client, f"/reg/{repo}/img/ta", one).status_code == 201
    assert upload_raw(client, f"/reg/{repo}/other/tb", random_image(1001)).status_code == 201
    refused = upload_raw(client, f"/reg/{repo}/img/tc", random_image(1002))
    body = assert_error(refused, 403, "RESOURCE_EXHAUSTED")
    assert body["context"] == {"repo": repo, "quota": "tags-*", "quota_tags": 2, "used_tags": 2}
    assert server.staging_files() == []
    # Moving a tag adds none; a retag that creates one is refused as an upload is.
    assert upload_raw(client, f"/reg/{repo}/img/ta", random_image(1003)).status_code == 201
    again = retag(client, f"/reg/{repo}/img/tc", f"blake3:{blake3_hex(one)}")
    assert_error(again, 403, "RESOURCE_EXHAUSTED")
    assert tags_of(client, repo) == ["ta"]
    assert client.delete(f"/reg/{repo}/img/ta").status_code == 200
    assert retag(client, f"/reg/{repo}/img/tc", f"blake3:{blake3_hex(one)}").status_code == 201


# -- retag and history --------------------------------------------------------------------


def test_a_retag_within_the_repository_adds_nothing(
    server: RunningServer, client: httpx.Client
) -> None:
    repo = small()
    first, second = random_image(60_000), random_image(40_000)
    assert upload_raw(client, f"/reg/{repo}/img/ta", first).status_code == 201
    assert upload_raw(client, f"/reg/{repo}/img/tb", second).status_code == 201
    assert used_bytes(server, repo) == LIMIT  # full
    done = retag(client, f"/reg/{repo}/other/tc", f"blake3:{blake3_hex(first)}")
    assert done.status_code == 201, done.text
    assert used_bytes(server, repo) == LIMIT


def test_a_retag_of_bytes_from_elsewhere_counts(
    server: RunningServer, client: httpx.Client
) -> None:
    repo, elsewhere = small(), "free-" + secrets.token_hex(5)
    big, little = random_image(60_000), random_image(40_000)
    assert upload_raw(client, f"/reg/{elsewhere}/img/big", big).status_code == 201
    assert upload_raw(client, f"/reg/{elsewhere}/img/little", little).status_code == 201
    assert upload_raw(client, f"/reg/{repo}/img/ta", random_image(50_000)).status_code == 201
    refused = retag(client, f"/reg/{repo}/img/tb", sha256_digest(big))
    quota_error(refused, repo, 50_000, 60_000)
    assert retag(client, f"/reg/{repo}/img/tb", f"blake3:{blake3_hex(little)}").status_code == 201
    # A blob shared with another repository counts in each.
    assert used_bytes(server, repo) == 90_000
    assert used_bytes(server, elsewhere) == 100_000


def test_retained_history_keeps_counting(server: RunningServer, client: httpx.Client) -> None:
    repo = small()
    path = f"/reg/{repo}/img/ta"
    assert upload_raw(client, path, random_image(60_000)).status_code == 201
    # Replacing the tag keeps its old bytes downloadable (--keep-history): they count.
    assert upload_raw(client, path, random_image(30_000)).status_code == 201
    assert used_bytes(server, repo) == 90_000
    quota_error(upload_raw(client, path, random_image(20_000)), repo, 90_000, 20_000)
    # Deleting the tag keeps its history; purging the history frees its bytes.
    assert client.delete(path).status_code == 200
    assert used_bytes(server, repo) == 90_000
    assert client.delete(path, params={"purge": "history"}).status_code == 200
    assert used_bytes(server, repo) == 0
    assert upload_raw(client, path, random_image(90_000)).status_code == 201


# -- /v2 ----------------------------------------------------------------------------------


def test_a_v2_push_over_the_quota_is_refused(server: RunningServer, client: httpx.Client) -> None:
    repo = small()
    name = f"{repo}/img"
    disk = random_image(60_000)
    push_blob(client, name, disk)
    assert put_manifest(client, name, "v1", artifact_manifest(disk)).status_code == 201
    before = server.blob_files()
    # A chunk announced past what is left is refused unread; the session stays at 0.
    location = start_upload(client, name)
    chunk = random_image(60_000)
    refused = client.patch(
        location,
        content=chunk,
        headers={
            "Content-Range": f"0-{len(chunk) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )
    detail = assert_oci_error(refused, 403, "DENIED")["detail"]
    assert (detail["used_bytes"], detail["upload_bytes"]) == (60_000, 60_000)
    assert client.get(location).headers["range"] == "0-0"
    nothing_stored(server, before)


def test_two_v2_sessions_that_each_fit_cannot_both_commit(
    server: RunningServer, client: httpx.Client
) -> None:
    """Sessions stage bytes that are not the repository's yet: the manifest's commit is
    checked in the catalog's transaction with what the repository holds then."""
    repo = small()
    name = f"{repo}/img"
    one, two = random_image(60_000), random_image(60_001)
    push_blob(client, name, one)
    push_blob(client, name, two)
    assert put_manifest(client, name, "one", artifact_manifest(one)).status_code == 201
    before = server.blob_files()
    refused = put_manifest(client, name, "two", artifact_manifest(two))
    detail = assert_oci_error(refused, 403, "DENIED")["detail"]
    assert (detail["used_bytes"], detail["upload_bytes"]) == (60_000, 60_001)
    assert server.blob_files() == before
    assert tags_of(client, repo) == ["one"]
    assert used_bytes(server, repo) == 60_000


# -- du and the storage page -------------------------------------------------------------


def test_du_and_the_storage_page_show_use_against_quota(
    server: RunningServer, client: httpx.Client, tmp_path: Path
) -> None:
    repo = small()
    assert upload_raw(client, f"/reg/{repo}/img/ta", random_image(30_000)).status_code == 201
    assert upload_raw(client, f"/reg/{repo}/img/ta", random_image(20_000)).status_code == 201
    page = client.get("/ui/_storage")
    assert page.status_code == 200
    row = page.text.split(f'<tr data-repo="{repo}">')[1].split("</tr>")[0]
    assert '<data value="50000">' in row  # its tag and its retained history
    assert f'<data value="{LIMIT}">' in row
    assert "(50%)" in row
    quota_file = tmp_path / "quotas.yaml"
    quota_file.write_text(QUOTAS)
    report = cli_json("du", "--data-root", str(server.data_root), "--quota-file", str(quota_file))
    mine = next(r for r in report["repositories"] if r["repo"] == repo)
    assert mine["used_bytes"] == 50_000
    assert mine["physical_bytes"] == 20_000
    assert (mine["quota"], mine["quota_bytes"], mine["quota_tags"]) == ("small-*", LIMIT, None)


# -- reloading, and two replicas ---------------------------------------------------------


def test_the_quota_file_is_reloaded(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    quota_file = tmp_path / "quotas.yaml"
    quota_file.write_text("quotas: [{repos: 'qq*', bytes: 1000}]\n")
    running = server_factory("--quota-file", str(quota_file))
    with running.client() as http:
        assert_error(
            upload_raw(http, "/reg/qqq/img/ta", random_image(5000)), 403, "RESOURCE_EXHAUSTED"
        )
        quota_file.write_text("quotas: [{repos: 'qq*', bytes: 10000}]\n")
        wait_until(
            lambda: upload_raw(http, "/reg/qqq/img/ta", random_image(5000)).status_code == 201,
            "the larger quota applies",
        )
        # A malformed file keeps the last good quotas (and says so in the log).
        quota_file.write_text("quotas: [{repos: 'qq*'}]\n")

        def judged() -> bool:  # the file is looked at when a request needs the quotas
            refused = upload_raw(http, "/reg/qqq/img/tb", random_image(6000))
            assert_error(refused, 403, "RESOURCE_EXHAUSTED")
            assert refused.json()["context"]["quota_bytes"] == 10000
            return "keeping the previous ones" in running.log()

        wait_until(judged, "the warning, the last good quotas still applied")


@pytest.mark.slow
def test_two_replicas_uploading_at_once_never_pass_the_quota(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Both replicas pass every upload's check before its bytes (the repository is empty
    then); the commit's check, under the repository's row lock (PostgreSQL) or the
    database's write lock (SQLite), lets exactly as many in as fit."""
    size, fits = 50_000, 3
    quota_file = tmp_path / "quotas.yaml"
    quota_file.write_text(f"quotas: [{{repos: 'race', bytes: {fits * size + size // 2}}}]\n")
    root = tmp_path / "shared"
    args = ("--quota-file", str(quota_file))
    first = server_factory(*args, data_root=root)
    second = server_factory(*args, data_root=root)
    images = [random_image(size) for _ in range(12)]

    def put(n: int) -> int:
        base = (first, second)[n % 2].base_url
        with httpx.Client(base_url=base, timeout=120) as http:
            return upload_raw(http, f"/reg/race/img{n % 3}/t{n}", images[n]).status_code

    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        statuses = list(pool.map(put, range(len(images))))
    assert sorted(statuses) == [201] * fits + [403] * (len(images) - fits)
    assert used_bytes(first, "race") == fits * size
    assert first.staging_files() == []
    stored = query(catalog_url(root), "SELECT COUNT(*) FROM tags")
    assert int(stored[0][0]) == fits


@contextlib.contextmanager
def repository_row_held(url: str, repo: str, waiters: int) -> Iterator[None]:
    """Hold ``repo``'s row ``FOR UPDATE`` (as a commit under a quota takes it) until
    ``waiters`` transactions wait for it, then let them all go at once."""
    ready, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        connection = await asyncpg.connect(_dsn(url), timeout=15)
        try:
            async with connection.transaction():
                await connection.execute(
                    "SELECT id FROM repositories WHERE name = $1 FOR UPDATE", repo
                )
                ready.set()
                await asyncio.to_thread(release.wait, 120)
        finally:
            await connection.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    def waiting() -> int:
        # The first waiter waits for the holder's transaction id (a lock of no database),
        # the others for the row's tuple lock, which the first holds: one each.
        rows = query(
            url,
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND (locktype = 'transactionid'"
            " AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())"
            " OR database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        )
        return int(rows[0][0])

    holder = threading.Thread(target=run)
    holder.start()
    ready.wait(30)
    try:
        yield
        if not failure:
            wait_until(lambda: waiting() >= waiters, f"{waiters} commits wait for the row")
    finally:
        release.set()
        holder.join()
    if failure:
        raise failure[0]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_replicas_whose_commits_all_passed_the_first_check_cannot_overshoot(
    tmp_path: Path,
) -> None:
    """Every upload passes the check before its bytes (the repository holds one small
    image then) and waits at its commit for the repository's row, held by the test;
    let go at once, the commits' checks, one after another, let in only what fits."""
    size, fits, count = 50_000, 3, 10
    quota_file = tmp_path / "quotas.yaml"
    quota_file.write_text(f"quotas: [{{repos: 'race', bytes: {1000 + fits * size + 100}}}]\n")
    root = tmp_path / "shared"
    args = ("--quota-file", str(quota_file))
    images = [random_image(size) for _ in range(count)]
    with catalog_database("postgresql", root):
        replicas = [start_server(root, *args), start_server(root, *args)]
        try:
            with replicas[0].client() as http:
                assert upload_raw(http, "/reg/race/seed/t0", random_image(1000)).status_code == 201

            def put(n: int) -> int:
                with replicas[n % 2].client() as http:
                    return upload_raw(http, f"/reg/race/img/t{n}", images[n]).status_code

            url = replicas[0].database_url
            with (
                concurrent.futures.ThreadPoolExecutor(count) as pool,
                repository_row_held(url, "race", waiters=count),
            ):
                pending = [pool.submit(put, n) for n in range(count)]
            statuses = sorted(future.result() for future in pending)
            assert statuses == [201] * fits + [403] * (count - fits)
            assert used_bytes(replicas[0], "race") == 1000 + fits * size
            assert replicas[0].staging_files() == []
        finally:
            for replica in replicas:
                replica.stop()


def test_cloudimg_push_over_the_quota_fails_naming_it(
    server: RunningServer, client: httpx.Client, tmp_path: Path
) -> None:
    """The client's resumable push (a /v2 session, committed by a retag) is refused as
    its chunk comes; the one-request push (--format) as its body does."""
    repo = small()
    (tmp_path / "one.raw").write_bytes(random_image(60_000))
    (tmp_path / "two.raw").write_bytes(random_image(60_000))
    done = run_client("push", "one.raw", f"{repo}/img:v1", server=server.base_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    before = server.blob_files()
    for how in ((), ("--format", "raw")):
        refused = run_client(
            "push", "two.raw", f"{repo}/img:v2", *how, server=server.base_url, cwd=tmp_path
        )
        assert refused.returncode == 4, refused.stderr
        errors = refused.stderr.decode()
        assert "quota" in errors
        assert repo in errors
        nothing_stored(server, before)
    assert tags_of(client, repo) == ["v1"]
