"""``cloudimg push`` checks what it can before it sends a byte of the image: the server's
inspection on the image's first MiB, the tag's immutability, the write token. Each
refusal is one line, exit 4, and the server's access log shows no upload of the image.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests import images
from tests.conftest import RunningServer, start_server, upload
from tests.support import random_image
from tests.test_client import client, failed, ok

MIB = 1024 * 1024
TOKEN = "preflight-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "tokens").write_text(f"ci {TOKEN}\n")
    running = start_server(
        tmp_path_factory.mktemp("preflight") / "data",
        "--write-token-file",
        str(secrets_dir / "tokens"),
    )
    yield running  # type: ignore[misc]
    running.stop()


def _image_sent(server: RunningServer, tag: str) -> bool:
    """Whether the access log shows bytes of an image sent (a PATCH, or an upload to
    the tag)."""
    return any(
        "PATCH" in line or (f"/{tag}" in line and ("PUT" in line or "POST" in line))
        for line in server.log().splitlines()
        if "/retag" not in line
    )


def _run_push(server: RunningServer, work: Path, data: bytes, ref: str, *args: str,
              token: str = TOKEN) -> object:  # fmt: skip
    (work / "disk.img").write_bytes(data)
    return client("push", "disk.img", ref, *args, server=server.base_url, cwd=work,
                  env={"CLOUDIMG_TOKEN": token})  # fmt: skip


@images.needs_qemu_img
@pytest.mark.parametrize("declared", [[], ["--format", "qcow2"]], ids=["resumable", "format"])
def test_an_image_the_server_would_refuse_is_not_sent(
    protected: RunningServer, tmp_path: Path, declared: list[str]
) -> None:
    hostile = images.qcow2_with_backing_file(tmp_path).read_bytes().ljust(2 * MIB, b"\0")
    tag = "backed-" + secrets.token_hex(3)
    done = _run_push(protected, tmp_path, hostile, f"team/safe:{tag}", *declared)
    line = failed(done, 4)  # type: ignore[arg-type]
    assert "not sent" in line
    assert "qcow2-backing-file" in line
    assert not _image_sent(protected, tag)
    with httpx.Client(base_url=protected.base_url) as http:
        assert http.get(f"/reg/team/safe/{tag}").status_code == 404


def test_an_empty_file_is_not_sent(protected: RunningServer, tmp_path: Path) -> None:
    done = _run_push(protected, tmp_path, b"", "team/safe:empty")
    assert "empty-image" in failed(done, 4)  # type: ignore[arg-type]


def test_a_push_to_an_immutable_tag_is_not_sent(protected: RunningServer, tmp_path: Path) -> None:
    tag = "frozen-" + secrets.token_hex(3)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=protected.base_url, headers=auth) as http:
        assert upload(http, f"/reg/team/frozen/{tag}", random_image(4096)).status_code == 201
        assert http.put(f"/reg/team/frozen/{tag}/immutable").status_code in (200, 204)
    before = protected.log().count("PATCH")
    done = _run_push(protected, tmp_path, random_image(3 * MIB), f"team/frozen:{tag}")
    assert "immutable" in failed(done, 4)  # type: ignore[arg-type]
    assert protected.log().count("PATCH") == before


def test_a_rejected_token_is_found_before_the_image_is_read(
    protected: RunningServer, tmp_path: Path
) -> None:
    tag = "tok-" + secrets.token_hex(3)
    done = _run_push(protected, tmp_path, random_image(3 * MIB), f"team/tok:{tag}",
                     "--format", "raw", token="not-" + TOKEN)  # fmt: skip
    assert "rejected" in failed(done, 4)  # type: ignore[arg-type]
    assert not _image_sent(protected, tag)


def test_a_good_push_still_goes_through(protected: RunningServer, tmp_path: Path) -> None:
    data = random_image(3 * MIB)
    ok(_run_push(protected, tmp_path, data, "team/good:v1"))  # type: ignore[arg-type]
    with httpx.Client(base_url=protected.base_url) as http:
        assert http.get("/reg/team/good/v1").content == data
