"""An upload whose first MiB decides its refusal is answered at once: the server stops
reading the image, lingers (RFC 9112 section 9.6) and closes, and the client, still
sending, reads the 422 naming the rule. Bodies of 300 MiB, counted on the client's side:
before this change the server read on to the end (or 64 MiB of drain) first.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import images
from tests.conftest import RunningServer, upload
from tests.images import MIB
from tests.support import random_image
from tests.test_http_upload import State, assert_unchanged, state_of

pytestmark = images.needs_qemu_img

BODY = 300 * MIB
READ_AT_MOST = 40 * MIB
"""Well short of the body and of the 64 MiB a refused body used to be drained: the first
MiB, the socket buffers on both sides and the lingering close's 8 MiB."""
CURL = shutil.which("curl")


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture
def before(server: RunningServer, client: httpx.Client) -> State:
    return state_of(server, client)


def _hostile_body(tmp_path: Path) -> Path:
    """A qcow2 with a backing file (inside the test's directory), then zeros to 300 MiB."""
    path = tmp_path / "big.qcow2"
    path.write_bytes(images.qcow2_with_backing_file(tmp_path).read_bytes())
    with path.open("r+b") as f:
        f.truncate(BODY)
    return path


@pytest.mark.skipif(CURL is None, reason="curl not found")
def test_curl_upload_is_refused_after_its_first_mib(
    tmp_path: Path, server: RunningServer, client: httpx.Client, before: State
) -> None:
    body = _hostile_body(tmp_path)
    done = subprocess.run(
        [str(CURL), "-sS", "-T", str(body), "-o", str(tmp_path / "answer.json"),
         "-w", "%{http_code} %{size_upload}", f"{server.base_url}/reg/early/img/v1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    status, uploaded = done.stdout.split()
    assert status == "422", done.stderr
    assert int(uploaded) < READ_AT_MOST
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert answer["status"] == "IMAGE_REFUSED"
    assert answer["context"]["rule"] == "qcow2-backing-file"
    assert_unchanged(server, client, before)


def test_client_that_keeps_sending_reads_the_refusal(
    tmp_path: Path, server: RunningServer, client: httpx.Client, before: State
) -> None:
    """A client that does not watch for an early answer sends until the server closes;
    the 422 is in its receive buffer, not lost to a reset."""
    head = _hostile_body(tmp_path).read_bytes()[: 2 * MIB]
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(
            f"PUT /reg/early/img/v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {BODY}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        )
        sent = 0
        zeros = bytes(MIB)
        try:
            sock.sendall(head)
            sent = len(head)
            while sent < BODY:
                sock.sendall(zeros)
                sent += len(zeros)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert sent < READ_AT_MOST
    assert answer.startswith(b"HTTP/1.1 422 "), answer[:200]
    assert b'"rule":"qcow2-backing-file"' in answer
    assert_unchanged(server, client, before)


def test_multipart_upload_is_refused_after_its_first_mib(
    tmp_path: Path, server: RunningServer, client: httpx.Client, before: State
) -> None:
    image = _hostile_body(tmp_path)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="meta"\r\n\r\n{}\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="img"; filename="x"\r\n\r\n'
        with image.open("rb") as f:
            while chunk := f.read(MIB):
                sent += len(chunk)
                yield chunk
        yield b"\r\n--b--\r\n"

    try:
        response = client.post(
            "/reg/early/img/v3",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
    except httpx.HTTPError:
        pytest.fail(f"the refusal was lost after {sent} bytes")
    assert response.status_code == 422
    assert response.json()["context"]["rule"] == "qcow2-backing-file"
    assert sent < BODY
    assert_unchanged(server, client, before)


@pytest.mark.skipif(CURL is None, reason="curl not found")
def test_upload_to_an_immutable_tag_is_refused_before_its_body(
    tmp_path: Path, server: RunningServer, client: httpx.Client
) -> None:
    """The headers decide it (the tag's state): refused before any of the image is read,
    as a failed If-Match is."""
    assert upload(client, "/reg/early/img/frozen", random_image(4096)).status_code == 201
    assert client.put("/reg/early/img/frozen/immutable").status_code in (200, 204)
    before = state_of(server, client)
    body = tmp_path / "zeros.raw"
    with body.open("wb") as f:
        f.truncate(BODY)
    done = subprocess.run(
        [str(CURL), "-sS", "-T", str(body), "-o", str(tmp_path / "answer.json"),
         "-w", "%{http_code} %{size_upload}", f"{server.base_url}/reg/early/img/frozen"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    status, uploaded = done.stdout.split()
    assert status == "409", done.stderr
    assert int(uploaded) < READ_AT_MOST
    assert json.loads((tmp_path / "answer.json").read_text())["status"] == "TAG_IMMUTABLE"
    assert_unchanged(server, client, before)
