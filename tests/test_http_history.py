"""Tag history, retention, retag (rollback), immutable tags and conditional writes over
HTTP, against real servers on both catalog backends."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, upload
from tests.invariants import assert_invariants, read_catalog
from tests.maintenance_support import cli, cli_json
from tests.support import assert_error, blake3_hex, random_image, sha256_hex

N = 8


def history(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    response = http.get(f"{path}/history")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    entries: list[dict[str, Any]] = body["data"]
    return entries


def retag(http: httpx.Client, path: str, body: Any, **headers: str) -> httpx.Response:
    return http.post(f"{path}/retag", json=body, headers=headers)


def test_every_change_is_listed_newest_first(client: httpx.Client, repo: str) -> None:
    path = f"/reg/{repo}/img/v1"
    one, two = random_image(1000), random_image(2000)
    assert upload(client, path, one, {"os": "a"}).status_code == 201
    assert upload(client, path, two, {"os": "b"}).status_code == 201
    assert retag(client, path, {"digest": f"blake3:{blake3_hex(one)}"}).status_code == 201
    assert client.put(f"{path}/immutable").json()["data"] == {"immutable": True, "changed": True}
    assert client.delete(f"{path}/immutable").json()["data"]["changed"] is True
    assert client.delete(path).status_code == 200
    entries = history(client, path)
    assert [(e["action"], e["digest"], e["size"]) for e in entries] == [
        ("deleted", f"blake3:{blake3_hex(one)}", 1000),
        ("released", f"blake3:{blake3_hex(one)}", 1000),
        ("immutable", f"blake3:{blake3_hex(one)}", 1000),
        ("retagged", f"blake3:{blake3_hex(one)}", 1000),
        ("moved", f"blake3:{blake3_hex(two)}", 2000),
        ("created", f"blake3:{blake3_hex(one)}", 1000),
    ]
    assert entries[3]["meta"] == {"os": "a"}
    assert all(e["actor"] is None for e in entries)  # writes are open: nobody to name
    assert all(e["at"].endswith("+00:00") for e in entries)
    assert [e["retained"] for e in entries][3:] == [True, True, False]


def test_a_pinned_digest_downloads_after_the_tag_moved_twice(
    client: httpx.Client, repo: str, server: RunningServer
) -> None:
    """The reproducibility recipe of docs/cdi.md, in plain HTTP."""
    path = f"/reg/{repo}/img/latest"
    first = random_image(300_000)
    assert upload(client, path, first).status_code == 201
    pinned = f"/reg/{repo}/img/sha256:{sha256_hex(first)}"
    for _ in range(2):
        assert upload(client, path, random_image(1000)).status_code == 201
    head = client.head(pinned)
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(first)
    got = client.get(pinned)
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == sha256_hex(first)
    assert client.get(f"/reg/{repo}/other/sha256:{sha256_hex(first)}").status_code == 404
    assert_invariants(server)


def test_a_deleted_tag_keeps_history_and_bytes_until_purged(
    client: httpx.Client, repo: str, server: RunningServer
) -> None:
    path = f"/reg/{repo}/img/v1"
    data = random_image(5000)
    assert upload(client, path, data).status_code == 201
    assert client.delete(path).status_code == 200
    for gone in (f"/reg/{repo}", f"/reg/{repo}/img", path, f"{path}/meta"):
        assert_error(client.get(gone), 404, "NOT_FOUND")
    assert repo not in client.get("/reg/").json()["data"]
    pinned = f"/reg/{repo}/img/blake3:{blake3_hex(data)}"
    assert client.get(pinned).content == data
    assert [e["action"] for e in history(client, path)] == ["deleted", "created"]
    assert_error(client.delete(path, params={"purge": "everything"}), 400, "INVALID_ARGUMENT")
    assert_error(client.delete(path), 404, "NOT_FOUND")  # the tag is gone, its history not
    # Purged with a tag being deleted, and on its own once the tag is gone.
    other = f"/reg/{repo}/img/v2"
    assert upload(client, other, random_image(10)).status_code == 201
    assert client.delete(other, params={"purge": "history"}).status_code == 200
    assert_error(client.get(f"{other}/history"), 404, "NOT_FOUND")
    assert client.delete(path, params={"purge": "history"}).status_code == 200
    assert_error(client.get(pinned), 404, "NOT_FOUND")
    assert_error(client.get(f"{path}/history"), 404, "NOT_FOUND")
    assert_error(client.delete(path, params={"purge": "history"}), 404, "NOT_FOUND")
    assert read_catalog(server).refcount(blake3_hex(data)) is None
    assert_invariants(server)


def test_rollback_is_a_retag_to_a_digest_from_the_history(
    client: httpx.Client, repo: str, server: RunningServer
) -> None:
    path = f"/reg/{repo}/img/v1"
    good, bad = random_image(4000), random_image(4000)
    assert upload(client, path, good, {"build": "1"}).status_code == 201
    assert upload(client, path, bad, {"build": "2"}).status_code == 201
    previous = history(client, path)[1]["digest"]
    response = retag(client, path, {"digest": previous})
    assert response.status_code == 201, response.text
    assert response.json() == {"success": True, "data": None}
    assert response.headers["location"] == f"/reg/{repo}/img/{previous}"
    assert response.headers["etag"] == f'"{previous}"'
    assert client.get(path).content == good
    assert client.get(f"{path}/meta").json()["data"] == {"build": "1"}
    # Into another image by sha256, with metadata of its own.
    other = f"/reg/{repo}/copy/v1"
    response = retag(client, other, {"digest": f"sha256:{sha256_hex(bad)}", "meta": {"k": "v"}})
    assert response.status_code == 201, response.text
    assert client.get(other).content == bad
    assert client.get(f"{other}/meta").json()["data"] == {"k": "v"}
    assert_invariants(server)


def test_bad_retag_requests_are_refused_and_change_nothing(
    client: httpx.Client, repo: str, server: RunningServer
) -> None:
    path = f"/reg/{repo}/img/v1"
    data = random_image(100)
    assert upload(client, path, data).status_code == 201
    digest = f"blake3:{blake3_hex(data)}"
    for body in (
        {"digest": "md5:abc"},
        {"digest": digest, "meta": {"k": 1}},
        {"digest": digest, "extra": True},
        ["not", "an", "object"],
        {"meta": {}},
    ):
        assert_error(retag(client, path, body), 400, "INVALID_ARGUMENT")
    raw = client.post(f"{path}/retag", content=b"{not json")
    assert_error(raw, 400, "INVALID_ARGUMENT")
    unknown = retag(client, path, {"digest": "blake3:" + "0" * 64})
    assert_error(unknown, 404, "NOT_FOUND")
    assert len(history(client, path)) == 1
    assert_invariants(server)


def test_an_immutable_tag_refuses_overwrite_retag_and_delete(
    client: httpx.Client, repo: str, server: RunningServer
) -> None:
    path = f"/reg/{repo}/img/v1"
    data, other = random_image(100), random_image(200)
    assert upload(client, path, data).status_code == 201
    assert upload(client, f"/reg/{repo}/img/v2", other).status_code == 201
    assert client.put(f"{path}/immutable").status_code == 200
    assert client.put(f"{path}/immutable").json()["data"]["changed"] is False
    assert_error(upload(client, path, other), 409, "TAG_IMMUTABLE")
    assert_error(
        retag(client, path, {"digest": f"blake3:{blake3_hex(other)}"}), 409, "TAG_IMMUTABLE"
    )
    assert_error(client.delete(path), 409, "TAG_IMMUTABLE")
    assert client.get(path).content == data
    assert client.delete(f"{path}/immutable").status_code == 200
    assert client.delete(path).status_code == 200
    assert_error(client.put(f"/reg/{repo}/img/nope/immutable"), 404, "NOT_FOUND")
    assert_invariants(server)


def test_rules_make_existing_tags_immutable(
    server_factory: Callable[..., RunningServer], repo: str
) -> None:
    server = server_factory("--immutable-tags", f"{repo}/*/v*, other/*/stable")
    with server.client() as http:
        path = f"/reg/{repo}/img/v1"
        assert upload(http, path, b"one").status_code == 201
        refused = assert_error(upload(http, path, b"two"), 409, "TAG_IMMUTABLE")
        assert refused["context"]["rule"] == f"{repo}/*/v*"
        assert_error(http.delete(path), 409, "TAG_IMMUTABLE")
        assert_error(http.delete(f"{path}/immutable"), 409, "TAG_IMMUTABLE")
        assert upload(http, f"/reg/{repo}/img/latest", b"two").status_code == 201
        assert upload(http, f"/reg/{repo}/img/latest", b"three").status_code == 201
        assert http.get(path).content == b"one"


def test_conditional_writes(client: httpx.Client, repo: str, server: RunningServer) -> None:
    path = f"/reg/{repo}/img/v1"
    data = random_image(100)
    create_only = {"If-None-Match": "*"}
    files = {"meta": ("m", b"{}"), "img": ("i", data)}
    assert client.post(path, files=files, headers=create_only).status_code == 201
    assert_error(client.post(path, files=files, headers=create_only), 412, "FAILED_PRECONDITION")
    bytes_etag = client.head(path).headers["etag"]
    meta = client.get(f"{path}/meta")
    meta_etag = meta.headers["etag"]
    assert meta_etag != bytes_etag
    # A metadata-only change: the bytes' ETag still matches, the /meta ETag does not.
    files_b = {"meta": ("m", b'{"k":"b"}'), "img": ("i", data)}
    assert client.post(path, files=files_b, headers={"If-Match": meta_etag}).status_code == 201
    stale = client.post(path, files=files, headers={"If-Match": meta_etag})
    body = assert_error(stale, 412, "FAILED_PRECONDITION")
    assert body["context"]["etag"] == bytes_etag
    assert client.post(path, files=files, headers={"If-Match": bytes_etag}).status_code == 201
    assert_error(
        client.post(path, files=files, headers={"If-None-Match": '"x"'}), 400, "INVALID_ARGUMENT"
    )
    assert_error(
        client.delete(path, headers={"If-Match": '"blake3:00"'}), 412, "FAILED_PRECONDITION"
    )
    assert client.get(path).content == data
    assert_error(
        client.post(f"/reg/{repo}/img/new", files=files, headers={"If-Match": "*"}),
        412,
        "FAILED_PRECONDITION",
    )
    assert client.delete(path, headers={"If-Match": bytes_etag}).status_code == 200
    assert_invariants(server)


def _together(calls: list[tuple[RunningServer, Callable[[httpx.Client], int]]]) -> list[int]:
    barrier = threading.Barrier(len(calls))

    def run(target: tuple[RunningServer, Callable[[httpx.Client], int]]) -> int:
        server, call = target
        with server.client() as http:
            http.get("/healthz")  # connect first, so the requests start together
            barrier.wait(timeout=30)
            return call(http)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _conditional_upload(
    path: str, data: bytes, headers: dict[str, str]
) -> Callable[[httpx.Client], int]:
    files = {"meta": ("m", b"{}"), "img": ("i", data)}
    return lambda http: http.post(path, files=files, headers=headers).status_code


def test_racing_conditional_writers_in_two_servers_have_one_winner(
    server_factory: Callable[..., RunningServer], tmp_path: Path, repo: str
) -> None:
    first = server_factory(data_root=tmp_path / "shared")
    second = server_factory(data_root=tmp_path / "shared")
    servers = (first, second)
    path = f"/reg/{repo}/img/v1"
    payloads = [random_image(20_000) for _ in range(N)]
    create = [
        (servers[i % 2], _conditional_upload(path, payloads[i], {"If-None-Match": "*"}))
        for i in range(N)
    ]
    statuses = _together(create)
    assert sorted(statuses) == [201] + [412] * (N - 1)
    with first.client() as http:
        winner = http.get(path).content
        assert winner == payloads[statuses.index(201)]
        etag = http.head(path).headers["etag"]
    moves = [
        (servers[i % 2], _conditional_upload(path, random_image(20_000), {"If-Match": etag}))
        for i in range(N)
    ]
    assert sorted(_together(moves)) == [201] + [412] * (N - 1)
    with first.client() as http:
        entries = history(http, path)
    assert [e["action"] for e in entries] == ["moved", "created"]
    assert_invariants(first)


def test_the_token_name_is_recorded_and_never_the_token(
    server_factory: Callable[..., RunningServer], tmp_path: Path, repo: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ci-pipeline s3cret-named\ns3cret-bare\n")
    server = server_factory("--write-token-file", str(tokens))
    path = f"/reg/{repo}/img/v1"
    with server.client() as http:
        named = {"Authorization": "Bearer s3cret-named"}
        bare = {"Authorization": "Bearer s3cret-bare"}
        files = {"meta": ("m", b"{}"), "img": ("i", b"one")}
        assert http.post(path, files=files, headers=named).status_code == 201
        assert http.put(f"{path}/immutable", headers=bare).status_code == 200
        response = http.get(f"{path}/history")
    assert "s3cret" not in response.text
    actors = [(e["action"], e["actor"]) for e in response.json()["data"]]
    assert actors == [("immutable", None), ("created", "ci-pipeline")]


def test_keep_history_comes_from_its_variable(
    server_factory: Callable[..., RunningServer], repo: str
) -> None:
    server = server_factory(env={"CLOUDIMG_KEEP_HISTORY": "1"})
    path = f"/reg/{repo}/img/v1"
    versions = [random_image(1000) for _ in range(3)]
    with server.client() as http:
        for data in versions:
            assert upload(http, path, data).status_code == 201
        pinned = [http.get(f"/reg/{repo}/img/blake3:{blake3_hex(d)}").status_code for d in versions]
    assert pinned == [404, 200, 200]
    assert_invariants(server)


@pytest.mark.slow
def test_history_retag_immutability_and_conditions_with_gc_looping(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Two servers take uploads, conditional uploads, rollbacks, immutability and deletes
    (with and without purge) while gc loops in a third process; then fsck is clean, the
    invariants hold, and every retained digest downloads its bytes."""
    root = tmp_path / "shared"
    servers = [server_factory(data_root=root), server_factory(data_root=root)]
    payloads = [random_image(random.randint(1, 200_000)) for _ in range(6)]
    tags = [f"/reg/shared/img/t{i}" for i in range(4)]
    expected: dict[str, bytes] = {}
    locks = {tag: threading.Lock() for tag in tags}
    stop = threading.Event()
    gc_errors: list[str] = []
    gc_runs: list[int] = []

    def gc_loop() -> None:
        while not stop.is_set():
            done = cli("gc", "--data-root", str(root), "--grace", "0", "--json")
            gc_runs.append(done.returncode)
            if done.returncode != 0:
                gc_errors.append(done.stdout + done.stderr)

    def step(http: httpx.Client, rng: random.Random, tag: str) -> None:
        choice = rng.random()
        if choice < 0.35 or tag not in expected:
            data = rng.choice(payloads)
            headers = {"If-None-Match": "*"} if tag not in expected else {}
            if tag in expected and rng.random() < 0.5:
                headers = {"If-Match": http.head(tag).headers["etag"]}
            files = {"meta": ("m", b"{}"), "img": ("i", data)}
            response = http.post(tag, files=files, headers=headers)
            if response.status_code == 409:  # immutable
                return
            assert response.status_code == 201, response.text
            expected[tag] = data
        elif choice < 0.55:
            held = [e for e in history(http, tag) if e["retained"]]
            if held:
                response = retag(http, tag, {"digest": held[0]["digest"]})
                if response.status_code != 409:
                    assert response.status_code == 201, response.text
                    expected[tag] = http.get(tag).content
        elif choice < 0.75:
            verb = http.put if rng.random() < 0.5 else http.delete
            assert verb(f"{tag}/immutable").status_code == 200
        else:
            params = {"purge": "history"} if rng.random() < 0.3 else {}
            response = http.delete(tag, params=params)
            if response.status_code != 409:
                assert response.status_code == 200, response.text
                expected.pop(tag)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with servers[seed % 2].client() as http:
            for _ in range(20):
                tag = rng.choice(tags)
                with locks[tag]:  # one writer per tag at a time: the expected state is known
                    step(http, rng, tag)

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
    assert gc_errors == []
    report = cli_json("fsck", "--data-root", str(root), "--checksum", check=0)
    assert report["problems"] == []
    assert report["unreferenced"] == []
    by_digest = {f"blake3:{blake3_hex(data)}": data for data in payloads}
    with servers[1].client() as http:
        for tag in tags:
            response = http.get(tag)
            if tag in expected:
                assert response.content == expected[tag], tag
            else:
                assert response.status_code == 404
            entries = http.get(f"{tag}/history").json().get("data") or []
            for entry in entries:
                if entry["retained"]:
                    pinned = http.get(f"/reg/shared/img/{entry['digest']}")
                    assert pinned.content == by_digest[entry["digest"]]
    assert_invariants(servers[0])


def test_listings_with_details_are_paged(client: httpx.Client, repo: str) -> None:
    sizes = {"ta": 10, "tb": 20, "tc": 30}
    for tag, size in sizes.items():
        assert upload(client, f"/reg/{repo}/img/{tag}", random_image(size)).status_code == 201
    assert upload(client, f"/reg/{repo}/other/tx", random_image(5)).status_code == 201
    assert client.put(f"/reg/{repo}/img/tb/immutable").status_code == 200
    assert client.get(f"/reg/{repo}/img").json()["data"] == ["ta", "tb", "tc"]  # plain: as before
    first = client.get(f"/reg/{repo}/img", params={"details": "true", "limit": 2}).json()
    assert [(t["tag"], t["size"], t["immutable"]) for t in first["data"]] == [
        ("ta", 10, False),
        ("tb", 20, True),
    ]
    assert first["next"] == "tb"
    meta = client.get(f"/reg/{repo}/img/ta/meta").json()
    assert first["data"][0]["digest"] == meta["digest"]
    assert first["data"][0]["sha256"] == meta["sha256"]
    assert first["data"][0]["updated"] == meta["updated"]
    rest = client.get(
        f"/reg/{repo}/img", params={"details": "true", "limit": 2, "after": "tb"}
    ).json()
    assert [t["tag"] for t in rest["data"]] == ["tc"]
    assert rest["next"] is None
    images = client.get(f"/reg/{repo}", params={"details": "true"}).json()
    assert [(i["image"], i["tags"], i["size"]) for i in images["data"]] == [
        ("img", 3, 60),
        ("other", 1, 5),
    ]
    assert images["data"][0]["updated"].endswith("+00:00")
    assert_error(
        client.get(f"/reg/{repo}/img", params={"details": "true", "limit": 0}),
        400,
        "INVALID_ARGUMENT",
    )
    assert_error(client.get(f"/reg/{repo}/nope", params={"details": "true"}), 404, "NOT_FOUND")


def test_an_oversized_retag_body_is_refused(client: httpx.Client, repo: str) -> None:
    path = f"/reg/{repo}/img/v1"
    assert upload(client, path, b"x").status_code == 201
    huge = {"digest": f"blake3:{blake3_hex(b'x')}", "meta": {"k": "v" * 200_000}}
    assert_error(retag(client, path, huge), 413, "RESOURCE_EXHAUSTED")
    assert len(history(client, path)) == 1
