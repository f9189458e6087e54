"""Image safety over HTTP, judged by the real qemu-img: hostile images are refused on
``/reg`` and ``/v2`` (on both catalog backends) and change nothing; what is accepted,
downloaded, is what qemu-img opens; and qemu-img itself confirms each accepted upload.

Every file a hostile image names is ``marker.raw`` in the test's own directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudimg.images import Inspection
from tests import hostile_images as hostile
from tests import images
from tests.conftest import RunningServer, upload
from tests.hostile_images import stand_in_qemu_img
from tests.images import MIB
from tests.oci_support import (
    EMPTY,
    artifact_manifest,
    container_manifest,
    push_blob,
    put_manifest,
    tar_layer,
)
from tests.support import assert_error
from tests.test_http_upload import State, assert_unchanged, state_of

pytestmark = images.needs_qemu_img

_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}})


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture
def before(server: RunningServer, client: httpx.Client) -> State:
    return state_of(server, client)


def _hostile_params() -> list[object]:
    tools = hostile.HOSTILE_TOOLS
    return [pytest.param(n, marks=[tools[n]] if n in tools else []) for n in hostile.HOSTILE]


@pytest.mark.parametrize("kind", _hostile_params())
def test_hostile_upload_is_refused_and_changes_nothing(
    tmp_path: Path, server: RunningServer, client: httpx.Client, before: State, kind: str
) -> None:
    make, rule = hostile.HOSTILE[kind]
    data = make(tmp_path).read_bytes()
    response = upload(client, "/reg/hostile/img/v1", data)
    body = assert_error(response, 422, "IMAGE_REFUSED")
    assert body["context"]["rule"] == rule, body
    assert_unchanged(server, client, before)


@pytest.mark.parametrize("packing", ["artifact", "containerdisk"])
@pytest.mark.parametrize(
    "kind", ["descriptor-nul-padded", "kdmv-capacity-zero", "parallels-10t", "vmdk-parent-hint"]
)
def test_hostile_push_is_refused_and_tags_nothing(
    tmp_path: Path, client: httpx.Client, kind: str, packing: str
) -> None:
    make, rule = hostile.HOSTILE[kind]
    disk = make(tmp_path).read_bytes()
    name = f"hostile/{kind}-{packing}"
    if packing == "artifact":
        push_blob(client, name, EMPTY)
        push_blob(client, name, disk, chunk=4 * MIB)
        manifest = artifact_manifest(disk)
    else:
        layer = hostile.gzip_bytes(tar_layer(disk, "disk/disk.img"))
        push_blob(client, name, layer, chunk=4 * MIB)
        push_blob(client, name, _CONFIG.encode())
        manifest = container_manifest(layer, _LAYER_GZIP, _CONFIG.encode())
    response = put_manifest(client, name, "v1", manifest)
    assert 400 <= response.status_code < 500, response.text
    (error,) = response.json()["errors"]
    assert error["detail"]["rule"] == rule
    assert f"(rule {rule})" in error["message"]
    assert client.get(f"/v2/{name}/manifests/v1").status_code == 404
    assert client.get(f"/reg/{name}/v1").status_code == 404


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _downloaded(client: httpx.Client, path: str, into: Path) -> tuple[Path, Inspection]:
    meta = client.get(f"{path}/meta")
    assert meta.status_code == 200, meta.text
    view = meta.json()
    recorded = Inspection(view["format"], view["virtual_size"], None)
    target = into / "downloaded.img"
    with client.stream("GET", path) as response, target.open("wb") as out:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            out.write(chunk)
    return target, recorded


@pytest.mark.parametrize("kind", ["vhd-original-size", "vmdk", "qcow2", "odd-raw"])
def test_accepted_upload_downloads_as_qemu_img_sees_it(
    tmp_path: Path, client: httpx.Client, kind: str
) -> None:
    made = {
        "vhd-original-size": lambda: hostile.vhd_with_original_size(tmp_path, "64M", MIB),
        "vmdk": lambda: images.vmdk(tmp_path, "streamOptimized"),
        "qcow2": lambda: images.qcow2(tmp_path),
        "odd-raw": lambda: _written(tmp_path / "odd.raw", b"x" * 1000),
    }[kind]()
    path = f"/reg/accepted/img/{kind}"
    assert upload(client, path, made.read_bytes()).status_code == 201
    downloaded, recorded = _downloaded(client, path, tmp_path)
    hostile.assert_qemu_sees(downloaded, recorded, tmp_path)


def _path_with(folder: Path) -> dict[str, str]:
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_qemu_img_confirms_every_accepted_upload(tmp_path: Path, server_factory: object) -> None:
    folder = stand_in_qemu_img(tmp_path, lie=False)
    running = server_factory(env=_path_with(folder))  # type: ignore[operator]
    with running.client() as http:
        assert upload(http, "/reg/repo/img/v1", images.qcow2(tmp_path).read_bytes()).status_code
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 1, calls
    assert calls[0].startswith("info --output=json"), calls
    assert "/dev/fd/" in calls[0]


def test_upload_qemu_img_disagrees_with_is_refused(tmp_path: Path, server_factory: object) -> None:
    folder = stand_in_qemu_img(tmp_path, lie=True)
    running = server_factory(env=_path_with(folder))  # type: ignore[operator]
    with running.client() as http:
        before = state_of(running, http)
        response = upload(http, "/reg/repo/img/v1", images.qcow2(tmp_path).read_bytes())
        body = assert_error(response, 422, "IMAGE_REFUSED")
        assert body["context"]["rule"] == "qemu-img-disagrees"
        assert_unchanged(running, http, before)


def test_qemu_img_check_off_runs_no_qemu_img(tmp_path: Path, server_factory: object) -> None:
    folder = stand_in_qemu_img(tmp_path, lie=True)
    env = {**_path_with(folder), "CLOUDIMG_QEMU_IMG_CHECK": "off"}
    running = server_factory(env=env)  # type: ignore[operator]
    with running.client() as http:
        data = images.qcow2(tmp_path).read_bytes()
        assert upload(http, "/reg/repo/img/v1", data).status_code == 201
    assert not (tmp_path / "calls.log").exists()


def test_qemu_img_check_on_without_qemu_img_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudimg",
            "serve",
            "--data-root",
            str(tmp_path / "d"),
            "--listener-addr",
            "127.0.0.1:0",
            "--qemu-img-check",
            "on",
        ],
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--qemu-img-check" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_write_path_creates_a_tag_qemu_would_probe_as_dmg(
    tmp_path: Path, server: RunningServer, client: httpx.Client
) -> None:
    """qemu claims a file or URL named ``*.dmg`` as dmg whatever its bytes: no new tag ends
    so, whether written by POST, PUT, retag or a ``/v2`` push; ``v1.dmg2`` is fine."""
    data = images.qcow2(tmp_path).read_bytes()
    assert upload(client, "/reg/names/img/ok.dmg2", data).status_code == 201
    before = state_of(server, client)
    refusals = [
        upload(client, "/reg/names/img/v1.dmg", data),
        client.put(
            "/reg/names/img/v2.dmg",
            content=data,
            headers={"content-type": "application/octet-stream"},
        ),
        client.post(
            "/reg/names/img/v3.dmg/retag",
            json={"digest": f"sha256:{hashlib.sha256(data).hexdigest()}"},
        ),
    ]
    for response in refusals:
        body = assert_error(response, 400, "INVALID_ARGUMENT")
        assert ".dmg" in body["error"]
    push_blob(client, "names/img", EMPTY)
    push_blob(client, "names/img", data, chunk=4 * MIB)
    pushed = put_manifest(client, "names/img", "v4.dmg", artifact_manifest(data))
    assert 400 <= pushed.status_code < 500, pushed.text
    assert ".dmg" in pushed.text
    assert_unchanged(server, client, before)


def test_not_a_disk_upload_is_refused_and_changes_nothing(
    server: RunningServer, client: httpx.Client, before: State
) -> None:
    for data, rule in (
        (b"", "empty-image"),
        (Path(sys.executable).resolve().read_bytes(), "not-a-disk"),
    ):
        body = assert_error(upload(client, "/reg/notdisk/img/v1", data), 422, "IMAGE_REFUSED")
        assert body["context"]["rule"] == rule
    assert_unchanged(server, client, before)
