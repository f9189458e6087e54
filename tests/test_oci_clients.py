"""Real registry clients against the OCI face: skopeo and podman from Debian (oras-py
from PyPI is in tests/test_oci_push.py). Each skips with the reason when the client is
missing; .ci/run installs them.

The client's behaviour, not the catalog, is under test here: one backend is enough (the
protocol tests in tests/test_oci_pull.py run on both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningServer, upload
from tests.oci_support import disk_in_layer
from tests.support import random_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {name}; .ci/run does)")
    return path


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def _oci_dir_disk(layout: Path) -> bytes:
    """The disk inside the single layer of the image in an ``oci:`` layout directory."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_bytes())
    (layer,) = manifest["layers"]
    data = (layout / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")).read_bytes()
    return disk_in_layer(data)[0]


def _inspect_digest(server: RunningServer, name: str) -> str:
    skopeo = _tool("skopeo")
    out = _run(skopeo, "inspect", "--tls-verify=false", f"docker://127.0.0.1:{server.port}/{name}")
    return str(json.loads(out)["Digest"])


def test_skopeo_copies_a_reg_image_out_as_a_containerdisk(
    server: RunningServer, tmp_path: Path, repo: str
) -> None:
    skopeo = _tool("skopeo")
    data = random_image(3 * 1024 * 1024 + 17)
    with server.client() as http:
        assert upload(http, f"/reg/{repo}/fedora/f40", data).status_code == 201
    source = f"docker://127.0.0.1:{server.port}/{repo}/fedora:f40"
    _run(skopeo, "copy", "--src-tls-verify=false", source, f"oci:{tmp_path / 'out'}")
    assert _oci_dir_disk(tmp_path / "out") == data


def test_skopeo_digest_is_stable_across_restart_and_reupload(
    server_factory: Callable[..., RunningServer],
) -> None:
    data = random_image(1024 * 1024)
    first = server_factory()
    with first.client() as http:
        assert upload(http, "/reg/vms/stable/v1", data).status_code == 201
    digest = _inspect_digest(first, "vms/stable:v1")
    first.stop()
    second = server_factory(data_root=first.data_root)
    assert _inspect_digest(second, "vms/stable:v1") == digest
    with second.client() as http:
        assert http.delete("/reg/vms/stable/v1").status_code == 200
        assert upload(http, "/reg/vms/stable/v1", data).status_code == 201
    assert _inspect_digest(second, "vms/stable:v1") == digest


def test_podman_pulls_a_reg_image(
    server: RunningServer, tmp_path: Path, repo: str, request: pytest.FixtureRequest
) -> None:
    podman = _tool("podman")
    if os.geteuid() != 0:
        pytest.skip("podman runs as root in the test machine; this user is not root")
    data = random_image(2 * 1024 * 1024)
    with server.client() as http:
        assert upload(http, f"/reg/{repo}/podpull/v1", data).status_code == 201
    # podman refuses a runroot path longer than 50 characters: a short temporary one.
    runroot = Path(tempfile.mkdtemp(prefix="podrun-"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    storage = ["--root", str(tmp_path / "root"), "--runroot", str(runroot)]
    storage += ["--storage-driver", "vfs"]
    ref = f"127.0.0.1:{server.port}/{repo}/podpull:v1"
    _run(podman, *storage, "pull", "--tls-verify=false", ref)
    _run(podman, *storage, "save", "--format", "oci-dir", "-o", str(tmp_path / "saved"), ref)
    assert _oci_dir_disk(tmp_path / "saved") == data


def test_skopeo_copies_a_containerdisk_in(server: RunningServer, tmp_path: Path, repo: str) -> None:
    """A containerDisk from another registry (here: an oci: directory skopeo made, with
    its layer gzip-compressed as skopeo writes it) pushed in; /reg serves the disk."""
    skopeo = _tool("skopeo")
    data = random_image(1024 * 1024 + 5)
    with server.client() as http:
        assert upload(http, f"/reg/{repo}/origin/v1", data).status_code == 201
    layout = f"oci:{tmp_path / 'layout'}"
    _run(
        skopeo,
        "copy",
        "--src-tls-verify=false",
        f"docker://127.0.0.1:{server.port}/{repo}/origin:v1",
        layout,
    )
    for compression in ("gzip", "zstd"):
        target = f"docker://127.0.0.1:{server.port}/{repo}/copied-{compression}:v1"
        _run(
            skopeo,
            "copy",
            "--dest-tls-verify=false",
            "--dest-compress",
            "--dest-compress-format",
            compression,
            layout,
            target,
        )
        with server.client() as http:
            assert http.get(f"/reg/{repo}/copied-{compression}/v1").content == data
