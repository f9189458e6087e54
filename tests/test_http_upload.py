"""Upload, overwrite and delete over HTTP against a real ``cloudimg serve`` (docs/api.md).

Every failing upload must change nothing: no blob file, no staging file, no catalog row,
no listing entry, and an existing tag keeps its bytes.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, serve_module, upload
from tests.invariants import assert_invariants, read_catalog, wait_for_no_staging
from tests.support import (
    MULTIPART,
    Part,
    assert_error,
    assert_error_body,
    blake3_hex,
    blob_path,
    img_part,
    meta_part,
    multipart_body,
    multipart_head,
    multipart_tail,
    random_image,
    sha256_hex,
    wait_until,
)

# -- helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[RunningServer]:
    """This module's server runs with ``--keep-history 0``: a tag's old bytes go as soon as
    no tag names them, as with the old server (retention: tests/test_http_history.py)."""
    yield from serve_module(tmp_path_factory, backend, "--keep-history", "0")


def post_raw(client: httpx.Client, path: str, body: bytes, content_type: str) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": content_type})


@dataclass(frozen=True)
class RawResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    server: RunningServer,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = None,
) -> RawResponse:
    """Send ``path`` exactly as given (httpx would resolve ``..`` segments away)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {"content-type": content_type} if content_type else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return RawResponse(response.status, response.read())
    finally:
        connection.close()


def listing(client: httpx.Client, path: str = "/reg") -> list[str]:
    response = client.get(path)
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    return list(response.json()["data"] or [])


@dataclass(frozen=True)
class State:
    """What a failed upload must leave untouched."""

    blob_files: list[Path]
    repos: list[str]
    blobs: dict[str, tuple[int, str, int]]
    tag_digests: list[str]


def state_of(server: RunningServer, client: httpx.Client) -> State:
    catalog = read_catalog(server)
    return State(server.blob_files(), listing(client), catalog.blobs, sorted(catalog.tag_digests))


@pytest.fixture
def before(server: RunningServer, client: httpx.Client) -> State:
    """The state before the test's request; the server starts and ends each test idle."""
    assert server.staging_files() == []
    return state_of(server, client)


def assert_unchanged(server: RunningServer, client: httpx.Client, before: State) -> None:
    assert server.staging_files() == []
    assert state_of(server, client) == before
    assert_invariants(server)


# -- contract ------------------------------------------------------------------


def test_upload_answers_201_with_null_data(client: httpx.Client, repo: str) -> None:
    response = upload(client, f"/reg/{repo}/img/t1", b"image bytes")
    assert response.status_code == 201
    assert response.json() == {"success": True, "data": None}


def test_upload_201_says_what_was_stored(client: httpx.Client, repo: str) -> None:
    """Location (the digest-pinned URL), ETag and Repr-Digest: pinning needs no second call."""
    data = random_image(70_000)
    response = upload(client, f"/reg/{repo}/img/t1", data)
    assert response.status_code == 201
    assert response.json() == {"success": True, "data": None}
    assert response.headers["location"] == f"/reg/{repo}/img/blake3:{blake3_hex(data)}"
    pinned = client.get(response.headers["location"])
    assert pinned.content == data
    assert response.headers["etag"] == pinned.headers["etag"] == f'"blake3:{blake3_hex(data)}"'
    sha256_b64 = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert response.headers["repr-digest"] == pinned.headers["repr-digest"]
    assert response.headers["repr-digest"] == f"sha-256=:{sha256_b64}:"


def test_each_upload_pins_its_own_bytes(client: httpx.Client, repo: str) -> None:
    first, second = random_image(5000), random_image(6000)
    assert upload(client, f"/reg/{repo}/img/keep", first).status_code == 201
    first_location = upload(client, f"/reg/{repo}/img/t1", first).headers["location"]
    second_location = upload(client, f"/reg/{repo}/img/t1", second).headers["location"]
    assert first_location != second_location
    assert client.get(first_location).content == first  # still held by the tag "keep"
    assert client.get(second_location).content == second
    assert client.get(f"/reg/{repo}/img/t1").content == second


def test_location_carries_the_prefixes(server_factory: Callable[..., RunningServer]) -> None:
    running = server_factory("--www-prefix", "/mirror/", "--repo-prefix", "images")
    with running.client() as http:
        response = upload(http, "/mirror/images/pfx/img/t1", b"prefixed")
        assert response.status_code == 201
        assert response.headers["location"].startswith("/mirror/images/pfx/img/blake3:")
        assert http.get(response.headers["location"]).content == b"prefixed"


def test_head_meta_answers_like_get_without_a_body(server: RunningServer, repo: str) -> None:
    """Sent on one connection: a body after the HEAD's headers would break the next answer."""
    with server.client() as client:
        assert upload(client, f"/reg/{repo}/img/t1", b"abc", {"os": "x"}).status_code == 201
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        answers = []
        for method in ["HEAD", "GET", "HEAD"]:
            connection.request(method, f"/reg/{repo}/img/t1/meta")
            response = connection.getresponse()
            answers.append((response.status, response.getheaders(), response.read()))
    finally:
        connection.close()
    (head_status, head_headers, head_body), (get_status, get_headers, get_body), _ = answers
    assert (head_status, get_status) == (200, 200)
    assert head_body == b""
    assert json.loads(get_body)["data"] == {"os": "x"}
    kept = {"content-type", "content-length"}
    assert {(k.lower(), v) for k, v in head_headers if k.lower() in kept} == {
        (k.lower(), v) for k, v in get_headers if k.lower() in kept
    }
    assert dict(get_headers)["content-length"] == str(len(get_body))
    assert answers[2][0] == 200


@pytest.mark.parametrize(
    ("path", "status"), [("/img/nope/meta", 404), ("/img/NOPE/meta", 400)], ids=["unknown", "bad"]
)
def test_head_meta_errors_like_get(client: httpx.Client, repo: str, path: str, status: int) -> None:
    assert upload(client, f"/reg/{repo}/img/t1", b"abc").status_code == 201
    head = client.head(f"/reg/{repo}{path}")
    get = client.get(f"/reg/{repo}{path}")
    assert head.status_code == get.status_code == status
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


def test_meta_as_file_part_round_trips(client: httpx.Client, repo: str) -> None:
    meta = {"os": "ubuntu", "arch": "amd64", "note": "ünïcode ✓"}
    assert upload(client, f"/reg/{repo}/img/t1", b"abc", meta).status_code == 201
    view = client.get(f"/reg/{repo}/img/t1/meta").json()
    assert view["success"] is True
    assert view["data"] == meta


def test_meta_as_plain_form_field_round_trips(client: httpx.Client, repo: str) -> None:
    meta = {"os": "debian"}
    response = client.post(
        f"/reg/{repo}/img/t1",
        data={"meta": json.dumps(meta)},
        files={"img": ("image.bin", b"abc", "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == meta


def test_parts_may_come_in_either_order(client: httpx.Client, repo: str) -> None:
    body = multipart_body([img_part(b"img first"), meta_part({"k": "v"})])
    assert post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART).status_code == 201
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == {"k": "v"}
    assert client.get(f"/reg/{repo}/img/t1").content == b"img first"


def test_empty_meta_object_is_accepted(client: httpx.Client, repo: str) -> None:
    assert upload(client, f"/reg/{repo}/img/t1", b"abc", {}).status_code == 201
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == {}


def test_meta_view_carries_path_digests_and_size(client: httpx.Client, repo: str) -> None:
    data = random_image(70_000)
    assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    view = client.get(f"/reg/{repo}/img/t1/meta").json()
    assert view["imagePath"] == f"/reg/{repo}/img/t1"
    assert view["digest"] == f"blake3:{blake3_hex(data)}"
    assert view["sha256"] == f"sha256:{sha256_hex(data)}"
    assert view["size"] == len(data)


def test_meta_view_times_are_timezone_aware(client: httpx.Client, repo: str) -> None:
    assert upload(client, f"/reg/{repo}/img/t1", b"abc").status_code == 201
    view = client.get(f"/reg/{repo}/img/t1/meta").json()
    created = datetime.fromisoformat(view["created"])
    updated = datetime.fromisoformat(view["updated"])
    assert created.utcoffset() is not None
    assert updated.utcoffset() is not None
    assert created <= updated


def test_overwrite_keeps_created_and_replaces_meta(client: httpx.Client, repo: str) -> None:
    assert upload(client, f"/reg/{repo}/img/t1", b"one", {"v": "1"}).status_code == 201
    first = client.get(f"/reg/{repo}/img/t1/meta").json()
    assert upload(client, f"/reg/{repo}/img/t1", b"two", {"w": "2"}).status_code == 201
    second = client.get(f"/reg/{repo}/img/t1/meta").json()
    assert second["data"] == {"w": "2"}
    assert second["created"] == first["created"]
    assert datetime.fromisoformat(second["updated"]) >= datetime.fromisoformat(first["updated"])


def test_tag_with_dots_is_accepted(client: httpx.Client, repo: str) -> None:
    assert upload(client, f"/reg/{repo}/ubuntu/22.04", b"jammy").status_code == 201
    assert listing(client, f"/reg/{repo}/ubuntu") == ["22.04"]
    assert client.get(f"/reg/{repo}/ubuntu/22.04").content == b"jammy"


def test_longest_valid_names_are_accepted(client: httpx.Client) -> None:
    repo, image, tag = "r" * 63, "i" * 63, "t" * 128
    try:
        assert upload(client, f"/reg/{repo}/{image}/{tag}", b"long").status_code == 201
        assert client.get(f"/reg/{repo}/{image}/{tag}").content == b"long"
    finally:
        client.delete(f"/reg/{repo}/{image}/{tag}")


BAD_NAMES = [
    # (which, repo, image, tag)
    ("repo too short", "ab", "img", "t1"),
    ("repo upper case", "Repo", "img", "t1"),
    ("repo leading dash", "-repo", "img", "t1"),
    ("repo trailing dash", "repo-", "img", "t1"),
    ("repo too long", "r" * 64, "img", "t1"),
    ("repo dot-dot", "..", "img", "t1"),
    ("repo with dot", "re.po", "img", "t1"),
    ("image too short", "repo", "im", "t1"),
    ("image upper case", "repo", "Image", "t1"),
    ("image leading dash", "repo", "-img", "t1"),
    ("image too long", "repo", "i" * 64, "t1"),
    ("image dot-dot", "repo", "..", "t1"),
    ("tag too short", "repo", "img", "t"),
    ("tag upper case", "repo", "img", "Latest"),
    ("tag leading dash", "repo", "img", "-t1"),
    ("tag leading dot", "repo", "img", ".t1"),
    ("tag trailing dot", "repo", "img", "t1."),
    ("tag too long", "repo", "img", "t" * 129),
    ("tag dot-dot", "repo", "img", ".."),
    ("tag with colon", "repo", "img", "a:b"),
    ("tag non-ascii", "repo", "img", "%C3%A9t"),
    ("tag invalid utf-8", "repo", "img", "%FF%FE"),
    ("tag with nul", "repo", "img", "t%00x"),
]


@pytest.mark.parametrize(
    ("repo_name", "image_name", "tag_name"),
    [case[1:] for case in BAD_NAMES],
    ids=[case[0] for case in BAD_NAMES],
)
def test_bad_name_is_refused_and_stores_nothing(
    server: RunningServer,
    client: httpx.Client,
    before: State,
    repo_name: str,
    image_name: str,
    tag_name: str,
) -> None:
    body = multipart_body([meta_part({}), img_part(random_image(1000))])
    path = f"/reg/{repo_name}/{image_name}/{tag_name}"
    response = raw_request(server, "POST", path, body, MULTIPART)
    assert_error_body(response.status, response.json(), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


# -- bad input changes nothing ---------------------------------------------------


def test_invalid_json_meta_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([Part("meta", b"{not json"), img_part(random_image(5000))])
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_non_utf8_meta_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([Part("meta", b'{"k": "\xff\xfe"}'), img_part(random_image(5000))])
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


@pytest.mark.parametrize(
    "meta", [["a", "b"], "text", 42, None], ids=["array", "string", "number", "null"]
)
def test_meta_that_is_not_an_object_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State, meta: Any
) -> None:
    body = multipart_body([meta_part(meta), img_part(random_image(5000))])
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


@pytest.mark.parametrize(
    "value",
    [1, 1.5, True, None, ["x"], {"nested": "x"}],
    ids=["int", "float", "bool", "null", "list", "object"],
)
def test_meta_with_non_string_value_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State, value: Any
) -> None:
    body = multipart_body([meta_part({"ok": "yes", "bad": value}), img_part(random_image(5000))])
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


@pytest.mark.parametrize(
    "raw_meta",
    [
        b'{"k": "\\ud800"}',
        b'{"\\udfff": "v"}',
        b'{"\\udfff": 1}',
        b'{"\\udfff": "a", "\\udfff": "b"}',
    ],
    ids=["value", "key", "key-of-non-string", "duplicate-key"],
)
def test_meta_with_lone_surrogate_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State, raw_meta: bytes
) -> None:
    """Valid JSON, but not text a JSON response can carry: GET .../meta could never answer."""
    body = multipart_body([Part("meta", raw_meta), img_part(random_image(5000))])
    response = post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART)
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


@pytest.mark.parametrize(
    "raw_meta", [b'{"k": "a", "k": "b"}', b'{"k": 1, "k": "b"}'], ids=["strings", "last-string"]
)
def test_meta_with_duplicate_keys_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State, raw_meta: bytes
) -> None:
    """Parsers disagree on which duplicate wins; the registry must not pick one silently."""
    body = multipart_body([Part("meta", raw_meta), img_part(random_image(5000))])
    response = post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART)
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_oversized_meta_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    meta = {"big": "x" * (128 * 1024)}
    body = multipart_body([img_part(random_image(5000)), meta_part(meta)])
    assert_error(
        post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 413, "RESOURCE_EXHAUSTED"
    )
    assert_unchanged(server, client, before)


def test_missing_img_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([meta_part({"k": "v"})])
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_img_under_another_name_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([meta_part({}), Part("image", random_image(5000), "image.bin")])
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_missing_meta_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([img_part(random_image(5000))])
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_empty_multipart_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([])
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_empty_body_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", b"", MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_json_body_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    response = client.post(f"/reg/{repo}/img/t1", json={"meta": {}, "img": "AAAA"})
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_octet_stream_body_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    response = post_raw(
        client, f"/reg/{repo}/img/t1", random_image(200_000), "application/octet-stream"
    )
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_multipart_without_boundary_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([meta_part({}), img_part(random_image(5000))])
    response = post_raw(client, f"/reg/{repo}/img/t1", body, "multipart/form-data")
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_multipart_with_other_boundary_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([meta_part({}), img_part(random_image(5000))])
    response = post_raw(
        client, f"/reg/{repo}/img/t1", body, "multipart/form-data; boundary=not-the-one-used"
    )
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_truncated_multipart_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([meta_part({}), img_part(random_image(300_000))], close=False)
    assert_error(post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART), 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_multipart_cut_inside_img_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    body = multipart_body([meta_part({}), img_part(random_image(300_000))])
    response = post_raw(client, f"/reg/{repo}/img/t1", body[: len(body) // 2], MULTIPART)
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_duplicate_img_part_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    parts = [meta_part({}), img_part(random_image(5000)), img_part(random_image(5000))]
    response = post_raw(client, f"/reg/{repo}/img/t1", multipart_body(parts), MULTIPART)
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_duplicate_meta_part_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    parts = [meta_part({"a": "1"}), img_part(random_image(5000)), meta_part({"a": "2"})]
    response = post_raw(client, f"/reg/{repo}/img/t1", multipart_body(parts), MULTIPART)
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_bad_meta_keeps_the_existing_tag(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    old = random_image(20_000)
    assert upload(client, f"/reg/{repo}/img/t1", old, {"v": "old"}).status_code == 201
    body = multipart_body([meta_part({"v": 2}), img_part(random_image(20_000))])
    assert post_raw(client, f"/reg/{repo}/img/t1", body, MULTIPART).status_code == 400
    assert client.get(f"/reg/{repo}/img/t1").content == old
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == {"v": "old"}
    assert_invariants(server)


# -- ?digest= ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_wrong_digest_is_refused_and_stores_nothing(
    server: RunningServer, client: httpx.Client, repo: str, before: State, algorithm: str
) -> None:
    data = random_image(50_000)
    wrong = blake3_hex(b"other") if algorithm == "blake3" else sha256_hex(b"other")
    response = upload(
        client, f"/reg/{repo}/img/t1", data, params={"digest": f"{algorithm}:{wrong}"}
    )
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert not blob_path(server.data_root, blake3_hex(data)).exists()
    assert_unchanged(server, client, before)


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_wrong_digest_keeps_the_existing_tag(
    server: RunningServer, client: httpx.Client, repo: str, algorithm: str
) -> None:
    old, new = random_image(30_000), random_image(30_000)
    assert upload(client, f"/reg/{repo}/img/t1", old, {"v": "old"}).status_code == 201
    wrong = blake3_hex(old) if algorithm == "blake3" else sha256_hex(old)
    response = upload(
        client, f"/reg/{repo}/img/t1", new, {"v": "new"}, params={"digest": f"{algorithm}:{wrong}"}
    )
    assert response.status_code == 400
    assert client.get(f"/reg/{repo}/img/t1").content == old
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == {"v": "old"}
    assert not blob_path(server.data_root, blake3_hex(new)).exists()
    assert_invariants(server)


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_right_digest_is_accepted(
    server: RunningServer, client: httpx.Client, repo: str, algorithm: str
) -> None:
    data = random_image(40_000)
    right = blake3_hex(data) if algorithm == "blake3" else sha256_hex(data)
    response = upload(
        client, f"/reg/{repo}/img/t1", data, params={"digest": f"{algorithm}:{right}"}
    )
    assert response.status_code == 201, response.text
    assert client.get(f"/reg/{repo}/img/t1").content == data
    assert_invariants(server)


@pytest.mark.parametrize("wrong_first", [True, False], ids=["wrong-first", "wrong-last"])
def test_every_digest_given_must_match(
    server: RunningServer, client: httpx.Client, repo: str, before: State, wrong_first: bool
) -> None:
    data = random_image(20_000)
    right, wrong = f"blake3:{blake3_hex(data)}", f"sha256:{sha256_hex(b'other')}"
    digests = [wrong, right] if wrong_first else [right, wrong]
    response = client.post(
        f"/reg/{repo}/img/t1",
        files={"meta": (None, b"{}"), "img": ("image.bin", data)},
        params=[("digest", digest) for digest in digests],
    )
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_right_digests_in_both_algorithms_are_accepted(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(20_000)
    response = client.post(
        f"/reg/{repo}/img/t1",
        files={"meta": (None, b"{}"), "img": ("image.bin", data)},
        params=[("digest", f"sha256:{sha256_hex(data)}"), ("digest", f"blake3:{blake3_hex(data)}")],
    )
    assert response.status_code == 201, response.text
    assert client.get(f"/reg/{repo}/img/t1").content == data


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "blake3",
        "blake3:",
        "md5:" + "0" * 32,
        "sha512:" + "0" * 128,
        "blake3:" + "0" * 63,
        "sha256:" + "0" * 65,
        "blake3:" + "A" * 64,
        "sha256:" + "g" * 64,
        "0" * 64,
    ],
    ids=[
        "empty",
        "no-colon",
        "no-hex",
        "md5",
        "sha512",
        "short",
        "long",
        "upper",
        "non-hex",
        "bare-hex",
    ],
)
def test_malformed_digest_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State, digest: str
) -> None:
    response = upload(client, f"/reg/{repo}/img/t1", random_image(5000), params={"digest": digest})
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


# -- deduplication and reference counting -------------------------------------------


def test_two_tags_with_same_bytes_share_one_blob(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(60_000)
    files_before = set(server.blob_files())
    assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    assert upload(client, f"/reg/{repo}/img/t2", data).status_code == 201
    assert set(server.blob_files()) - files_before == {
        blob_path(server.data_root, blake3_hex(data))
    }
    assert read_catalog(server).refcount(blake3_hex(data)) == 2
    assert_invariants(server)


def test_same_bytes_in_two_repos_share_one_blob(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(60_000)
    other = repo + "-b"
    assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    assert upload(client, f"/reg/{other}/img2/t2", data).status_code == 201
    assert read_catalog(server).refcount(blake3_hex(data)) == 2
    assert_invariants(server)


def test_overwrite_with_other_bytes_serves_the_new_bytes(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    old, new = random_image(40_000), random_image(50_000)
    assert upload(client, f"/reg/{repo}/img/t1", old).status_code == 201
    response = upload(client, f"/reg/{repo}/img/t1", new)
    assert response.status_code == 201, response.text
    assert client.get(f"/reg/{repo}/img/t1").content == new
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["digest"] == f"blake3:{blake3_hex(new)}"
    assert_invariants(server)


def test_overwrite_frees_the_old_blob_with_its_last_reference(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    old, new = random_image(40_000), random_image(50_000)
    assert upload(client, f"/reg/{repo}/img/t1", old).status_code == 201
    assert blob_path(server.data_root, blake3_hex(old)).exists()
    assert upload(client, f"/reg/{repo}/img/t1", new).status_code == 201
    assert not blob_path(server.data_root, blake3_hex(old)).exists()
    assert read_catalog(server).refcount(blake3_hex(old)) is None
    assert_invariants(server)


def test_overwrite_keeps_the_old_blob_another_tag_holds(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    old, new = random_image(40_000), random_image(50_000)
    assert upload(client, f"/reg/{repo}/img/t1", old).status_code == 201
    assert upload(client, f"/reg/{repo}/img/t2", old).status_code == 201
    assert upload(client, f"/reg/{repo}/img/t1", new).status_code == 201
    assert client.get(f"/reg/{repo}/img/t2").content == old
    assert read_catalog(server).refcount(blake3_hex(old)) == 1
    assert_invariants(server)


def test_overwrite_with_same_bytes_keeps_one_blob(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(40_000)
    assert upload(client, f"/reg/{repo}/img/t1", data, {"v": "1"}).status_code == 201
    files = server.blob_files()
    assert upload(client, f"/reg/{repo}/img/t1", data, {"v": "2"}).status_code == 201
    assert server.blob_files() == files
    assert read_catalog(server).refcount(blake3_hex(data)) == 1
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == {"v": "2"}
    assert_invariants(server)


def test_overwrite_back_and_forth_keeps_counts(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    first, second = random_image(10_000), random_image(10_000)
    for data in (first, second, first, second, first):
        assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    assert client.get(f"/reg/{repo}/img/t1").content == first
    assert not blob_path(server.data_root, blake3_hex(second)).exists()
    assert_invariants(server)


def test_delete_one_of_two_sharing_tags_keeps_the_blob(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(40_000)
    assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    assert upload(client, f"/reg/{repo}/img/t2", data).status_code == 201
    response = client.delete(f"/reg/{repo}/img/t1")
    assert response.status_code == 200
    assert response.json() == {"success": True, "data": None}
    assert blob_path(server.data_root, blake3_hex(data)).exists()
    assert read_catalog(server).refcount(blake3_hex(data)) == 1
    assert client.get(f"/reg/{repo}/img/t2").content == data
    assert_invariants(server)


def test_delete_of_the_last_tag_frees_the_blob(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(40_000)
    assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    assert upload(client, f"/reg/{repo}/img/t2", data).status_code == 201
    assert client.delete(f"/reg/{repo}/img/t1").status_code == 200
    assert client.delete(f"/reg/{repo}/img/t2").status_code == 200
    assert not blob_path(server.data_root, blake3_hex(data)).exists()
    assert read_catalog(server).refcount(blake3_hex(data)) is None
    assert_invariants(server)


def test_delete_of_the_last_tag_empties_the_listings(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    assert upload(client, f"/reg/{repo}/img/t1", b"abc").status_code == 201
    assert upload(client, f"/reg/{repo}/img2/t1", b"abc").status_code == 201
    assert client.delete(f"/reg/{repo}/img/t1").status_code == 200
    assert listing(client, f"/reg/{repo}") == ["img2"]
    assert client.delete(f"/reg/{repo}/img2/t1").status_code == 200
    assert repo not in listing(client)
    assert_invariants(server)


@pytest.mark.parametrize("which", ["tag", "image", "repo"])
def test_delete_of_an_unknown_tag_is_404(
    server: RunningServer, client: httpx.Client, repo: str, before: State, which: str
) -> None:
    if which != "repo":
        assert upload(client, f"/reg/{repo}/img/t1", b"keep").status_code == 201
        before = state_of(server, client)
    path = {
        "tag": f"/reg/{repo}/img/nope",
        "image": f"/reg/{repo}/nope/t1",
        "repo": f"/reg/{repo}/img/t1",
    }[which]
    assert_error(client.delete(path), 404, "NOT_FOUND")
    assert_unchanged(server, client, before)


def test_delete_twice_is_404_the_second_time(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    assert upload(client, f"/reg/{repo}/img/t1", b"abc").status_code == 201
    assert client.delete(f"/reg/{repo}/img/t1").status_code == 200
    assert_error(client.delete(f"/reg/{repo}/img/t1"), 404, "NOT_FOUND")
    assert_invariants(server)


@pytest.mark.parametrize("tag", ["T1", "-t1", "..", "t"])
def test_delete_with_a_bad_tag_name_is_400(server: RunningServer, repo: str, tag: str) -> None:
    response = raw_request(server, "DELETE", f"/reg/{repo}/img/{tag}")
    assert_error_body(response.status, response.json(), 400, "INVALID_ARGUMENT")


def test_upload_after_delete_of_same_bytes_restores_the_blob(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(30_000)
    assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    assert client.delete(f"/reg/{repo}/img/t1").status_code == 200
    assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    assert client.get(f"/reg/{repo}/img/t1").content == data
    assert_invariants(server)


# -- disconnects ----------------------------------------------------------------------


IMG_SIZE = 5 * 1024 * 1024


def open_partial_upload(
    server: RunningServer, path: str, sent: int, *, chunked: bool = False
) -> socket.socket:
    """Send the headers and the first ``sent`` bytes of the ``img`` data of a larger upload.

    With ``chunked``, the body goes in 64 KiB chunks of ``Transfer-Encoding: chunked``.
    """
    head_parts, tail = multipart_head({"k": "v"}), multipart_tail()
    declared = len(head_parts) + IMG_SIZE + len(tail)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared}"
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: {MULTIPART}\r\n"
        f"{length}\r\n\r\n"
    ).encode()
    body = head_parts + random_image(sent)
    if chunked:
        step = 64 * 1024
        body = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
            for i in range(0, len(body), step)
        )
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head + body)
    return sock


def close_abruptly(sock: socket.socket, how: str) -> None:
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture(params=["close", "reset"])
def close_how(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("sent", [1024 * 1024, IMG_SIZE - 512 * 1024], ids=["1MiB", "4.5MiB"])
def test_disconnect_mid_upload_leaves_nothing(
    server: RunningServer,
    client: httpx.Client,
    repo: str,
    before: State,
    close_how: str,
    sent: int,
) -> None:
    sock = open_partial_upload(server, f"/reg/{repo}/img/t1", sent)
    try:
        wait_until(server.staging_files, "the server starts staging the upload")
    finally:
        close_abruptly(sock, close_how)
    assert wait_for_no_staging(server) == []
    assert repo not in listing(client)
    assert_unchanged(server, client, before)


def test_disconnect_mid_chunked_upload_leaves_nothing(
    server: RunningServer, client: httpx.Client, repo: str, before: State, close_how: str
) -> None:
    sock = open_partial_upload(server, f"/reg/{repo}/img/t1", 2 * 1024 * 1024, chunked=True)
    try:
        wait_until(server.staging_files, "the server starts staging the upload")
    finally:
        close_abruptly(sock, close_how)
    assert wait_for_no_staging(server) == []
    assert_unchanged(server, client, before)


def test_disconnect_keeps_the_existing_tag(
    server: RunningServer, client: httpx.Client, repo: str, close_how: str
) -> None:
    old = random_image(20_000)
    assert upload(client, f"/reg/{repo}/img/t1", old).status_code == 201
    sock = open_partial_upload(server, f"/reg/{repo}/img/t1", 2 * 1024 * 1024)
    try:
        wait_until(server.staging_files, "the server starts staging the upload")
    finally:
        close_abruptly(sock, close_how)
    assert wait_for_no_staging(server) == []
    assert client.get(f"/reg/{repo}/img/t1").content == old
    assert_invariants(server)


def test_server_serves_after_a_disconnect(
    server: RunningServer, client: httpx.Client, repo: str, close_how: str
) -> None:
    sock = open_partial_upload(server, f"/reg/{repo}/img/t1", 1024 * 1024)
    try:
        wait_until(server.staging_files, "the server starts staging the upload")
    finally:
        close_abruptly(sock, close_how)
    assert client.get("/healthz").status_code == 200
    data = random_image(100_000)
    assert upload(client, f"/reg/{repo}/img/t1", data).status_code == 201
    assert client.get(f"/reg/{repo}/img/t1").content == data
    assert wait_for_no_staging(server) == []
    assert_invariants(server)


# -- a refused upload leaves the connection usable ------------------------------------

REFUSED_UPLOADS: dict[str, tuple[str, bytes, str]] = {
    # name: (path suffix after /reg/<repo>, body, content type)
    "octet-stream body": ("/img/t1", random_image(300_000), "application/octet-stream"),
    "duplicate img": (
        "/img/t1",
        multipart_body([meta_part({}), img_part(b"a"), img_part(random_image(300_000))]),
        MULTIPART,
    ),
    "non-string meta value": (
        "/img/t1",
        multipart_body([meta_part({"k": 1}), img_part(random_image(300_000))]),
        MULTIPART,
    ),
    "oversized meta": (
        "/img/t1",
        multipart_body([meta_part({"k": "x" * 100_000}), img_part(random_image(300_000))]),
        MULTIPART,
    ),
    "bad tag name": (
        "/img/Bad",
        multipart_body([meta_part({}), img_part(random_image(300_000))]),
        MULTIPART,
    ),
    "malformed digest": (
        "/img/t1?digest=md5:00",
        multipart_body([meta_part({}), img_part(random_image(300_000))]),
        MULTIPART,
    ),
    "wrong digest": (
        "/img/t1?digest=blake3:" + "0" * 64,
        multipart_body([meta_part({}), img_part(random_image(300_000))]),
        MULTIPART,
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_UPLOADS))
def test_connection_serves_the_next_request_after_a_refused_upload(
    server: RunningServer, repo: str, case: str
) -> None:
    """The whole request is sent, so keep-alive must hold: no ``Connection: close``, and
    the same connection answers the next request."""
    suffix, body, content_type = REFUSED_UPLOADS[case]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(
            "POST", f"/reg/{repo}{suffix}", body=body, headers={"content-type": content_type}
        )
        refused = connection.getresponse()
        refused.read()
        assert 400 <= refused.status < 500
        assert (refused.getheader("connection") or "").lower() != "close"
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


BAD_QUERIES: dict[str, tuple[str, str, dict[str, str] | None]] = {
    # name: (query string, how the error message starts, the error's context)
    "malformed digest": ("digest=sha256:" + "0" * 63, "query parameter 'digest': ", None),
    "one of two digests malformed": (
        "digest=blake3:" + "0" * 64 + "&digest=md5:" + "0" * 32,
        "query parameter 'digest': ",
        None,
    ),
    "unknown format": (
        "format=floppy",
        "query parameter 'format': unknown image format 'floppy'",
        {"format": "floppy"},
    ),
    "format given twice": ("format=raw&format=qcow2", "query parameter 'format' is given", None),
}


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("case", sorted(BAD_QUERIES))
def test_a_bad_query_parameter_is_the_uploads_400_and_the_connection_serves_on(
    server: RunningServer, client: httpx.Client, repo: str, before: State, method: str, case: str
) -> None:
    """The upload parses ``digest`` and ``format`` itself (cloudimg.api.reg.uploads.UploadQuery):
    a bad one is the project's error body, and the refused body is drained first, so the
    connection answers the next request. Litestar's own validation would answer before
    the handler, with its own message, and leave the body unread (Granian then closes)."""
    query, message, context = BAD_QUERIES[case]
    image = random_image(300_000)
    if method == "POST":
        body, content_type = multipart_body([meta_part({}), img_part(image)]), MULTIPART
    else:
        body, content_type = image, "application/octet-stream"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(
            method, f"/reg/{repo}/img/t1?{query}", body=body, headers={"content-type": content_type}
        )
        refused = connection.getresponse()
        assert (refused.getheader("content-type") or "").startswith("application/json")
        error = assert_error_body(refused.status, refused.read(), 400, "INVALID_ARGUMENT")
        assert error["error"].startswith(message), error
        assert error.get("context") == context, error
        assert (refused.getheader("connection") or "").lower() != "close"
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert_unchanged(server, client, before)


def test_a_refusal_before_the_body_does_not_wait_for_an_expected_body(
    server: RunningServer,
) -> None:
    """A client waiting for ``100 Continue`` (curl -F does) gets the 400 instead of the
    invitation to send a body that would only be read and dropped."""
    head = (
        "POST /reg/BAD-NAME/img/t1 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: {MULTIPART}\r\n"
        "Content-Length: 300000\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
