"""What a ``/v2`` push keeps, on both catalog backends: a containerDisk's manifest,
config and compressed layer, an image index and its children, pullable by tag and by
every pushed digest while a tag or retained history entry holds the disk; freed with the
last reference (fsck, gc and the invariants agree); DELETE of manifests and blobs."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, upload
from tests.invariants import assert_invariants
from tests.maintenance_support import cli_json
from tests.oci_support import (
    DISK_TYPE,
    EMPTY,
    artifact_manifest,
    assert_oci_error,
    container_manifest,
    index_manifest,
    manifest_of,
    push_blob,
    put_manifest,
    sha256_digest,
    tar_layer,
)
from tests.support import blake3_hex, blob_path, random_image

GZIP_TAR = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def kept_server(
    server_factory: Callable[..., RunningServer],
) -> Iterator[tuple[RunningServer, httpx.Client]]:
    """A server that keeps no tag history: a moved tag lets its bytes go at once."""
    server = server_factory("--keep-history", "0")
    with server.client() as http:
        yield server, http


def _config(arch: str = "amd64") -> bytes:
    return json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers"}}).encode()


def _push_containerdisk(http: httpx.Client, name: str, tag: str, disk: bytes) -> dict[str, bytes]:
    """Push a gzip containerDisk of ``disk``; what was pushed, by part."""
    layer = gzip.compress(tar_layer(disk), mtime=0)
    config = _config()
    push_blob(http, name, config)
    push_blob(http, name, layer)
    manifest = container_manifest(layer, GZIP_TAR, config)
    response = put_manifest(http, name, tag, manifest)
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == sha256_digest(manifest)
    return {"manifest": manifest, "config": config, "layer": layer}


def _fsck_gc_clean(server: RunningServer) -> None:
    root = str(server.data_root)
    fsck = cli_json("fsck", "--data-root", root, "--inspect", check=0)
    assert fsck["problems"] == [], fsck
    gc = cli_json("gc", "--data-root", root, "--grace", "0s", check=0)
    assert not [a for a in gc["actions"] if a["kind"] in ("refcount", "orphan-blob")], gc
    assert_invariants(server)


def test_a_pushed_containerdisk_pulls_as_pushed_until_its_disk_goes(
    kept_server: tuple[RunningServer, httpx.Client],
) -> None:
    server, http = kept_server
    disk = random_image(300_000)
    pushed = _push_containerdisk(http, "vms/fedora", "f40", disk)
    digest = sha256_digest(pushed["manifest"])
    # /reg serves the unpacked disk; /v2 returns exactly what was pushed.
    assert http.get("/reg/vms/fedora/f40").content == disk
    assert manifest_of(http, "vms/fedora", "f40")[1] == digest
    assert http.get(f"/v2/vms/fedora/manifests/{digest}").content == pushed["manifest"]
    for part in ("config", "layer"):
        got = http.get(f"/v2/vms/fedora/blobs/{sha256_digest(pushed[part])}")
        assert got.content == pushed[part], part
    layer_file = blob_path(server.data_root, blake3_hex(pushed["layer"]))
    assert layer_file.exists(), "the compressed layer is a blob of the store"
    # Kept layers are not VM images: /reg cannot name one, fsck does not inspect them,
    # du counts them.
    for part in ("layer", "config"):
        retag = http.post(
            "/reg/vms/fedora/sneaky/retag", json={"digest": sha256_digest(pushed[part])}
        )
        assert retag.status_code == 404, retag.text
    _fsck_gc_clean(server)
    du = cli_json("du", "--data-root", str(server.data_root), check=0)
    assert du["oci_kept_blobs"] == 2  # the layer and the config
    assert du["oci_kept_bytes"] == len(pushed["layer"]) + len(pushed["config"])
    # A /reg upload moves the tag: it pulls as the generated containerDisk of the new
    # bytes; with no history kept, the pushed manifest and its blobs go at once.
    assert upload(http, "/reg/vms/fedora/f40", random_image(5000)).status_code == 201
    generated, new_digest = manifest_of(http, "vms/fedora", "f40")
    assert new_digest != digest
    assert generated["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert_oci_error(http.get(f"/v2/vms/fedora/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")
    missing = http.get(f"/v2/vms/fedora/blobs/{sha256_digest(pushed['layer'])}")
    assert_oci_error(missing, 404, "BLOB_UNKNOWN")
    assert not layer_file.exists()
    _fsck_gc_clean(server)


def test_history_keeps_the_pushed_manifest_reachable_by_digest(
    client: httpx.Client, server: RunningServer, repo: str
) -> None:
    name = f"{repo}/hist"
    pushed = _push_containerdisk(client, name, "v1", random_image(100_000))
    digest = sha256_digest(pushed["manifest"])
    assert upload(client, f"/reg/{repo}/hist/v1", random_image(4000)).status_code == 201
    # The tag moved (generated manifest); history retains the pushed disk, and with it
    # the pushed manifest, config and layer, by digest.
    assert manifest_of(client, name, "v1")[1] != digest
    assert client.get(f"/v2/{name}/manifests/{digest}").content == pushed["manifest"]
    layer = client.get(f"/v2/{name}/blobs/{sha256_digest(pushed['layer'])}")
    assert layer.content == pushed["layer"]
    assert_invariants(server)


def test_an_index_and_its_children_are_kept(
    kept_server: tuple[RunningServer, httpx.Client],
) -> None:
    server, http = kept_server
    name = "vms/multi"
    amd64 = random_image(200_000)
    arm64 = random_image(150_000)
    # The amd64 child is a containerDisk, the arm64 child a disk artifact.
    amd = _push_containerdisk_child(http, name, amd64)
    push_blob(http, name, EMPTY)
    push_blob(http, name, arm64)
    arm = artifact_manifest(arm64)
    assert put_manifest(http, name, sha256_digest(arm), arm).status_code == 201
    index = index_manifest(
        {sha256_digest(amd["manifest"]): ("linux", "amd64"), sha256_digest(arm): ("linux", "arm64")}
    )
    response = http.put(
        f"/v2/{name}/manifests/v1", content=index, headers={"Content-Type": INDEX_TYPE}
    )
    assert response.status_code == 201, response.text
    assert http.get("/reg/vms/multi/v1").content == amd64
    got = http.get(f"/v2/{name}/manifests/v1")
    assert got.content == index
    assert got.headers["content-type"].startswith(INDEX_TYPE)
    assert http.get(f"/v2/{name}/manifests/{sha256_digest(index)}").content == index
    for child in (amd["manifest"], arm):
        assert http.get(f"/v2/{name}/manifests/{sha256_digest(child)}").content == child
    for blob in (amd["layer"], amd["config"], arm64, EMPTY):
        assert http.get(f"/v2/{name}/blobs/{sha256_digest(blob)}").content == blob
    # The arm64 disk is kept as pushed (inspected, as every child's), not as an image of /reg.
    _fsck_gc_clean(server)
    assert http.delete("/reg/vms/multi/v1").status_code in (200, 204)
    for child in (index, amd["manifest"], arm):
        gone = http.get(f"/v2/{name}/manifests/{sha256_digest(child)}")
        assert_oci_error(gone, 404, "MANIFEST_UNKNOWN")
    assert not blob_path(server.data_root, blake3_hex(arm64)).exists()
    assert not blob_path(server.data_root, blake3_hex(amd["layer"])).exists()
    _fsck_gc_clean(server)


def _push_containerdisk_child(
    http: httpx.Client, name: str, disk: bytes, arch: str = "amd64"
) -> dict[str, bytes]:
    layer = gzip.compress(tar_layer(disk), mtime=0)
    config = _config(arch)
    push_blob(http, name, config)
    push_blob(http, name, layer)
    manifest = container_manifest(layer, GZIP_TAR, config)
    assert put_manifest(http, name, sha256_digest(manifest), manifest).status_code == 201
    return {"manifest": manifest, "config": config, "layer": layer}


def test_delete_a_manifest_by_digest_deletes_the_tags_that_pull_it(
    client: httpx.Client, repo: str
) -> None:
    name = f"{repo}/del"
    disk = random_image(60_000)
    pushed = _push_containerdisk(client, name, "a1", disk)
    digest = sha256_digest(pushed["manifest"])
    assert put_manifest(client, name, "a2", pushed["manifest"]).status_code == 201
    other = random_image(3000)
    assert upload(client, f"/reg/{repo}/del/b1", other).status_code == 201
    assert client.delete(f"/v2/{name}/manifests/{digest}").status_code == 202
    for tag in ("a1", "a2"):
        assert_oci_error(client.get(f"/v2/{name}/manifests/{tag}"), 404, "MANIFEST_UNKNOWN")
        entries = client.get(f"/reg/{repo}/del/{tag}/history").json()["data"]
        assert entries[0]["action"] == "deleted"
    assert client.get(f"/reg/{repo}/del/b1").content == other
    # History retains the disk: the manifest still pulls by digest, and deleting it
    # again says why nothing more can go now.
    assert client.get(f"/v2/{name}/manifests/{digest}").content == pushed["manifest"]
    assert_oci_error(client.delete(f"/v2/{name}/manifests/{digest}"), 405, "UNSUPPORTED")
    unknown = f"sha256:{'5' * 64}"
    assert_oci_error(client.delete(f"/v2/{name}/manifests/{unknown}"), 404, "MANIFEST_UNKNOWN")


def test_delete_a_manifest_by_digest_with_an_immutable_tag_deletes_nothing(
    client: httpx.Client, repo: str
) -> None:
    name = f"{repo}/frozen"
    pushed = _push_containerdisk(client, name, "a1", random_image(20_000))
    digest = sha256_digest(pushed["manifest"])
    for tag in ("a2", "z9"):  # the immutable tag comes last in name order
        assert put_manifest(client, name, tag, pushed["manifest"]).status_code == 201
    assert client.put(f"/reg/{repo}/frozen/z9/immutable").status_code == 200
    by_tag = client.delete(f"/v2/{name}/manifests/z9")
    by_digest = client.delete(f"/v2/{name}/manifests/{digest}")
    assert_oci_error(by_tag, 409, "TAG_IMMUTABLE")
    assert (by_digest.status_code, by_digest.json()) == (by_tag.status_code, by_tag.json())
    for tag in ("a1", "a2", "z9"):
        assert client.get(f"/v2/{name}/manifests/{tag}").content == pushed["manifest"]
        entries = client.get(f"/reg/{repo}/frozen/{tag}/history").json()["data"]
        assert "deleted" not in [entry["action"] for entry in entries]


def test_delete_a_blob_only_when_no_manifest_refers_to_it(client: httpx.Client, repo: str) -> None:
    name = f"{repo}/blobdel"
    loose = os.urandom(5000)
    digest = push_blob(client, name, loose)
    assert client.head(f"/v2/{name}/blobs/{digest}").status_code == 200
    assert client.delete(f"/v2/{name}/blobs/{digest}").status_code == 202
    assert client.head(f"/v2/{name}/blobs/{digest}").status_code == 404
    assert_oci_error(client.delete(f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    pushed = _push_containerdisk(client, name, "v1", random_image(50_000))
    for part in ("layer", "config"):
        refused = client.delete(f"/v2/{name}/blobs/{sha256_digest(pushed[part])}")
        error = assert_oci_error(refused, 405, "UNSUPPORTED")
        assert "manifest" in error["message"]
        assert client.get(f"/v2/{name}/blobs/{sha256_digest(pushed[part])}").status_code == 200
    disk = random_image(7000)
    push_blob(client, name, EMPTY)
    push_blob(client, name, disk)
    assert put_manifest(client, name, "art", artifact_manifest(disk, DISK_TYPE)).status_code == 201
    assert_oci_error(client.delete(f"/v2/{name}/blobs/{sha256_digest(disk)}"), 405, "UNSUPPORTED")
    assert client.get(f"/reg/{repo}/blobdel/art").content == disk


@pytest.mark.slow
def test_gc_looping_while_pushes_are_kept_and_tags_move(
    server_factory: Callable[..., RunningServer],
) -> None:
    """gc runs again and again while containerDisks are pushed, re-uploaded over /reg,
    and deleted by digest (history keeps one previous digest): every reference count
    stays right, and what the last push sent still pulls as pushed."""
    server = server_factory("--keep-history", "1")
    stop = threading.Event()
    runs: list[dict[str, object]] = []

    def gc_loop() -> None:
        while not stop.is_set():
            runs.append(
                cli_json("gc", "--data-root", str(server.data_root), "--grace", "30s", check=0)
            )

    looping = threading.Thread(target=gc_loop)
    looping.start()
    try:
        with server.client() as http:
            for round_ in range(6):
                pushed = _push_containerdisk(http, "vms/churn", "v1", random_image(80_000))
                digest = sha256_digest(pushed["manifest"])
                assert http.get(f"/v2/vms/churn/manifests/{digest}").status_code == 200
                if round_ % 3 == 1:
                    assert http.delete(f"/v2/vms/churn/manifests/{digest}").status_code == 202
                elif round_ % 3 == 2:
                    moved = upload(http, "/reg/vms/churn/v1", random_image(3000))
                    assert moved.status_code == 201
            last = _push_containerdisk(http, "vms/churn", "v1", random_image(90_000))
    finally:
        stop.set()
        looping.join(timeout=300)
    assert runs, "gc never ran"
    with server.client() as http:
        assert http.get("/v2/vms/churn/manifests/v1").content == last["manifest"]
        layer = http.get(f"/v2/vms/churn/blobs/{sha256_digest(last['layer'])}")
        assert layer.content == last["layer"]
    _fsck_gc_clean(server)


def test_gc_drops_index_children_no_index_took(
    kept_server: tuple[RunningServer, httpx.Client],
) -> None:
    server, http = kept_server
    name = "vms/orphans"
    child = _push_containerdisk_child(http, name, random_image(40_000))
    digest = sha256_digest(child["manifest"])
    index = index_manifest({digest: ("linux", "amd64")})
    gc = cli_json("gc", "--data-root", str(server.data_root), "--grace", "0s", check=0)
    assert [a["kind"] for a in gc["actions"]].count("pushed-manifest") == 1, gc
    refused = http.put(
        f"/v2/{name}/manifests/v1", content=index, headers={"Content-Type": INDEX_TYPE}
    )
    assert_oci_error(refused, 400, "MANIFEST_BLOB_UNKNOWN")
    _fsck_gc_clean(server)


def test_an_index_missing_a_childs_blob_changes_nothing(client: httpx.Client, repo: str) -> None:
    name = f"{repo}/partial"
    amd = _push_containerdisk_child(client, name, random_image(30_000))
    arm = _push_containerdisk_child(client, name, random_image(20_000), "arm64")
    # The arm64 layer's upload is deleted (no manifest took it yet): the index cannot
    # be kept whole, so it is refused before the tag names anything.
    assert client.delete(f"/v2/{name}/blobs/{sha256_digest(arm['layer'])}").status_code == 202
    index = index_manifest(
        {
            sha256_digest(amd["manifest"]): ("linux", "amd64"),
            sha256_digest(arm["manifest"]): ("linux", "arm64"),
        }
    )
    refused = client.put(
        f"/v2/{name}/manifests/v1", content=index, headers={"Content-Type": INDEX_TYPE}
    )
    assert_oci_error(refused, 400, "MANIFEST_BLOB_UNKNOWN")
    assert client.get(f"/reg/{repo}/partial/v1").status_code == 404


def test_a_kept_index_stays_pullable_by_digest_while_history_retains_it(
    client: httpx.Client, server: RunningServer, repo: str
) -> None:
    name = f"{repo}/idxhist"
    child = _push_containerdisk_child(client, name, random_image(30_000))
    index = index_manifest({sha256_digest(child["manifest"]): ("linux", "amd64")})
    pushed = client.put(
        f"/v2/{name}/manifests/v1", content=index, headers={"Content-Type": INDEX_TYPE}
    )
    assert pushed.status_code == 201, pushed.text
    assert upload(client, f"/reg/{repo}/idxhist/v1", random_image(2000)).status_code == 201
    # The tag pulls as the generated containerDisk of the new bytes; the index, its
    # child and the child's blobs stay pullable by digest while history retains the disk.
    assert manifest_of(client, name, "v1")[1] != sha256_digest(index)
    assert client.get(f"/v2/{name}/manifests/{sha256_digest(index)}").content == index
    got = client.get(f"/v2/{name}/manifests/{sha256_digest(child['manifest'])}")
    assert got.content == child["manifest"]
    for part in ("layer", "config"):
        assert client.get(f"/v2/{name}/blobs/{sha256_digest(child[part])}").content == child[part]
    assert_invariants(server)


@pytest.mark.parametrize("packing", ["artifact", "containerdisk"])
def test_an_index_whose_arm64_disk_fails_inspection_is_refused(
    kept_server: tuple[RunningServer, httpx.Client], tmp_path: Path, packing: str
) -> None:
    """Every child's disk is served by digest (an arm64 node's CDI converts the arm64
    one), so each passes the inspection the tag's disk does: an arm64 qcow2 naming a
    backing file refuses the whole index, and nothing is stored."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img makes the qcow2 with a backing file (Debian: qemu-utils)")
    server, http = kept_server
    base, hostile_path = tmp_path / "base.raw", tmp_path / "arm64.qcow2"
    base.write_bytes(bytes(1024 * 1024))
    backed = ["-f", "qcow2", "-b", str(base), "-F", "raw", str(hostile_path), "64M"]
    subprocess.run(["qemu-img", "create", "-q", *backed], check=True, timeout=60)
    hostile = hostile_path.read_bytes()
    name = "vms/armed"
    amd = _push_containerdisk_child(http, name, random_image(50_000))
    if packing == "artifact":
        push_blob(http, name, EMPTY)
        push_blob(http, name, hostile)
        arm = artifact_manifest(hostile)
        assert put_manifest(http, name, sha256_digest(arm), arm).status_code == 201
    else:
        arm = _push_containerdisk_child(http, name, hostile, "arm64")["manifest"]
    index = index_manifest(
        {sha256_digest(amd["manifest"]): ("linux", "amd64"), sha256_digest(arm): ("linux", "arm64")}
    )
    refused = http.put(
        f"/v2/{name}/manifests/v1", content=index, headers={"Content-Type": INDEX_TYPE}
    )
    error = assert_oci_error(refused, 422, "MANIFEST_INVALID")
    assert error["detail"]["rule"] == "qcow2-backing-file", error
    assert http.get("/reg/vms/armed/v1").status_code == 404
    for reference in ("v1", sha256_digest(index), sha256_digest(arm)):
        gone = http.get(f"/v2/{name}/manifests/{reference}")
        assert_oci_error(gone, 404, "MANIFEST_UNKNOWN")
    assert server.blob_files() == []
    assert server.staging_files() == []
    _fsck_gc_clean(server)


@pytest.mark.parametrize("packing", ["artifact", "containerdisk"])
def test_fsck_inspects_and_blocks_every_kept_childs_disk(
    kept_server: tuple[RunningServer, httpx.Client], tmp_path: Path, packing: str
) -> None:
    """An index child's disk kept apart from the tag's (another architecture's) is judged
    by fsck as the tag's is: under a tighter policy (or one that refuses what an older
    version let in) it is reported, blocked, and a pull of it by digest is refused."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img makes the arm64 qcow2 (Debian: qemu-utils)")
    server, http = kept_server
    arm64_path = tmp_path / "arm64.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(arm64_path), "64M"],
                   check=True, timeout=60)  # fmt: skip
    arm64 = arm64_path.read_bytes()
    name = "vms/fleet"
    amd = _push_containerdisk_child(http, name, random_image(50_000))
    if packing == "artifact":
        push_blob(http, name, EMPTY)
        push_blob(http, name, arm64)
        arm, arm_layer = artifact_manifest(arm64), arm64
        assert put_manifest(http, name, sha256_digest(arm), arm).status_code == 201
    else:
        pushed = _push_containerdisk_child(http, name, arm64, "arm64")
        arm, arm_layer = pushed["manifest"], pushed["layer"]
    index = index_manifest(
        {sha256_digest(amd["manifest"]): ("linux", "amd64"), sha256_digest(arm): ("linux", "arm64")}
    )
    done = http.put(f"/v2/{name}/manifests/v1", content=index, headers={"Content-Type": INDEX_TYPE})
    assert done.status_code == 201, done.text
    root = str(server.data_root)
    tight = ("--max-virtual-size", "32M")
    report = cli_json("fsck", "--data-root", root, "--reinspect", "--block-unsafe", *tight, check=1)
    problems = [(p["digest"], p["rule"], p["blocked"]) for p in report["problems"]]
    assert problems == [(blake3_hex(arm_layer), "virtual-size-too-large", True)]
    assert http.get(f"/v2/{name}/blobs/{sha256_digest(arm_layer)}").status_code == 403
    assert http.get("/reg/vms/fleet/v1").status_code == 200  # the amd64 disk is fine
