"""Hostile input against a real ``cloudimg serve``: odd paths, bodies, headers, and a
schemathesis run over the OpenAPI document (docs/api.md).

Paths are sent byte for byte over raw sockets (httpx and http.client would normalise
``..`` or refuse control characters). The checks here do not depend on the catalog
backend, so the module runs on SQLite only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.invariants import assert_invariants, wait_for_no_staging
from tests.support import BOUNDARY, Part, assert_error_body, multipart_body, random_image


@pytest.fixture(scope="module")
def backend() -> str:
    """HTTP parsing and routing happen before any catalog: one backend is enough."""
    return "sqlite"


def exchange(server: RunningServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is on a new connection; status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    assert received, "the server closed the connection without an answer"
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), headers, body


def request_bytes(
    server: RunningServer, method: str, target: bytes, body: bytes = b"", **extra: str
) -> bytes:
    headers = {
        "Host": f"127.0.0.1:{server.port}",
        "Connection": "close",
        "Content-Length": str(len(body)),
        **extra,
    }
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    return method.encode() + b" " + target + b" HTTP/1.1\r\n" + lines + b"\r\n" + body


def multipart(*parts: tuple[str | None, bytes]) -> bytes:
    """A multipart body; a part whose name is None has a Content-Disposition without one."""
    return multipart_body([Part(name, data) for name, data in parts])


def files_outside(server: RunningServer) -> set[Path]:
    """Every file and directory beside the data root (where a traversal would land)."""
    top = server.data_root.parent
    return {
        path
        for path in top.rglob("*")
        if not path.is_relative_to(server.data_root) and not path.name.startswith("server-")
    }


HOSTILE_SEGMENTS = {
    "encoded slash": b"a%2Fb",
    "encoded slashes up": b"..%2F..%2F..%2Fetc",
    "encoded dots": b"%2e%2e",
    "encoded dot-dot-slash": b"%2e%2e%2f%2e%2e%2fescape",
    "dot-dot": b"..",
    "dot": b".",
    "nul": b"t%00x",
    "raw-looking nul and newline": b"t%00%0d%0ax",
    "non-ascii": b"%C3%A9t%C3%A9",
    "invalid utf-8": b"%FF%FE%FD",
    "backslash": b"..%5C..%5Cescape",
    "overlong": b"a" * 10_000,
    "overlong encoded": b"%61" * 4_000,
}


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("segment", sorted(HOSTILE_SEGMENTS))
def test_hostile_path_segments_are_400_or_404_and_touch_nothing(
    server: RunningServer, segment: str, position: int
) -> None:
    outside = files_outside(server)
    names = [b"abc", b"def", b"v1"]
    names[position] = HOSTILE_SEGMENTS[segment]
    target = b"/reg/" + b"/".join(names)
    body = multipart(("meta", b"{}"), ("img", random_image(2000)))
    for method, payload, extra in [
        ("POST", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}),
        ("GET", b"", {}),
        ("DELETE", b"", {}),
    ]:
        status, _headers, answer = exchange(
            server, request_bytes(server, method, target, payload, **extra)
        )
        assert_error_body(status, answer, (400, 404))
        status, _headers, answer = exchange(server, request_bytes(server, "GET", target + b"/meta"))
        assert_error_body(status, answer, (400, 404))
    assert files_outside(server) == outside
    assert wait_for_no_staging(server) == []
    assert_invariants(server)


def test_traversal_in_the_raw_path_is_404(server: RunningServer) -> None:
    outside = files_outside(server)
    for target in [b"/reg/abc/def/v1/../../../../x", b"/reg/../../etc/passwd", b"/../reg"]:
        status, _headers, answer = exchange(server, request_bytes(server, "GET", target))
        assert_error_body(status, answer, (400, 404))
    assert files_outside(server) == outside


# -- bodies ------------------------------------------------------------------------------


def post_multipart(server: RunningServer, body: bytes) -> tuple[int, bytes]:
    status, _headers, answer = exchange(
        server,
        request_bytes(
            server,
            "POST",
            b"/reg/hostile/img/v1",
            body,
            **{"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        ),
    )
    return status, answer


BAD_BODIES: dict[str, bytes] = {
    "too many parts": multipart(
        ("meta", b"{}"), *[(f"x{i}", b"junk") for i in range(40)], ("img", b"abc")
    ),
    "a part without a name": multipart((None, b"abc"), ("meta", b"{}"), ("img", b"abc")),
    "a part without Content-Disposition": (
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode()
    ),
    "part headers that never end": (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=img\r\nX: ".encode() + b"y" * 100_000
    ),
    "truncated after the img part": multipart(("meta", b"{}"), ("img", random_image(5000)))[:-30],
    "no boundary at all": os.urandom(10_000),
    "garbage before the first boundary only": b"preamble" * 100,
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_malformed_multipart_is_400_and_leaves_nothing(server: RunningServer, case: str) -> None:
    status, answer = post_multipart(server, BAD_BODIES[case])
    assert assert_error_body(status, answer, (400,))["status"] == "INVALID_ARGUMENT"
    assert wait_for_no_staging(server) == []
    assert_invariants(server)


def test_metadata_over_64_kib_is_413(server: RunningServer) -> None:
    meta = json.dumps({"k": "v" * (64 * 1024)}).encode()
    status, answer = post_multipart(server, multipart(("meta", meta), ("img", b"abc")))
    assert assert_error_body(status, answer, (413,))["status"] == "RESOURCE_EXHAUSTED"
    assert wait_for_no_staging(server) == []
    assert_invariants(server)


# -- headers -----------------------------------------------------------------------------


def test_headers_within_the_limit_are_served(server: RunningServer) -> None:
    request = request_bytes(server, "GET", b"/healthz", **{"X-Padding": "a" * 60_000})
    status, _headers, _body = exchange(server, request)
    assert status == 200


@pytest.mark.parametrize("size", [70_000, 300_000])
def test_headers_over_the_limit_are_a_json_431(server: RunningServer, size: int) -> None:
    padding = {f"X-Padding-{i}": "a" * 5000 for i in range(size // 5000)}
    status, headers, body = exchange(server, request_bytes(server, "GET", b"/healthz", **padding))
    assert assert_error_body(status, body, (431,))["status"] == "RESOURCE_EXHAUSTED"
    assert headers.get("connection") == "close"
    with server.client() as http:
        assert http.get("/healthz").status_code == 200


def test_headers_over_granians_buffer_are_refused(server: RunningServer) -> None:
    """Past Granian's read buffer (about 408 KiB) Granian may answer 431 itself, with an
    empty body, before the app sees the request; either way the request is refused."""
    padding = {f"X-Padding-{i}": "a" * 8000 for i in range(64)}
    status, _headers, _body = exchange(server, request_bytes(server, "GET", b"/healthz", **padding))
    assert status == 431
    with server.client() as http:
        assert http.get("/healthz").status_code == 200


MAX_HEADER_FIELDS = 100
"""Granian's HTTP/1 parser refuses a request with more header fields (docs/api.md)."""


def fields_request(server: RunningServer, count: int) -> bytes:
    """A GET of ``/healthz`` with exactly ``count`` header fields."""
    request = request_bytes(server, "GET", b"/healthz")
    fixed = request.count(b"\r\n") - 2  # the request line and the empty line end
    padding = "".join(f"X-Field-{i}: {i}\r\n" for i in range(count - fixed)).encode()
    return request.removesuffix(b"\r\n") + padding + b"\r\n"


def test_header_fields_up_to_the_limit_are_served(server: RunningServer) -> None:
    status, _headers, _body = exchange(server, fields_request(server, MAX_HEADER_FIELDS))
    assert status == 200


def test_more_header_fields_get_granians_empty_431(server: RunningServer) -> None:
    """Refused before the app sees the request: no JSON, as docs/api.md says."""
    status, headers, body = exchange(server, fields_request(server, MAX_HEADER_FIELDS + 1))
    assert (status, body) == (431, b"")
    assert headers.get("connection") == "close"
    with server.client() as http:
        assert http.get("/healthz").status_code == 200


# -- transfer codings ----------------------------------------------------------------------


def chunked_post(server: RunningServer, target: bytes, body: bytes, *codings: str) -> bytes:
    """A POST whose body is sent in chunks, with one Transfer-Encoding line per coding."""
    lines = [
        f"Host: 127.0.0.1:{server.port}",
        "Connection: close",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        *(f"Transfer-Encoding: {coding}" for coding in codings),
    ]
    head = f"POST {target.decode()} HTTP/1.1\r\n" + "".join(f"{x}\r\n" for x in lines)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
        for i in range(0, len(body), 1000)
    )
    return head.encode() + b"\r\n" + chunks + b"0\r\n\r\n"


UNDECODED_CODINGS = {
    "gzip, chunked": ("gzip, chunked",),
    "gzip line, chunked line": ("gzip", "chunked"),
    "deflate, chunked": ("deflate, chunked",),
    "identity, chunked": ("identity, chunked",),
    "unknown, chunked": ("x-cloudimg, chunked",),
}


@pytest.mark.parametrize("case", sorted(UNDECODED_CODINGS))
def test_a_transfer_coding_the_server_does_not_decode_is_501(
    server: RunningServer, case: str
) -> None:
    """Granian strips ``chunked`` and hands the rest on undecoded: storing it would store
    bytes the client did not mean (RFC 9112 section 6.1: 501)."""
    body = multipart(("meta", b'{"os":"plain"}'), ("img", random_image(3000)))
    target = b"/reg/codings/img/" + case.replace(" ", "").replace(",", "-").encode()[:60]
    request = chunked_post(server, target, body, *UNDECODED_CODINGS[case])
    status, headers, answer = exchange(server, request)
    error = assert_error_body(status, answer, (501,))
    assert error["status"] == "UNIMPLEMENTED"
    assert "chunked" not in error["context"]["transfer_codings"]
    assert headers.get("connection") == "close"
    with server.client() as http:
        assert http.get("/reg/codings").status_code == 404
    assert wait_for_no_staging(server) == []
    assert_invariants(server)


def test_a_transfer_coding_is_refused_on_any_request(server: RunningServer) -> None:
    request = request_bytes(server, "GET", b"/healthz").replace(
        b"Content-Length: 0", b"Transfer-Encoding: gzip, chunked"
    )
    status, _headers, answer = exchange(server, request + b"0\r\n\r\n")
    assert assert_error_body(status, answer, (501,))["status"] == "UNIMPLEMENTED"


def test_chunked_in_any_case_is_decoded_and_stored(server: RunningServer) -> None:
    image = random_image(5000)
    body = multipart(("meta", b'{"os":"chunked"}'), ("img", image))
    status, _headers, answer = exchange(
        server, chunked_post(server, b"/reg/codings/img/upper", body, "Chunked")
    )
    assert status == 201, answer
    with server.client() as http:
        assert http.get("/reg/codings/img/upper").content == image
        assert http.delete("/reg/codings/img/upper").status_code == 200


def test_a_final_coding_other_than_chunked_is_granians_400(server: RunningServer) -> None:
    """Without a final ``chunked`` the body has no length: Granian refuses it itself."""
    request = request_bytes(server, "POST", b"/reg/codings/img/v1", b"abc").replace(
        b"Content-Length: 3", b"Transfer-Encoding: gzip"
    )
    status, _headers, _answer = exchange(server, request)
    assert status == 400
    with server.client() as http:
        assert http.get("/reg/codings").status_code == 404


# -- schemathesis -------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("schemathesis") is None,
    reason="schemathesis is not installed (pip install -e '.[test]')",
)
@pytest.mark.parametrize("document", ["openapi.json", "openapi-3.1.json"])
def test_schemathesis_finds_no_5xx_and_no_response_off_the_schema(
    server_factory: Callable[..., RunningServer], tmp_path: Path, document: str
) -> None:
    """Every operation of /docs/``document``, a few examples each, with a fixed derivation.

    Checks: no 5xx, every status documented, content types and bodies as documented; in
    both documents, the 3.0.3 one qlkube reads and Litestar's 3.1.0 one (docs/api.md).
    """
    running = server_factory()
    command = [
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run",
        f"{running.base_url}/docs/{document}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance",
        "--max-examples",
        "10",
        "--generation-deterministic",
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "all",
        "--workers",
        "1",
        "--report-dir",
        str(tmp_path / "schemathesis"),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
    assert running.process.poll() is None
    assert wait_for_no_staging(running) == []
    assert_invariants(running)
