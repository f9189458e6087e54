"""Server-level behaviour: flags and their environment variables, prefixes, errors, OpenAPI."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import RunningServer, upload

OLD_OPERATION_IDS = {
    "GetRepos",
    "GetImages",
    "GetImageTags",
    "GetImage",
    "PostImage",
    "DeleteTag",
    "GetImageMeta",
    "ReadinessProbe",
}


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"success": True, "data": None}


def test_openapi_keeps_the_old_operation_ids(client: httpx.Client) -> None:
    document = client.get("/docs/openapi.json").json()
    ids = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert ids >= OLD_OPERATION_IDS


def test_unknown_path_is_a_json_404(client: httpx.Client) -> None:
    response = client.get("/nothing/here")
    assert response.status_code == 404
    assert response.json()["status"] == "NOT_FOUND"


def test_wrong_method_is_a_json_error(client: httpx.Client) -> None:
    response = client.patch("/reg/abc/def/v1")  # PUT is the raw upload
    assert response.status_code == 405
    assert response.json()["status"] == "INVALID_ARGUMENT"


def test_prefixes_move_the_api_but_not_healthz(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory("--www-prefix", "/mirror/", "--repo-prefix", "images")
    with running.client() as http:
        assert upload(http, "/mirror/images/repo/img/v1", b"bytes").status_code == 201
        assert http.get("/mirror/images").json()["data"] == ["repo"]
        assert http.get("/mirror/images/repo/img/v1").content == b"bytes"
        meta = http.get("/mirror/images/repo/img/v1/meta").json()
        assert meta["imagePath"] == "/mirror/images/repo/img/v1"
        assert http.get("/reg").status_code == 404
        assert http.get("/healthz").status_code == 200


def test_flags_come_from_the_environment(server_factory: Callable[..., RunningServer]) -> None:
    running = server_factory(env={"CLOUDIMG_REPO_PREFIX": "fromenv"})
    with running.client() as http:
        assert http.get("/fromenv").json() == {"success": True, "data": []}
        assert http.get("/reg").status_code == 404


def test_slow_headers_are_cut_off(server_factory: Callable[..., RunningServer]) -> None:
    running = server_factory("--read-header-timeout-secs", "1")
    with socket.create_connection(("127.0.0.1", running.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        # A bound on a hang, not a timing: a server that never cuts the headers off makes
        # this recv raise TimeoutError; one that does closes the connection (EOF).
        sock.settimeout(60)
        assert sock.recv(1024) == b""  # the server closed the connection


def test_bad_listener_addr_is_refused_before_starting(server: RunningServer) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cloudimg", "serve", "--listener-addr", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "host:port" in result.stderr


@pytest.mark.parametrize("path", ["/reg/AB", "/reg/ab", "/reg/abc/-x", "/reg/abc/def/v1/meta/x"])
def test_bad_names_in_listings(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (400, 404)
    assert response.json()["status"] in ("INVALID_ARGUMENT", "NOT_FOUND")


def test_openapi_describes_the_multipart_upload(client: httpx.Client) -> None:
    document = client.get("/docs/openapi.json").json()
    body = document["paths"]["/reg/{repo}/{image}/{tag}"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert set(schema["required"]) == {"meta", "img"}
    assert schema["properties"]["img"]["format"] == "binary"


def test_openapi_describes_the_raw_upload(client: httpx.Client) -> None:
    document = client.get("/docs/openapi.json").json()
    put = document["paths"]["/reg/{repo}/{image}/{tag}"]["put"]
    assert put["operationId"] == "PutImage"
    schema = put["requestBody"]["content"]["application/octet-stream"]["schema"]
    assert schema["format"] == "binary"
    [meta] = [p for p in put["parameters"] if p["name"] == "Cloudimg-Meta"]
    assert meta["in"] == "header"
    assert not meta["required"]
    assert {"format", "digest"} <= {p["name"] for p in put["parameters"] if p["in"] == "query"}
    assert {"201", "400", "412", "413", "422", "507"} <= set(put["responses"])


def test_openapi_describes_image_inspection(client: httpx.Client) -> None:
    """The format parameter and part, the 422 refusal, and /meta's format fields."""
    document = client.get("/docs/openapi.json").json()
    post = document["paths"]["/reg/{repo}/{image}/{tag}"]["post"]
    [parameter] = [p for p in post["parameters"] if p["name"] == "format"]
    assert parameter["in"] == "query"
    assert "qemu-img" in parameter["description"]
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "format" in schema["properties"]
    assert "IMAGE_REFUSED" in post["responses"]["422"]["description"]
    meta = document["paths"]["/reg/{repo}/{image}/{tag}/meta"]["get"]["responses"]["200"]
    ref = meta["content"]["application/json"]["schema"]["$ref"].rpartition("/")[2]
    properties = document["components"]["schemas"][ref]["properties"]
    assert {"format", "virtual_size", "digest", "size"} <= set(properties)
    assert "qemu-img -f" in properties["format"]["description"]


@pytest.mark.parametrize("document", ["openapi.json", "openapi-3.1.json"])
@pytest.mark.parametrize("method", ["post", "put"])
def test_openapi_describes_the_upload_query_as_the_upload_parses_it(
    client: httpx.Client, document: str, method: str
) -> None:
    """``digest`` repeats (an array, one ``digest=`` per value); ``format`` is one name.

    Both are described by hand (cloudimg.api.openapi.UPLOAD_QUERY): every name the
    document lists is one the upload takes, and its pattern is the digest parser's.
    """
    from cloudimg.digest import parse_digest
    from cloudimg.images import normalize_format

    operation = client.get(f"/docs/{document}").json()["paths"]["/reg/{repo}/{image}/{tag}"][method]
    query = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert set(query) == {"digest", "format"}
    digest, format_ = query["digest"], query["format"]
    assert not digest["required"]
    assert not format_["required"]
    assert (digest["style"], digest["explode"]) == ("form", True)
    assert digest["schema"]["type"] == "array"
    pattern = re.compile(digest["schema"]["items"]["pattern"])
    for text in ("blake3:" + "0" * 64, "sha256:" + "f" * 64):
        assert pattern.search(text)
        parse_digest(text)
    for text in ("md5:" + "0" * 32, "sha256:" + "0" * 63, "blake3:" + "A" * 64):
        assert not pattern.search(text)
        with pytest.raises(ValueError, match="digest"):
            parse_digest(text)
    assert format_["schema"]["type"] == "string"
    names = format_["schema"]["enum"]
    assert {"raw", "qcow2", "vmdk", "vhd", "vpc", "vhdx", "vdi", "iso"} <= set(names)
    assert all(normalize_format(name) for name in names)
    assert "qemu-img" in format_["description"]
