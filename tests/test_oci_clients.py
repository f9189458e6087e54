"""Real registry clients against the OCI face: skopeo and podman from Debian (oras-py
from PyPI is in tests/test_oci_push.py; all three run the examples of docs/oci.md
here). Each skips with the reason when the client is
missing; .ci/run installs them.

The client's behaviour, not the catalog, is under test here: one backend is enough (the
protocol tests in tests/test_oci_pull.py run on both).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server, upload
from tests.oci_support import OCI_MANIFEST, disk_in_layer, tar_layer
from tests.support import random_image
from tests.test_deployment import fenced_blocks, section

pytestmark = pytest.mark.slow

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


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
            "--digestfile",
            str(tmp_path / compression),
            layout,
            target,
        )
        with server.client() as http:
            assert http.get(f"/reg/{repo}/copied-{compression}/v1").content == data
        # What skopeo pushed is kept: by tag and by the digest the push answered with.
        pushed = (tmp_path / compression).read_text().strip()
        by_digest = target.replace(":v1", f"@{pushed}")
        for ref in (target, by_digest):
            raw = _run(skopeo, "inspect", "--raw", "--tls-verify=false", ref)
            assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == pushed
            # Compressed as pushed (skopeo may reuse the gzip layer it pushed first).
            assert json.loads(raw)["layers"][0]["mediaType"].endswith(("+gzip", "+zstd"))
        _run(
            skopeo, "copy", "--src-tls-verify=false", by_digest, f"oci:{tmp_path / compression}-out"
        )


def test_the_examples_of_the_oci_docs_run(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """docs/oci.md "Examples": the shell block (skopeo, podman) and the oras-py block,
    against a server whose pushes need a write token."""
    for tool in ("skopeo", "podman", "jq"):
        _tool(tool)
    pytest.importorskip("oras.client", reason="oras-py is a test extra")
    token = "example-token-" + os.urandom(8).hex()
    secrets = tmp_path / "tokens"
    secrets.write_text(f"ci {token}\n")
    server = start_server(tmp_path / "data", "--write-token-file", str(secrets))
    request.addfinalizer(server.stop)
    disk = random_image(2 * 1024 * 1024 + 3)
    with server.client() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        assert upload(http, "/reg/vms/fedora/f40", disk).status_code == 201
    artifact = random_image(300_000)
    work = tmp_path / "work"
    work.mkdir()
    (work / "fedora.qcow2").write_bytes(artifact)
    here = f"127.0.0.1:{server.port}"
    blocks = fenced_blocks(section("oci.md", "Examples"))
    shell = "\n".join(body for lang, body in blocks if lang == "sh").replace("localhost:8080", here)
    python = next(body for lang, body in blocks if lang == "python").replace("localhost:8080", here)
    # podman as root, on storage of its own (vfs: no overlay in the sandbox), and its
    # credentials in a file of the test's.
    runroot = Path(tempfile.mkdtemp(prefix="podrun-"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{runroot}"\ngraphroot = "{tmp_path / "root"}"\n'
    )
    env = {
        **os.environ,
        "TOKEN": token,
        "CONTAINERS_STORAGE_CONF": str(conf),
        "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"),
    }
    if os.geteuid() != 0:
        pytest.skip("podman runs as root in the test machine; this user is not root")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [line for line in done.stdout.splitlines() if line.startswith("sha256:")]
    assert len(digests) == 1, done.stdout  # what skopeo inspect | jq printed
    assert _oci_dir_disk(work / "fedora") == disk
    pushed = (work / "pushed.digest").read_text().strip()
    with server.client() as http:
        assert http.get("/reg/vms/fedora-copy/f40").content == disk
        kept = http.get(f"/v2/vms/fedora-copy/manifests/{pushed}")
        assert kept.status_code == 200
        layer = kept.json()["layers"][0]
        assert layer["mediaType"].endswith("gzip"), "the pushed (compressed) layer is kept"
    index = json.loads((work / "fedora-pushed" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == pushed
    ran = subprocess.run(
        [sys.executable, "-c", python],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    with server.client() as http:
        assert http.get("/reg/vms/fedora-artifact/f40").content == artifact


def _layout_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _multi_arch_layout(layout: Path, disks: dict[str, bytes]) -> bytes:
    """An ``oci:`` layout whose image is an index of one gzip containerDisk per arch;
    the index's bytes."""
    children = []
    for arch, disk in disks.items():
        layer = _layout_blob(layout, gzip.compress(tar_layer(disk), mtime=0))
        config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {}}).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **_layout_blob(layout, config)},
            "layers": [{"mediaType": OCI_LAYER + "+gzip", **layer}],
        }
        described = _layout_blob(layout, json.dumps(manifest).encode())
        platform = {"os": "linux", "architecture": arch}
        children.append({"mediaType": OCI_MANIFEST, **described, "platform": platform})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    top = {"mediaType": OCI_INDEX, **_layout_blob(layout, index.encode())}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return index.encode()


def test_skopeo_copies_a_multi_arch_index_in_and_out(
    server: RunningServer, tmp_path: Path, repo: str
) -> None:
    """``skopeo copy --multi-arch all`` of an index of containerDisks: /reg serves the
    linux/amd64 disk; the index and every child pull back by tag and by digest."""
    skopeo = _tool("skopeo")
    disks = {"amd64": random_image(400_000), "arm64": random_image(300_000)}
    index = _multi_arch_layout(tmp_path / "in", disks)
    target = f"docker://127.0.0.1:{server.port}/{repo}/multi:v1"
    copy = [skopeo, "copy", "--multi-arch", "all", "--preserve-digests"]
    _run(*copy, "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}", target)
    with server.client() as http:
        assert http.get(f"/reg/{repo}/multi/v1").content == disks["amd64"]
        assert http.get(f"/v2/{repo}/multi/manifests/v1").content == index
    _run(*copy, "--src-tls-verify=false", target, f"oci:{tmp_path / 'out'}")
    out = json.loads((tmp_path / "out" / "index.json").read_text())
    assert out["manifests"][0]["digest"] == "sha256:" + hashlib.sha256(index).hexdigest()
    for child in json.loads(index)["manifests"]:
        manifest = json.loads(_blob_in(tmp_path / "out", child["digest"]))
        for blob in (child, manifest["config"], manifest["layers"][0]):
            # Byte for byte what was pushed (the arm64 disk too, kept in its gzip tar).
            pulled = _blob_in(tmp_path / "out", str(blob["digest"]))
            assert pulled == _blob_in(tmp_path / "in", str(blob["digest"]))


def _blob_in(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
