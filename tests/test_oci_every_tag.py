"""One image, whichever way its tag was written: every tag pulls over ``/v2`` as a bootable
containerDisk whose disk is exactly the bytes ``/reg`` serves (docs/oci.md).

The tags are written by a multipart POST, a raw PUT, ``cloudimg push`` with and without
``--format``, a retag, a ``/v2`` disk-artifact push (and a ``/reg`` write of the same
bytes to another tag), and ``import-legacy``; each is copied out by tag with skopeo into
an ``oci:`` layout, on both catalog backends, and podman pulls the one ``cloudimg push``
wrote. A container image pushed to a tag still pulls as pushed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, upload, upload_raw
from tests.maintenance_support import cli
from tests.oci_support import (
    EMPTY,
    artifact_manifest,
    assert_pulls_as_containerdisk,
    disk_in_layer,
    push_blob,
    put_manifest,
    sha256_digest,
)
from tests.support import blake3_hex, random_image

pytestmark = pytest.mark.slow  # skopeo and podman runs

SIZE = 1024 * 1024 + 512


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def _skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo; .ci/run does)")
    return path


def _copied_out(server: RunningServer, ref: str, into: Path) -> tuple[bytes, dict[str, object]]:
    """skopeo copies ``ref`` by tag into an ``oci:`` layout: its disk and its config."""
    done = subprocess.run(
        [_skopeo(), "copy", "--src-tls-verify=false", f"docker://127.0.0.1:{server.port}/{ref}",
         f"oci:{into}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    index = json.loads((into / "index.json").read_text())
    blobs = into / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    (layer,) = manifest["layers"]
    return disk_in_layer((blobs / layer["digest"][7:]).read_bytes())[0], config


def _client(server: RunningServer, *args: str) -> None:
    env = {**os.environ, "CLOUDIMG_SERVER": server.base_url}
    done = subprocess.run(
        [sys.executable, "-m", "cloudimg", *args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _post(server: RunningServer, http: httpx.Client, tag: str, data: bytes, _: Path) -> None:
    assert upload(http, f"/reg/every/img/{tag}", data).status_code == 201


def _put(server: RunningServer, http: httpx.Client, tag: str, data: bytes, _: Path) -> None:
    assert upload_raw(http, f"/reg/every/img/{tag}", data).status_code == 201


def _push(server: RunningServer, http: httpx.Client, tag: str, data: bytes, tmp: Path) -> None:
    (tmp / "disk.raw").write_bytes(data)
    _client(server, "push", str(tmp / "disk.raw"), f"every/img:{tag}")


def _push_format(
    server: RunningServer, http: httpx.Client, tag: str, data: bytes, tmp: Path
) -> None:
    (tmp / "disk.raw").write_bytes(data)
    _client(server, "push", str(tmp / "disk.raw"), f"every/img:{tag}", "--format", "raw")


def _retag(server: RunningServer, http: httpx.Client, tag: str, data: bytes, _: Path) -> None:
    assert upload(http, f"/reg/every/img/{tag}-source", data).status_code == 201
    body = {"digest": f"blake3:{blake3_hex(data)}"}
    assert http.post(f"/reg/every/img/{tag}/retag", json=body).status_code == 201


def _artifact(server: RunningServer, http: httpx.Client, tag: str, data: bytes, _: Path) -> None:
    push_blob(http, "every/img", EMPTY)
    push_blob(http, "every/img", data, chunk=256 * 1024)
    manifest = artifact_manifest(data)
    assert put_manifest(http, "every/img", tag, manifest).status_code == 201
    # What the push answered stays pullable by that digest, as pushed.
    assert http.get(f"/v2/every/img/manifests/{sha256_digest(manifest)}").content == manifest


def _after_artifact(
    server: RunningServer, http: httpx.Client, tag: str, data: bytes, tmp: Path
) -> None:
    """A disk artifact pushed to one tag, then the same bytes uploaded to this one: the
    kept artifact belongs to its own tag, never to another naming the same bytes."""
    _artifact(server, http, f"{tag}-pushed", data, tmp)
    assert upload(http, f"/reg/every/img/{tag}", data).status_code == 201


def _import(server: RunningServer, http: httpx.Client, tag: str, data: bytes, tmp: Path) -> None:
    entry = tmp / "old" / "every" / "img" / tag
    entry.mkdir(parents=True)
    (entry / "image.bin").write_bytes(data)
    (entry / "meta.json").write_text("{}")
    cli("import-legacy", "--data-root", str(server.data_root), "--from", str(tmp / "old"), check=0)


WRITERS: dict[str, Callable[[RunningServer, httpx.Client, str, bytes, Path], None]] = {
    "post": _post,
    "put": _put,
    "push": _push,
    "push-format": _push_format,
    "retag": _retag,
    "v2-artifact": _artifact,
    "reg-after-artifact": _after_artifact,
    "import-legacy": _import,
}


@pytest.mark.parametrize("way", list(WRITERS))
def test_every_tag_pulls_as_a_bootable_containerdisk(
    server: RunningServer, client: httpx.Client, tmp_path: Path, way: str
) -> None:
    data = random_image(SIZE)
    tag = f"by-{way}"
    WRITERS[way](server, client, tag, data, tmp_path)
    assert client.get(f"/reg/every/img/{tag}").content == data
    assert_pulls_as_containerdisk(client, "every/img", tag, data)
    disk, config = _copied_out(server, f"every/img:{tag}", tmp_path / "out")
    assert disk == data
    assert {"architecture", "os", "rootfs"} <= set(config)


def test_podman_pulls_what_cloudimg_push_wrote(
    server: RunningServer, client: httpx.Client, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    podman = shutil.which("podman")
    if podman is None or os.geteuid() != 0:
        pytest.skip("podman runs as root here (apt-get install podman; .ci/run does)")
    data = random_image(SIZE)
    _push(server, client, "podman", data, tmp_path)
    runroot = Path(tempfile.mkdtemp(prefix="podrun-"))  # podman wants a short runroot
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    storage = ["--root", str(tmp_path / "root"), "--runroot", str(runroot)]
    storage += ["--storage-driver", "vfs"]
    ref = f"127.0.0.1:{server.port}/every/img:podman"
    for args in (["pull", "--tls-verify=false", ref],
                 ["save", "--format", "oci-dir", "-o", str(tmp_path / "saved"), ref]):  # fmt: skip
        done = subprocess.run([podman, *storage, *args], capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
    saved = tmp_path / "saved"
    index = json.loads((saved / "index.json").read_text())
    blobs = saved / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    (layer,) = manifest["layers"]
    assert disk_in_layer((blobs / layer["digest"][7:]).read_bytes())[0] == data
