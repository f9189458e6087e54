"""A blocked image through a real server: every download answers 403 IMAGE_BLOCKED naming
the rule, /meta says why, an upload of the same bytes does not unblock, unblock does.

The block is made the operator's way, with ``cloudimg fsck --block-unsafe`` on the
server's data root while it serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, upload
from tests.images import MIB, needs_qemu_img, qcow2, qcow2_with_backing_file
from tests.maintenance_support import cli, legacy_put, open_test_catalog
from tests.support import assert_error, blake3_hex, sha256_hex

pytestmark = [needs_qemu_img, pytest.mark.slow]  # servers and CLI runs


def references(data: bytes, tag: str) -> list[str]:
    return [tag, f"blake3:{blake3_hex(data)}", f"sha256:{sha256_hex(data)}"]


def assert_refused(http: httpx.Client, path: str, rule: str, digest: str) -> None:
    """GET answers the JSON error naming the rule; HEAD the same status and no body."""
    body = assert_error(http.get(path), 403, "IMAGE_BLOCKED")
    assert rule in body["error"]
    assert body["context"]["rule"] == rule
    assert body["context"]["digest"] == f"blake3:{digest}"
    head = http.head(path)
    assert head.status_code == 403
    assert head.content == b""


def test_an_unsafe_image_stored_before_inspection_is_blocked(
    server_factory: Callable[..., RunningServer], tmp_path: Path, backend: str
) -> None:
    server = server_factory()
    (tmp_path / "made").mkdir()
    data = qcow2_with_backing_file(tmp_path / "made").read_bytes()

    async def fill() -> str:
        async with open_test_catalog(server.data_root, backend) as catalog:
            digest = await legacy_put(catalog, "repo/img/bad", data)
            await legacy_put(catalog, "other/img/pinned", data)
            return digest

    digest = asyncio.run(fill())
    with server.client() as http:
        assert http.get("/reg/repo/img/bad").content == data  # served until fsck blocks it
        cli("fsck", "--data-root", str(server.data_root), "--block-unsafe", check=1)
        for reference in references(data, "bad"):
            assert_refused(http, f"/reg/repo/img/{reference}", "qcow2-backing-file", digest)
        assert_refused(http, "/reg/other/img/pinned", "qcow2-backing-file", digest)
        assert http.get("/reg/repo/img").json()["data"] == ["bad"]  # still listed
        meta = http.get("/reg/repo/img/bad/meta")
        assert meta.status_code == 200
        assert meta.json()["blocked"]["rule"] == "qcow2-backing-file"
        assert meta.json()["blocked"]["since"]


def test_a_reupload_does_not_unblock_and_unblock_serves_again(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = server_factory()
    data = qcow2(tmp_path).read_bytes()  # 16 MiB virtual: safe for the server's policy
    root = str(server.data_root)
    with server.client() as http:
        assert upload(http, "/reg/repo/img/v1", data).status_code == 201
        assert http.get("/reg/repo/img/v1/meta").json()["blocked"] is None
        # The operator tightens the policy and blocks what breaks it.
        tight = ("--max-virtual-size", str(8 * MIB))
        cli("fsck", "--data-root", root, "--reinspect", "--block-unsafe", *tight, check=1)
        digest = blake3_hex(data)
        assert_refused(http, "/reg/repo/img/v1", "virtual-size-too-large", digest)

        # The same bytes again, under the tag and under a new one: accepted, still blocked.
        assert upload(http, "/reg/repo/img/v1", data).status_code == 201
        assert upload(http, "/reg/repo/img/v2", data).status_code == 201
        for reference in [*references(data, "v1"), "v2"]:
            assert_refused(http, f"/reg/repo/img/{reference}", "virtual-size-too-large", digest)

        done = cli("unblock", "--data-root", root, f"blake3:{digest}", check=0)
        assert "virtual-size-too-large" in done.stdout
        for reference in [*references(data, "v1"), "v2"]:
            assert http.get(f"/reg/repo/img/{reference}").content == data
            assert http.head(f"/reg/repo/img/{reference}").status_code == 200
        assert http.get("/reg/repo/img/v1/meta").json()["blocked"] is None
