"""Uploads are inspected (docs/security.md, "Image safety"): real images over HTTP.

A real ``cloudimg serve`` on each catalog backend. An accepted image's format and virtual
size are in ``/meta`` and the catalog; a refused one answers 422 IMAGE_REFUSED naming
its rule and leaves nothing behind: no blob file, no staging file, no catalog row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudimg.images import RULES
from tests import images
from tests.conftest import RunningServer, start_server, upload
from tests.databases import catalog_database, query
from tests.images import ACCEPTED, MAGICS, MIB, NEEDS_TOOL, REFUSED
from tests.invariants import assert_invariants
from tests.maintenance_support import cli
from tests.support import assert_error, blake3_hex, blob_path
from tests.test_http_upload import State, assert_unchanged, state_of

pytestmark = images.needs_qemu_img

MAX_VIRTUAL_SIZE = 64 * MIB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[RunningServer]:
    """A server whose virtual size limit is small (a flag) and whose allowed formats are
    the defaults, spelled out in the variable."""
    root = tmp_path_factory.mktemp("server") / "data"
    with catalog_database(backend, root):
        env = {"CLOUDIMG_ALLOWED_FORMATS": "raw,qcow2,vmdk,vhd,vhdx,vdi,iso"}
        running = start_server(root, "--max-virtual-size", "64M", env=env)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture
def before(server: RunningServer, client: httpx.Client) -> State:
    assert server.staging_files() == []
    return state_of(server, client)


def upload_with_format(
    client: httpx.Client, path: str, data: bytes, part: str | None = None, **params: str
) -> httpx.Response:
    """Upload with a ``format`` form field (``part``) and query parameters (``params``)."""
    files: dict[str, tuple[str, bytes, str]] = {
        "meta": ("meta.json", json.dumps({"os": "test"}).encode(), "application/json"),
        "img": ("image.bin", data, "application/octet-stream"),
    }
    if part is not None:
        files["format"] = ("", part.encode(), "text/plain")
    return client.post(path, files=files, params=params)


def refused(response: httpx.Response, rule: str) -> dict[str, object]:
    body = assert_error(response, 422, "IMAGE_REFUSED")
    assert body["context"]["rule"] == rule, body
    return body


def _params(kinds: dict[str, object]) -> list[object]:
    return [pytest.param(name, marks=[NEEDS_TOOL[name]] if name in NEEDS_TOOL else [])
            for name in kinds]  # fmt: skip


@pytest.mark.parametrize("kind", _params(ACCEPTED))  # type: ignore[arg-type]
def test_accepted_image_shows_format_and_virtual_size(
    server: RunningServer, client: httpx.Client, repo: str, tmp_path: Path, kind: str
) -> None:
    accepted = ACCEPTED[kind]
    path = accepted.make(tmp_path)
    data = path.read_bytes()
    qemu_format = "raw" if accepted.format == "iso" else accepted.format
    virtual_size = images.qemu_virtual_size(path, qemu_format)
    response = upload_with_format(client, f"/reg/{repo}/img/v1", data, format=accepted.format)
    assert response.status_code == 201, response.text
    meta = client.get(f"/reg/{repo}/img/v1/meta").json()
    assert (meta["format"], meta["virtual_size"], meta["size"]) == (
        accepted.format,
        virtual_size,
        len(data),
    )
    assert meta["data"] == {"os": "test"}
    [(fmt, size, table, inspected)] = query(
        server.database_url,
        "SELECT format, virtual_size, partition_table, inspected_at FROM blobs WHERE digest = ?",
        blake3_hex(data),
    )
    assert (fmt, size, table) == (accepted.format, virtual_size, accepted.partition_table)
    assert inspected is not None
    assert client.get(f"/reg/{repo}/img/v1").content == data
    assert_invariants(server)


@pytest.mark.parametrize("kind", _params(REFUSED))  # type: ignore[arg-type]
def test_unsafe_image_is_refused_and_leaves_nothing(
    server: RunningServer,
    client: httpx.Client,
    repo: str,
    tmp_path: Path,
    before: State,
    kind: str,
) -> None:
    make, rule = REFUSED[kind]
    data = make(tmp_path).read_bytes()
    refused(upload(client, f"/reg/{repo}/img/v1", data), rule)
    assert_unchanged(server, client, before)
    rows = query(server.database_url, "SELECT 1 FROM blobs WHERE digest = ?", blake3_hex(data))
    assert rows == []


def test_refusal_keeps_the_tag_it_would_have_overwritten(
    server: RunningServer, client: httpx.Client, repo: str, tmp_path: Path
) -> None:
    good = images.qcow2(tmp_path).read_bytes()
    assert upload(client, f"/reg/{repo}/img/v1", good).status_code == 201
    bad = images.qcow2_with_backing_file(tmp_path).read_bytes()
    refused(upload(client, f"/reg/{repo}/img/v1", bad), "qcow2-backing-file")
    assert client.get(f"/reg/{repo}/img/v1").content == good
    assert_invariants(server)


def test_raw_declared_image_that_is_qcow2_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, tmp_path: Path, before: State
) -> None:
    data = images.qcow2(tmp_path).read_bytes()
    body = refused(upload_with_format(client, f"/reg/{repo}/img/v1", data, format="raw"),
                   "format-mismatch")  # fmt: skip
    assert body["context"] == {"rule": "format-mismatch", "format": "qcow2", "declared": "raw"}
    assert_unchanged(server, client, before)


def test_qcow2_declared_as_vmdk_in_the_form_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, tmp_path: Path, before: State
) -> None:
    data = images.qcow2(tmp_path).read_bytes()
    refused(upload_with_format(client, f"/reg/{repo}/img/v1", data, part="vmdk"),
            "format-mismatch")  # fmt: skip
    assert_unchanged(server, client, before)
    # The same field naming the right format (vhd for vpc works too) is accepted.
    response = upload_with_format(client, f"/reg/{repo}/img/v1", data, part="qcow2")
    assert response.status_code == 201, response.text
    vpc = images.create(tmp_path, "vpc", "4M").read_bytes()
    response = upload_with_format(client, f"/reg/{repo}/img/v2", vpc, part="vhd", format="vpc")
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("part", "params", "why"),
    [
        ("qcow2", {"format": "raw"}, "disagree"),
        (None, {"format": "floppy"}, "unknown image format"),
        ("floppy", {}, "unknown image format"),
        ("q" * 100, {}, "not an image format name"),
    ],
)
def test_bad_declared_format_is_400_and_stores_nothing(
    server: RunningServer,
    client: httpx.Client,
    repo: str,
    tmp_path: Path,
    before: State,
    part: str | None,
    params: dict[str, str],
    why: str,
) -> None:
    data = images.qcow2(tmp_path).read_bytes()
    body = assert_error(
        upload_with_format(client, f"/reg/{repo}/img/v1", data, part, **params),
        400,
        "INVALID_ARGUMENT",
    )
    assert why in body["error"]
    assert_unchanged(server, client, before)


def test_format_parameter_given_twice_is_400(
    server: RunningServer, client: httpx.Client, repo: str, before: State
) -> None:
    files = {"meta": ("m", b"{}", "application/json"), "img": ("i", b"raw bytes", "x/y")}
    response = client.post(f"/reg/{repo}/img/v1?format=raw&format=raw", files=files)
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert_unchanged(server, client, before)


def test_virtual_size_over_the_limit_is_refused(
    server: RunningServer, client: httpx.Client, repo: str, tmp_path: Path, before: State
) -> None:
    data = images.qcow2(tmp_path, size="65M").read_bytes()  # a few hundred KiB of file
    body = refused(upload(client, f"/reg/{repo}/img/v1", data), "virtual-size-too-large")
    assert body["context"]["limit"] == MAX_VIRTUAL_SIZE
    assert body["context"]["virtual_size"] == 65 * MIB
    assert_unchanged(server, client, before)
    at_limit = images.qcow2(tmp_path, size="64M").read_bytes()
    assert upload(client, f"/reg/{repo}/img/v1", at_limit).status_code == 201


def test_format_not_allowed_is_refused_in_every_worker(
    server_factory: Callable[..., RunningServer], repo: str, tmp_path: Path
) -> None:
    """--allowed-formats reaches worker processes (their settings come as JSON)."""
    running = server_factory("--workers", "2", "--allowed-formats", "raw,qcow2")
    data = images.create(tmp_path, "vdi", "4M").read_bytes()
    with running.client() as client:
        for _ in range(4):  # any worker may answer
            body = refused(upload(client, f"/reg/{repo}/img/v1", data), "format-not-allowed")
            assert body["context"]["allowed"] == ["qcow2", "raw"]
        assert upload(client, f"/reg/{repo}/img/v1", b"raw bytes").status_code == 201
    assert running.blob_files() == [blob_path(running.data_root, blake3_hex(b"raw bytes"))]
    assert running.staging_files() == []
    assert_invariants(running)


@pytest.mark.parametrize(
    ("flag", "value"), [("--allowed-formats", "raw,floppy"), ("--max-virtual-size", "lots")]
)
def test_bad_inspection_flag_is_refused_at_start(tmp_path: Path, flag: str, value: str) -> None:
    done = cli("serve", "--data-root", str(tmp_path), flag, value)
    assert done.returncode != 0
    assert flag in done.stderr


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    magic=st.sampled_from(MAGICS),
    body=st.binary(max_size=4096),
    padding=st.integers(min_value=0, max_value=256 * 1024),
)
def test_hostile_headers_over_http_are_201_or_422_and_422_stores_nothing(
    server: RunningServer,
    client: httpx.Client,
    repo: str,
    magic: tuple[int, bytes],
    body: bytes,
    padding: int,
) -> None:
    offset, marker = magic
    data = bytes(offset) + marker + body + bytes(padding)
    response = upload(client, f"/reg/{repo}/img/v1", data)
    if response.status_code == 201:
        assert client.get(f"/reg/{repo}/img/v1/meta").json()["format"] is not None
        return
    assert assert_error(response, 422, "IMAGE_REFUSED")["context"]["rule"] in RULES
    assert not blob_path(server.data_root, blake3_hex(data)).exists()
    rows = query(server.database_url, "SELECT 1 FROM blobs WHERE digest = ?", blake3_hex(data))
    assert rows == []
    assert server.staging_files() == []
