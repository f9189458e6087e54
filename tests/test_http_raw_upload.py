"""The raw upload, ``PUT /reg/{repo}/{image}/{tag}``, against a real server (docs/api.md).

The body is the image, the metadata the ``Cloudimg-Meta`` header. It goes through the
same use case as the multipart ``POST``, so it answers the same and, refused, changes
nothing: no blob file, no staging file, no catalog row, and an existing tag keeps its bytes.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import RunningServer, serve_module, upload, upload_raw
from tests.invariants import assert_invariants, wait_for_no_staging
from tests.support import (
    assert_error,
    blake3_hex,
    random_image,
    sha256_hex,
    wait_until,
)
from tests.test_http_upload import State, close_abruptly, listing, state_of


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[RunningServer]:
    """As tests/test_http_upload.py's: a tag's old bytes go as soon as no tag names them."""
    yield from serve_module(tmp_path_factory, backend, "--keep-history", "0")


@pytest.fixture
def before(server: RunningServer, client: httpx.Client) -> State:
    assert server.staging_files() == []
    return state_of(server, client)


def assert_unchanged(server: RunningServer, client: httpx.Client, before: State) -> None:
    assert wait_for_no_staging(server) == []
    assert state_of(server, client) == before
    assert_invariants(server)


def send_raw(server: RunningServer, head: str, body: bytes = b"") -> bytes:
    """Send a request exactly as written (headers ``head``, then ``body``); the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        return sock.recv(65536)


# -- what it stores ----------------------------------------------------------------------


def test_put_answers_as_the_post_does(client: httpx.Client, repo: str) -> None:
    data = random_image(300_000)
    response = upload_raw(client, f"/reg/{repo}/img/t1", data, {"os": "ubuntu"})
    assert response.status_code == 201, response.text
    assert response.json() == {"success": True, "data": None}
    assert response.headers["location"] == f"/reg/{repo}/img/blake3:{blake3_hex(data)}"
    assert response.headers["etag"] == f'"blake3:{blake3_hex(data)}"'
    assert client.get(f"/reg/{repo}/img/t1").content == data
    meta = client.get(f"/reg/{repo}/img/t1/meta").json()
    assert meta["data"] == {"os": "ubuntu"}
    assert meta["sha256"] == f"sha256:{sha256_hex(data)}"


def test_put_and_post_of_the_same_bytes_share_one_blob(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    data = random_image(50_000)
    assert upload(client, f"/reg/{repo}/img/a1", data).status_code == 201
    assert upload_raw(client, f"/reg/{repo}/img/b1", data).status_code == 201
    assert len([p for p in server.blob_files() if p.name == blake3_hex(data)[2:]]) == 1
    assert_invariants(server)


def test_without_the_header_the_metadata_is_empty(client: httpx.Client, repo: str) -> None:
    response = client.put(f"/reg/{repo}/img/t1", content=random_image(10_000))  # no type either
    assert response.status_code == 201, response.text
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == {}


def test_the_header_may_carry_utf8(server: RunningServer, client: httpx.Client, repo: str) -> None:
    meta = json.dumps({"name": "Übersicht ☃"}, ensure_ascii=False).encode()
    head = (
        (
            f"PUT /reg/{repo}/img/t1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            "Connection: close\r\nCloudimg-Meta: "
        ).encode()
        + meta
        + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + b"abc")
        assert sock.recv(4096).startswith(b"HTTP/1.1 201")
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == {"name": "Übersicht ☃"}


def test_metadata_near_the_header_limit_is_taken(client: httpx.Client, repo: str) -> None:
    meta = {"notes": "x" * 60_000}
    assert upload_raw(client, f"/reg/{repo}/img/t1", b"abc", meta).status_code == 201
    assert client.get(f"/reg/{repo}/img/t1/meta").json()["data"] == meta


def test_a_chunked_body_is_stored(client: httpx.Client, repo: str) -> None:
    data = random_image(1_000_000)
    pieces = (data[i : i + 65536] for i in range(0, len(data), 65536))
    response = client.put(f"/reg/{repo}/img/t1", content=pieces)  # no Content-Length
    assert response.status_code == 201, response.text
    assert client.get(f"/reg/{repo}/img/t1").content == data


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_right_digest_is_accepted(client: httpx.Client, repo: str, algorithm: str) -> None:
    data = random_image(20_000)
    hex_ = blake3_hex(data) if algorithm == "blake3" else sha256_hex(data)
    params = {"digest": f"{algorithm}:{hex_}"}
    assert upload_raw(client, f"/reg/{repo}/img/t1", data, params=params).status_code == 201


def test_a_declared_format_is_checked(client: httpx.Client, repo: str) -> None:
    data = random_image(20_000)
    ok = upload_raw(client, f"/reg/{repo}/img/t1", data, params={"format": "raw"})
    assert ok.status_code == 201, ok.text
    meta = client.get(f"/reg/{repo}/img/t1/meta").json()
    assert meta["format"] == "raw"


# -- refusals change nothing -------------------------------------------------------------

BAD_META: dict[str, tuple[bytes, int]] = {
    "not JSON": (b"{os:1}", 400),
    "an array": (b'["a"]', 400),
    "a number value": (b'{"a":1}', 400),
    "nested": (b'{"a":{"b":"c"}}', 400),
    "a duplicate key": (b'{"a":"1","a":"2"}', 400),
    "not UTF-8": (b'{"a":"\xff"}', 400),
    "a lone surrogate": (b'{"a":"\\ud800"}', 400),
    "a byte order mark": (b'\xef\xbb\xbf{"a":"b"}', 400),
    # The header limit (64 KiB for the target and every header) comes first.
    "over 64 KiB": (b'{"a":"' + b"x" * (64 * 1024) + b'"}', 431),
}


@pytest.mark.parametrize("meta", BAD_META.values(), ids=BAD_META.keys())
def test_bad_metadata_is_refused_and_stores_nothing(
    server: RunningServer, client: httpx.Client, repo: str, before: State, meta: tuple[bytes, int]
) -> None:
    raw, status = meta
    head = (
        (
            f"PUT /reg/{repo}/img/t1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
            "Connection: close\r\nCloudimg-Meta: "
        ).encode()
        + raw
        + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + random_image(5000))
        answer = sock.recv(65536)
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:300]
    assert b"Cloudimg-Meta" in answer or b"metadata" in answer or b"headers" in answer
    assert_unchanged(server, client, before)


def test_a_repeated_meta_header_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    headers = [("cloudimg-meta", '{"a":"1"}'), ("cloudimg-meta", '{"b":"2"}')]
    response = client.put(f"/reg/{repo}/img/t1", content=b"abc", headers=headers)
    assert "more than once" in assert_error(response, 400, "INVALID_ARGUMENT")["error"]
    assert_unchanged(server, client, before)


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/json"])
def test_a_body_that_is_not_octet_stream_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, before: State, content_type: str
) -> None:
    response = client.put(
        f"/reg/{repo}/img/t1", content=random_image(10_000), headers={"content-type": content_type}
    )
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


@pytest.mark.parametrize("path", ["/reg/AB/img/t1", "/reg/abc/img/T1", "/reg/abc/i/t1"])
def test_a_bad_name_is_refused_and_stores_nothing(
    server: RunningServer, client: httpx.Client, before: State, path: str
) -> None:
    response = upload_raw(client, path, random_image(10_000), {"a": "b"})
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_a_wrong_digest_keeps_the_existing_tag(
    server: RunningServer, client: httpx.Client, repo: str, algorithm: str
) -> None:
    old = random_image(10_000)
    assert upload_raw(client, f"/reg/{repo}/img/t1", old).status_code == 201
    before = state_of(server, client)
    params = {"digest": f"{algorithm}:{'0' * 64}"}
    response = upload_raw(client, f"/reg/{repo}/img/t1", random_image(20_000), params=params)
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert client.get(f"/reg/{repo}/img/t1").content == old
    assert_unchanged(server, client, before)


def test_a_format_the_bytes_do_not_have_is_422(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    params = {"format": "qcow2"}
    response = upload_raw(client, f"/reg/{repo}/img/t1", random_image(20_000), params=params)
    body = assert_error(response, 422, "IMAGE_REFUSED")
    assert body["context"]["rule"] == "format-mismatch"
    assert_unchanged(server, client, before)


def test_preconditions_apply(server: RunningServer, client: httpx.Client, repo: str) -> None:
    old = random_image(10_000)
    assert upload_raw(client, f"/reg/{repo}/img/t1", old).status_code == 201
    before = state_of(server, client)
    again = {"if-none-match": "*"}
    response = upload_raw(client, f"/reg/{repo}/img/t1", random_image(10_000), headers=again)
    assert_error(response, 412, "FAILED_PRECONDITION")
    assert client.get(f"/reg/{repo}/img/t1").content == old
    assert_unchanged(server, client, before)


def test_an_immutable_tag_is_not_overwritten(
    server: RunningServer, client: httpx.Client, repo: str
) -> None:
    old = random_image(10_000)
    assert upload_raw(client, f"/reg/{repo}/img/t1", old).status_code == 201
    assert client.put(f"/reg/{repo}/img/t1/immutable").status_code == 200
    before = state_of(server, client)
    response = upload_raw(client, f"/reg/{repo}/img/t1", random_image(10_000))
    assert response.status_code == 409, response.text
    assert client.get(f"/reg/{repo}/img/t1").content == old
    assert_unchanged(server, client, before)


def test_a_disconnect_mid_body_leaves_nothing(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    head = f"PUT /reg/{repo}/img/t1 HTTP/1.1\r\nHost: x\r\nContent-Length: {8 << 20}\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(head.encode() + random_image(5 << 20))
        wait_until(server.staging_files, "the server starts staging the upload")
    finally:
        close_abruptly(sock, "reset")
    assert repo not in listing(client)
    assert_unchanged(server, client, before)


# -- limits, checked before the body is read --------------------------------------------


@pytest.fixture
def limited(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory("--max-image-size", "1M")


def test_an_image_of_the_limit_is_taken_one_byte_more_is_413(limited: RunningServer) -> None:
    with limited.client() as http:
        exact = upload_raw(http, "/reg/abc/img/t1", random_image(1 << 20))
        assert exact.status_code == 201, exact.text
        over = upload_raw(http, "/reg/abc/img/t2", random_image((1 << 20) + 1))
        assert_error(over, 413, "RESOURCE_EXHAUSTED")
        pieces = iter([random_image(1 << 20), b"x"])  # chunked: refused while it streams
        assert_error(http.put("/reg/abc/img/t3", content=pieces), 413, "RESOURCE_EXHAUSTED")
        assert listing(http, "/reg/abc/img") == ["t1"]
    assert wait_for_no_staging(limited) == []
    assert_invariants(limited)


def test_a_content_length_over_the_limit_is_413_unread(limited: RunningServer) -> None:
    head = (
        f"PUT /reg/abc/img/t1 HTTP/1.1\r\nHost: x\r\nContent-Length: {(1 << 20) + 1}\r\n"
        "Expect: 100-continue\r\n"
    )
    answer = send_raw(limited, head)  # not one byte of the body is sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert limited.staging_files() == []


def test_a_content_length_over_the_free_space_is_507_unread(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    head = f"PUT /reg/{repo}/img/t1 HTTP/1.1\r\nHost: x\r\nContent-Length: {10**18}\r\n"
    answer = send_raw(server, head)
    assert answer.startswith(b"HTTP/1.1 507"), answer[:200]
    assert_unchanged(server, client, before)


def test_a_stalled_body_is_408_and_leaves_nothing(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory("--read-body-timeout-secs", "1")
    head = f"PUT /reg/abc/img/t1 HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 20}\r\n"
    answer = send_raw(running, head, random_image(1000))  # then nothing more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert wait_for_no_staging(running) == []
    assert_invariants(running)


def test_a_write_token_is_needed_and_names_the_writer(
    server_factory: Callable[..., RunningServer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text("ci-raw s3cret-raw\n")
    running = server_factory("--write-token-file", str(tokens))
    with running.client() as http:
        refused = upload_raw(http, "/reg/abc/img/t1", random_image(10_000))
        assert refused.status_code == 401, refused.text
        auth = {"authorization": "Bearer s3cret-raw"}
        assert upload_raw(http, "/reg/abc/img/t1", b"abc", headers=auth).status_code == 201
        history = http.get("/reg/abc/img/t1/history").json()["data"]
    assert [(e["action"], e["actor"]) for e in history] == [("created", "ci-raw")]
    assert wait_for_no_staging(running) == []
