"""The OCI face, push side, over plain HTTP on both catalog backends: upload sessions
(chunks at offsets, out-of-order 416, offset, cancel, monolithic, mount), manifests for
disk artifacts and containerDisks, refusals in the spec's codes, resumption across a
restart; oras-py pushes with chunked uploads and pulls back by digest."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import RunningServer, upload
from tests.maintenance_support import cli_json
from tests.oci_support import (
    DISK_TYPE,
    EMPTY,
    LAYER_TYPES,
    artifact_manifest,
    assert_oci_error,
    assert_pulls_as_containerdisk,
    container_manifest,
    index_manifest,
    manifest_of,
    packed,
    push_blob,
    put_manifest,
    sha256_digest,
    start_upload,
    tar_entry,
    tar_layer,
    tar_of,
    zeros_layer,
)
from tests.support import blake3_hex, blob_path, random_image


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real (small) qcow2 image made by qemu-img, or a raw disk without it."""
    path = tmp_path_factory.mktemp("disk") / "disk.qcow2"
    try:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True, timeout=60
        )
    except FileNotFoundError:
        return random_image(256 * 1024)
    return path.read_bytes() + b""  # qcow2 files are small until written


def test_a_chunked_disk_artifact_push_is_the_reg_image(
    client: httpx.Client, server: RunningServer, repo: str, qcow2: bytes
) -> None:
    name = f"{repo}/artifact"
    qcow2 += os.urandom(4096)  # bytes no other test stored: one new blob expected
    push_blob(client, name, EMPTY)
    blobs_before = set(server.blob_files())
    push_blob(client, name, qcow2, chunk=50_000)
    # Not visible before a manifest takes it.
    assert client.get(f"/reg/{repo}/artifact/v1").status_code == 404
    body = artifact_manifest(qcow2)
    response = put_manifest(client, name, "v1", body)
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == sha256_digest(body)
    assert client.get(f"/reg/{repo}/artifact/v1").content == qcow2
    # One stored copy of the disk: the pushed layer became the blob (besides it, only
    # the pushed config, kept as pushed, may be new).
    new = set(server.blob_files()) - blobs_before
    disk_file = blob_path(server.data_root, blake3_hex(qcow2))
    assert disk_file in new
    assert new <= {disk_file, blob_path(server.data_root, blake3_hex(EMPTY))}
    assert (server.data_root / "blobs" / "blake3" / blake3_hex(qcow2)[:2]).is_dir()
    # By its digest the push pulls as it was pushed (the layer is the disk); by tag,
    # as every tag, the generated containerDisk of that disk: KubeVirt boots it.
    assert_pulls_as_containerdisk(client, name, "v1", qcow2)
    assert client.get(f"/v2/{name}/manifests/{sha256_digest(body)}").content == body
    assert client.get(f"/v2/{name}/blobs/{sha256_digest(qcow2)}").content == qcow2
    assert client.get(f"/v2/{name}/blobs/{sha256_digest(EMPTY)}").content == EMPTY


def test_upload_sessions_follow_the_protocol(client: httpx.Client, repo: str) -> None:
    name = f"{repo}/sessions"
    location = start_upload(client, name)
    first = client.patch(location, content=b"a" * 100, headers={"Content-Range": "0-99"})
    assert first.status_code == 202
    # Out of order: 416 with where the upload stands; nothing appended.
    skipped = client.patch(location, content=b"b" * 10, headers={"Content-Range": "200-209"})
    assert_oci_error(skipped, 416, "BLOB_UPLOAD_INVALID")
    assert skipped.headers["range"] == "0-99"
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == "0-99"
    # A chunk without Content-Range is streamed on; PUT may carry the last bytes.
    assert client.patch(location, content=b"c" * 50).status_code == 202
    data = b"a" * 100 + b"c" * 50 + b"d" * 7
    wrong = client.put(location, content=b"d" * 7, params={"digest": sha256_digest(b"x")})
    assert_oci_error(wrong, 400, "DIGEST_INVALID")
    assert_oci_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    location = start_upload(client, name)
    assert client.patch(location, content=data[:157]).status_code == 202
    assert client.put(location, params={"digest": sha256_digest(data)}).status_code == 201
    head = client.head(f"/v2/{name}/blobs/{sha256_digest(data)}")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(data))
    # Cancel.
    location = start_upload(client, name)
    assert client.delete(location).status_code == 204
    assert_oci_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(client.patch(location, content=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    # A session belongs to its repository.
    other = start_upload(client, f"{repo}/elsewhere")
    stolen = other.replace(f"{repo}/elsewhere", name)
    assert_oci_error(client.get(stolen), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_oci_error(client.get(f"/v2/{name}/blobs/uploads/nonsense"), 404, "BLOB_UPLOAD_UNKNOWN")


def test_monolithic_upload_and_mount(client: httpx.Client, repo: str, qcow2: bytes) -> None:
    name = f"{repo}/mono"
    digest = sha256_digest(qcow2)
    done = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=qcow2)
    assert done.status_code == 201, done.text
    assert done.headers["location"].endswith(digest)
    bad = client.post(
        f"/v2/{name}/blobs/uploads/", params={"digest": sha256_digest(b"")}, content=b"x"
    )
    assert_oci_error(bad, 400, "DIGEST_INVALID")
    # Mount into another repository: the bytes are there, no session is needed.
    mounted = client.post(
        f"/v2/{repo}/mounted/blobs/uploads/", params={"mount": digest, "from": name}
    )
    assert mounted.status_code == 201
    unknown = client.post(
        f"/v2/{repo}/mounted/blobs/uploads/", params={"mount": "sha256:" + "1" * 64, "from": name}
    )
    assert unknown.status_code == 202  # not held: an ordinary session starts
    push_blob(client, f"{repo}/mounted", EMPTY)
    assert (
        put_manifest(client, f"{repo}/mounted", "v1", artifact_manifest(qcow2)).status_code == 201
    )
    assert client.get(f"/reg/{repo}/mounted/v1").content == qcow2


@pytest.mark.parametrize("packing", ["tar", "gzip"])
def test_a_containerdisk_push_unpacks_the_disk(
    client: httpx.Client, repo: str, qcow2: bytes, packing: str
) -> None:
    name = f"{repo}/cd-{packing}"
    layer = tar_layer(qcow2)
    layer_type = "application/vnd.oci.image.layer.v1.tar"
    if packing == "gzip":
        layer, layer_type = gzip.compress(layer, mtime=0), layer_type + "+gzip"
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    push_blob(client, name, config)
    push_blob(client, name, layer)
    response = put_manifest(client, name, "v1", container_manifest(layer, layer_type, config))
    assert response.status_code == 201, response.text
    assert client.get(f"/reg/{repo}/cd-{packing}/v1").content == qcow2
    # The tag pulls as the generated containerDisk of the unpacked disk.
    # The tag pulls as what was pushed: the manifest, its config and its layer.
    pushed = container_manifest(layer, layer_type, config)
    _, digest = manifest_of(client, name, "v1")
    assert digest == sha256_digest(pushed)
    assert client.get(f"/v2/{name}/manifests/{digest}").content == pushed
    assert client.get(f"/v2/{name}/blobs/{sha256_digest(layer)}").content == layer
    assert client.get(f"/v2/{name}/blobs/{sha256_digest(config)}").content == config


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("two-layers", 400, "MANIFEST_INVALID"),
        ("no-disk-in-tar", 400, "MANIFEST_INVALID"),
        ("missing-layer", 400, "MANIFEST_BLOB_UNKNOWN"),
        ("not-json", 400, "MANIFEST_INVALID"),
        ("index-without-children", 400, "MANIFEST_BLOB_UNKNOWN"),
        ("not-a-disk", 422, "MANIFEST_INVALID"),
    ],
)
def test_what_is_not_a_vm_disk_is_refused(
    client: httpx.Client, repo: str, qcow2: bytes, case: str, status: int, code: str
) -> None:
    name = f"{repo}/refused"
    config = b'{"architecture":"amd64","os":"linux"}'
    push_blob(client, name, config)
    if case == "two-layers":
        layer = tar_layer(b"#!/bin/sh\n", "bin/app")
        push_blob(client, name, layer)
        manifest = json.loads(
            container_manifest(layer, "application/vnd.oci.image.layer.v1.tar", config)
        )
        manifest["layers"] *= 2
        body = json.dumps(manifest).encode()
    elif case == "no-disk-in-tar":
        layer = tar_layer(b"#!/bin/sh\n", "bin/app")
        push_blob(client, name, layer)
        body = container_manifest(layer, "application/vnd.oci.image.layer.v1.tar", config)
    elif case == "missing-layer":
        body = artifact_manifest(b"never uploaded")
    elif case == "not-json":
        body = b"{not json"
    elif case == "index-without-children":
        body = index_manifest({"sha256:" + "7" * 64: ("linux", "amd64")})
    else:  # a qcow2 whose backing file names a host path: inspection refuses it
        hostile = qcow2_with_backing(qcow2)
        push_blob(client, name, EMPTY)
        push_blob(client, name, hostile)
        body = artifact_manifest(hostile)
    assert_oci_error(put_manifest(client, name, "v1", body), status, code)
    assert client.get(f"/reg/{repo}/refused/v1").status_code == 404
    if case == "not-a-disk":  # the refused disk's upload is used up, and says so
        hostile_digest = json.loads(body)["layers"][0]["digest"]
        assert client.head(f"/v2/{name}/blobs/{hostile_digest}").status_code == 404


def qcow2_with_backing(qcow2: bytes) -> bytes:
    """A qcow2 header naming a backing file (a hostile image): built by hand."""
    import struct

    header = bytearray(qcow2[:4096].ljust(4096, b"\0"))
    backing = b"/etc/passwd"
    struct.pack_into(">QI", header, 8, 1024, len(backing))  # backing_file_offset, size
    header[1024 : 1024 + len(backing)] = backing
    return bytes(header) + qcow2[4096:]


def test_manifests_by_digest_or_of_bad_names_are_refused(client: httpx.Client, repo: str) -> None:
    body = artifact_manifest(b"x")
    assert_oci_error(
        put_manifest(client, f"{repo}/xx1", "sha256:" + "a" * 64, body), 400, "DIGEST_INVALID"
    )
    assert_oci_error(put_manifest(client, "ab/cde", "v1", body), 400, "NAME_INVALID")
    assert_oci_error(put_manifest(client, f"{repo}/xyz", "-bad", body), 400, "TAG_INVALID")
    assert_oci_error(client.post("/v2/a/b/c/blobs/uploads/"), 400, "NAME_INVALID")


def test_delete_a_manifest_by_tag(client: httpx.Client, repo: str) -> None:
    assert upload(client, f"/reg/{repo}/deleting/v1", random_image(1000)).status_code == 201
    assert client.delete(f"/v2/{repo}/deleting/manifests/v1").status_code == 202
    assert client.get(f"/reg/{repo}/deleting/v1").status_code == 404
    assert_oci_error(client.delete(f"/v2/{repo}/deleting/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert_oci_error(
        client.delete(f"/v2/{repo}/deleting/blobs/sha256:{'0' * 64}"), 404, "BLOB_UNKNOWN"
    )


def _raw_patch_then_drop(server: RunningServer, location: str, data: bytes, sent: int) -> None:
    """Send a PATCH announcing all of ``data``, send ``sent`` bytes of it, hang up."""
    path = urlsplit(location).path if location.startswith("http") else location
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + data[:sent])


@pytest.mark.slow
def test_a_push_resumes_after_a_dropped_connection_and_a_restart(
    server_factory: Callable[..., RunningServer], qcow2: bytes
) -> None:
    data = qcow2 + os.urandom(3 * 1024 * 1024)
    first = server_factory()
    with first.client() as http:
        location = start_upload(http, "vms/resumed")
        half = len(data) // 2
        assert (
            http.patch(
                location, content=data[:half], headers={"Content-Range": f"0-{half - 1}"}
            ).status_code
            == 202
        )
    # A second chunk dies half-way: what arrived of it is not counted.
    _raw_patch_then_drop(first, location, data[half:], 1000)
    first.stop()
    second = server_factory(data_root=first.data_root)
    with second.client() as http:
        status = http.get(location)
        assert status.status_code == 204
        assert status.headers["range"] == f"0-{half - 1}"
        rest = http.patch(
            location, content=data[half:], headers={"Content-Range": f"{half}-{len(data) - 1}"}
        )
        assert rest.status_code == 202
        assert (
            http.put(rest.headers["location"], params={"digest": sha256_digest(data)}).status_code
            == 201
        )
        push_blob(http, "vms/resumed", EMPTY)
        assert (
            put_manifest(
                http, "vms/resumed", "v1", artifact_manifest(data, "application/octet-stream")
            ).status_code
            == 201
        )
        assert http.get("/reg/vms/resumed/v1").content == data


@pytest.mark.slow
def test_gc_reclaims_abandoned_sessions(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory()
    with server.client() as http:
        location = start_upload(http, "vms/abandoned")
        assert http.patch(location, content=b"z" * 1000).status_code == 202
    server.stop()
    report = cli_json("gc", "--data-root", str(server.data_root), "--grace", "0s", check=0)
    kinds = [action["kind"] for action in report["actions"]]
    assert "staging" in kinds, report
    assert "upload-session" in kinds, report
    assert server.staging_files() == []
    again = server_factory(data_root=server.data_root)
    with again.client() as http:
        assert_oci_error(http.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.slow
def test_oras_pushes_chunked_and_pulls_by_digest(
    server: RunningServer, tmp_path: Path, repo: str, qcow2: bytes
) -> None:
    oras_client = pytest.importorskip("oras.client", reason="oras-py is a test extra")
    qcow2 += os.urandom(64 * 1024)  # bytes no other test stored: one new blob expected
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(qcow2)
    blobs_before = set(server.blob_files())
    client = oras_client.OrasClient(hostname=f"127.0.0.1:{server.port}", insecure=True)
    target = f"127.0.0.1:{server.port}/{repo}/oras"
    os.chdir(tmp_path)
    pushed = client.push(
        target=f"{target}:v1",
        files=[f"disk.qcow2:{DISK_TYPE}"],
        do_chunked=True,
        chunk_size=64 * 1024,
    )
    assert pushed.status_code == 201
    digest = pushed.headers["docker-content-digest"]
    new = set(server.blob_files()) - blobs_before
    disk_file = blob_path(server.data_root, blake3_hex(qcow2))
    # The pushed layer is stored once, as the disk; besides it only oras's config.
    assert disk_file in new
    assert len(new) <= 2, new
    out = tmp_path / "pulled"
    files = client.pull(target=f"{target}@{digest}", outdir=str(out))
    assert [Path(f).read_bytes() for f in files] == [qcow2]
    with server.client() as http:
        assert http.get(f"/reg/{repo}/oras/v1").content == qcow2


@pytest.mark.slow
def test_gc_looping_while_sessions_upload_takes_only_idle_ones(
    server_factory: Callable[..., RunningServer],
) -> None:
    """gc with a 2 s grace runs again and again while two sessions receive chunks: the
    sessions that keep moving finish with the right bytes; one left idle is reclaimed."""
    server = server_factory()
    stop = threading.Event()
    runs: list[dict[str, object]] = []

    def gc_loop() -> None:
        while not stop.is_set():
            runs.append(
                cli_json("gc", "--data-root", str(server.data_root), "--grace", "2s", check=0)
            )

    def push(name: str, data: bytes) -> None:
        with server.client() as http:
            push_blob(http, name, data, chunk=32 * 1024)

    looping = threading.Thread(target=gc_loop)
    looping.start()
    try:
        with server.client() as http:
            idle = start_upload(http, "vms/idle")
            assert http.patch(idle, content=b"i" * 100).status_code == 202
        datas = [random_image(600 * 1024), random_image(700 * 1024)]
        pushers = [
            threading.Thread(target=push, args=(f"vms/busy{i}", data))
            for i, data in enumerate(datas)
        ]
        for thread in pushers:
            thread.start()
        for thread in pushers:
            thread.join(timeout=300)
        with server.client() as http:
            for i, data in enumerate(datas):
                head = http.head(f"/v2/vms/busy{i}/blobs/{sha256_digest(data)}")
                assert head.status_code == 200
                assert http.get(f"/v2/vms/busy{i}/blobs/{sha256_digest(data)}").content == data
            deadline = time.monotonic() + 60
            while http.get(idle).status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert_oci_error(http.get(idle), 404, "BLOB_UPLOAD_UNKNOWN")
    finally:
        stop.set()
        looping.join(timeout=300)
    assert runs, "gc never ran"


def test_racing_chunks_at_one_offset_append_once(client: httpx.Client, repo: str) -> None:
    """Two clients send a chunk for the same offset at once: the session's lock lets one
    in; the other finds the offset moved (416) and changes nothing."""
    name = f"{repo}/racing"
    location = start_upload(client, name)
    chunks = [random_image(2 * 1024 * 1024), random_image(2 * 1024 * 1024)]
    answers: list[tuple[int, bytes]] = []

    def send(chunk: bytes) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as http:
            response = http.patch(
                location, content=chunk, headers={"Content-Range": f"0-{len(chunk) - 1}"}
            )
            answers.append((response.status_code, chunk))

    threads = [threading.Thread(target=send, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(status for status, _ in answers) == [202, 416]
    (winner,) = [chunk for status, chunk in answers if status == 202]
    assert client.get(location).headers["range"] == f"0-{len(winner) - 1}"
    done = client.put(location, params={"digest": sha256_digest(winner)})
    assert done.status_code == 201, done.text
    assert client.get(f"/v2/{name}/blobs/{sha256_digest(winner)}").content == winner


def test_an_index_tag_names_the_disk_of_its_linux_amd64_child(
    client: httpx.Client, repo: str, qcow2: bytes
) -> None:
    name = f"{repo}/multiarch"
    disks = {"amd64": qcow2 + os.urandom(4096), "arm64": qcow2 + os.urandom(4096)}
    push_blob(client, name, EMPTY)
    children: dict[str, tuple[str, str]] = {}
    for arch, disk in disks.items():
        push_blob(client, name, disk)
        child = artifact_manifest(disk)
        pushed = put_manifest(client, name, sha256_digest(child), child)
        assert pushed.status_code == 201, pushed.text
        children[sha256_digest(child)] = ("linux", arch)
    # Children alone are not visible anywhere.
    assert client.get(f"/reg/{repo}/multiarch").status_code == 404
    index = index_manifest(children)
    response = client.put(
        f"/v2/{name}/manifests/v1",
        content=index,
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == sha256_digest(index)
    assert client.get(f"/reg/{repo}/multiarch/v1").content == disks["amd64"]
    two_arm = index_manifest({digest: ("linux", "arm64") for digest in children})
    refused = client.put(
        f"/v2/{name}/manifests/v2",
        content=two_arm,
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert_oci_error(refused, 400, "MANIFEST_INVALID")


@pytest.mark.slow
def test_a_push_moves_between_replicas_chunk_by_chunk(
    server_factory: Callable[..., RunningServer], qcow2: bytes
) -> None:
    """Two servers on one data volume and catalog (two replicas): each chunk goes to the
    other one; each resumes the session where the other recorded it."""
    data = qcow2 + os.urandom(1024 * 1024)
    first = server_factory()
    second = server_factory(data_root=first.data_root)
    with first.client() as one, second.client() as two:
        location = start_upload(one, "vms/replicas")
        chunk = 200 * 1024
        for number, start in enumerate(range(0, len(data), chunk)):
            http = (one, two)[number % 2]
            piece = data[start : start + chunk]
            headers = {"Content-Range": f"{start}-{start + len(piece) - 1}"}
            assert http.patch(location, content=piece, headers=headers).status_code == 202
        assert two.get(location).headers["range"] == f"0-{len(data) - 1}"
        assert one.put(location, params={"digest": sha256_digest(data)}).status_code == 201
        push_blob(two, "vms/replicas", EMPTY)
        manifest = artifact_manifest(data, "application/octet-stream")
        assert put_manifest(two, "vms/replicas", "v1", manifest).status_code == 201
        assert one.get("/reg/vms/replicas/v1").content == data


def _push_containerdisk_layer(http: httpx.Client, name: str, layer: bytes, packing: str) -> bytes:
    """Upload a config and ``layer``; the manifest that names them (not pushed yet)."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    push_blob(http, name, config)
    push_blob(http, name, layer, chunk=1024 * 1024)
    return container_manifest(layer, LAYER_TYPES[packing], config)


def _put_while_asking_health(
    server: RunningServer, name: str, tag: str, body: bytes
) -> tuple[httpx.Response, int]:
    """PUT the manifest from a thread while the main thread asks ``/healthz`` again and
    again: the PUT's answer, and how many ``/healthz`` answers came while the layer was
    being unpacked (a staging file more than the uploads' was there when it was asked)
    and before the PUT was answered."""
    answers: list[httpx.Response | BaseException] = []
    staged_before = len(server.staging_files())

    def put() -> None:
        try:
            with server.client() as http:
                answers.append(put_manifest(http, name, tag, body))
        except BaseException as exc:  # the main thread reports it
            answers.append(exc)

    thread = threading.Thread(target=put)
    meanwhile = 0
    with server.client() as http:
        thread.start()
        while thread.is_alive():
            unpacking = len(server.staging_files()) > staged_before
            health = http.get("/healthz")
            assert health.status_code == 200, health.text
            meanwhile += unpacking and thread.is_alive()
    thread.join()
    (answer,) = answers
    if isinstance(answer, BaseException):
        raise answer
    return answer, meanwhile


def _peak_rss(server: RunningServer) -> int:
    """The server process's peak resident memory (VmHWM), in bytes."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize("packing", ["gzip", "zstd"])
@pytest.mark.parametrize("shape", ["one-huge-disk", "many-entries"])
def test_a_decompression_bomb_is_refused_with_memory_bounded_and_the_server_answering(
    server_factory: Callable[..., RunningServer], packing: str, shape: str
) -> None:
    """A 4 MB layer that unpacks to 4 GiB of zeros (the disk itself, or 32 entries of
    128 MiB beside it) against a --max-virtual-size of 64 MiB: refused under
    virtual-size-too-large once it is known to unpack past what such a disk takes,
    nothing stored, the server's memory bounded and /healthz answered meanwhile."""
    server = server_factory("--max-virtual-size", "64M")
    if shape == "one-huge-disk":
        entries = [("disk/disk.img", 4 * 1024**3)]
    else:
        entries = [(f"data/{n}.bin", 128 * 1024**2) for n in range(32)]
        entries.append(("disk/disk.img", 1024 * 1024))
    layer = zeros_layer(entries, packing)
    assert len(layer) < 5_000_000
    name = "vms/bomb"
    with server.client() as http:
        manifest = _push_containerdisk_layer(http, name, layer, packing)
    answer, meanwhile = _put_while_asking_health(server, name, "v1", manifest)
    error = assert_oci_error(answer, 422, "MANIFEST_INVALID")
    assert error["detail"]["rule"] == "virtual-size-too-large", error
    assert "--max-virtual-size of 67108864 bytes" in error["message"]
    if shape == "many-entries":  # refused once 64 MiB and its room were unpacked
        assert meanwhile > 0, "no /healthz was answered while the layer was unpacked"
    with server.client() as http:
        assert http.get("/reg/vms/bomb/v1").status_code == 404
        assert_oci_error(http.get(f"/v2/{name}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert server.blob_files() == []
    assert server.staging_files() == []
    assert _peak_rss(server) < 512 * 1024**2


def test_a_tar_header_that_claims_a_gigabyte_is_refused(client: httpx.Client, repo: str) -> None:
    """tarfile holds a PAX record in memory: one of 1 GiB (of zeros, a 1 MB gzip layer)
    is refused once 4 MiB of it were read, not gathered."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 1024**3
    layer = zeros_layer([header, ("disk/disk.img", 1024 * 1024)], "gzip")
    name = f"{repo}/paxbomb"
    manifest = _push_containerdisk_layer(client, name, layer, "gzip")
    error = assert_oci_error(put_manifest(client, name, "v1", manifest), 400, "MANIFEST_INVALID")
    assert "a tar header of the layer is larger than 4194304 bytes" in error["message"]
    assert client.get(f"/reg/{repo}/paxbomb/v1").status_code == 404


def test_a_layer_of_more_than_a_thousand_entries_is_refused(
    client: httpx.Client, repo: str
) -> None:
    entries = [tar_entry(f"etc/{n}", data=b"x") for n in range(1000)]
    entries.append(tar_entry("disk/disk.img", data=_DISK))
    name = f"{repo}/crowded"
    manifest = _push_containerdisk_layer(client, name, tar_of(entries), "tar")
    error = assert_oci_error(put_manifest(client, name, "v1", manifest), 400, "MANIFEST_INVALID")
    assert "more than 1000 entries" in error["message"]
    assert client.get(f"/reg/{repo}/crowded/v1").status_code == 404


def test_an_unpacked_disk_above_max_image_size_is_refused(
    server_factory: Callable[..., RunningServer],
) -> None:
    """A 4 KiB layer whose disk is 4 MiB of zeros, against --max-image-size 1M: the
    limit holds for what the layer unpacks to, not only for what was uploaded."""
    server = server_factory("--max-image-size", "1M")
    layer = zeros_layer([("disk/disk.img", 4 * 1024 * 1024)], "gzip")
    assert len(layer) < 1024 * 1024
    with server.client() as http:
        manifest = _push_containerdisk_layer(http, "vms/packed", layer, "gzip")
        error = assert_oci_error(
            put_manifest(http, "vms/packed", "v1", manifest), 413, "SIZE_INVALID"
        )
        assert error["detail"] == {"limit": 1024 * 1024}, error
        assert http.get("/reg/vms/packed/v1").status_code == 404
    assert server.blob_files() == []
    assert server.staging_files() == []


def test_a_deeply_nested_manifest_is_refused(client: httpx.Client, repo: str) -> None:
    """JSON nested 100,000 deep exhausts the parser's stack: 400, as /reg answers it."""
    name = f"{repo}/deep"
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        for reference in ("v1", sha256_digest(body)):
            error = assert_oci_error(
                put_manifest(client, name, reference, body), 400, "MANIFEST_INVALID"
            )
            assert "nests too deeply" in error["message"]
    assert client.get(f"/reg/{repo}/deep/v1").status_code == 404


def test_a_chunk_that_is_not_its_content_range_is_refused(client: httpx.Client, repo: str) -> None:
    """A PATCH whose body is longer (or shorter) than its Content-Range says: 416 with
    where the session stands, which stays as it was, whether the body's length was
    announced or it came chunked."""
    name = f"{repo}/ranges"
    location = start_upload(client, name)
    first = random_image(100)
    assert (
        client.patch(location, content=first, headers={"Content-Range": "0-99"}).status_code == 202
    )

    def chunked(data: bytes) -> Iterator[bytes]:
        yield data[:7]
        yield data[7:]

    refused = [
        client.patch(location, content=b"x" * 20, headers={"Content-Range": "100-109"}),
        client.patch(location, content=chunked(b"y" * 20), headers={"Content-Range": "100-109"}),
        client.patch(location, content=b"z" * 5, headers={"Content-Range": "100-109"}),
        client.patch(location, content=chunked(b"w" * 5), headers={"Content-Range": "100-109"}),
        client.patch(location, content=b"v" * 10, headers={"Content-Range": "109-100"}),
    ]
    for response in refused:
        assert_oci_error(response, 416, "BLOB_UPLOAD_INVALID")
        assert response.headers["range"] == "0-99"
        status = client.get(location)
        assert (status.status_code, status.headers["range"]) == (204, "0-99")
    rest = random_image(10)
    assert (
        client.patch(location, content=rest, headers={"Content-Range": "100-109"}).status_code
        == 202
    )
    done = client.put(location, params={"digest": sha256_digest(first + rest)})
    assert done.status_code == 201, done.text
    assert client.get(f"/v2/{name}/blobs/{sha256_digest(first + rest)}").content == first + rest


_DISK = random_image(70_000)
_BAD_TARS: dict[str, tuple[str, list[tuple[tarfile.TarInfo, bytes]]]] = {
    # case: (the path the refusal names, the layer's entries)
    "absolute": ("/disk/disk.img", [tar_entry("/disk/disk.img", data=_DISK)]),
    "dotdot-first": ("../disk/disk.img", [tar_entry("../disk/disk.img", data=_DISK)]),
    "dotdot-inside": (
        "disk/../disk/disk.img",
        [tar_entry("disk/disk.img", data=_DISK), tar_entry("disk/../disk/disk.img", data=_DISK)],
    ),
    "second-file": (
        "disk/other.img",
        [tar_entry("disk/disk.img", data=_DISK), tar_entry("disk/other.img", data=_DISK[:512])],
    ),
    "hard-link": (
        "disk/again.img",
        [
            tar_entry("disk/disk.img", data=_DISK),
            tar_entry("disk/again.img", tarfile.LNKTYPE, link="disk/disk.img"),
        ],
    ),
    "hard-link-alone": (
        "disk/disk.img",
        [
            tar_entry("etc/shadow", data=_DISK),
            tar_entry("disk/disk.img", tarfile.LNKTYPE, link="etc/shadow"),
        ],
    ),
    "symlink": (
        "disk/disk.img",
        [tar_entry("disk/disk.img", tarfile.SYMTYPE, link="/etc/shadow")],
    ),
    "disk-is-a-symlink": (
        "disk",
        [tar_entry("disk", tarfile.SYMTYPE, link="/"), tar_entry("disk/disk.img", data=_DISK)],
    ),
    "character-device": ("disk/tty", [tar_entry("disk/tty", tarfile.CHRTYPE)]),
    "block-device": ("disk/sda", [tar_entry("disk/sda", tarfile.BLKTYPE)]),
    "fifo": (
        "disk/pipe",
        [tar_entry("disk/disk.img", data=_DISK), tar_entry("disk/pipe", tarfile.FIFOTYPE)],
    ),
    "nested": ("disk/sub/disk.img", [tar_entry("disk/sub/disk.img", data=_DISK)]),
}


@pytest.mark.parametrize("packing", ["tar", "gzip", "zstd"])
@pytest.mark.parametrize("case", sorted(_BAD_TARS))
def test_a_layer_with_anything_but_one_disk_file_under_disk_is_refused(
    client: httpx.Client, repo: str, packing: str, case: str
) -> None:
    path, entries = _BAD_TARS[case]
    name = f"{repo}/tarpaths"
    manifest = _push_containerdisk_layer(client, name, packed(tar_of(entries), packing), packing)
    error = assert_oci_error(put_manifest(client, name, "v1", manifest), 400, "MANIFEST_INVALID")
    assert error["detail"] == {"path": path}, error
    assert f"'{path}'" in error["message"]
    assert client.get(f"/reg/{repo}/tarpaths/v1").status_code == 404


@pytest.mark.parametrize("packing", ["gzip", "zstd"])
def test_a_layer_in_several_members_with_dot_slash_paths_is_a_containerdisk(
    client: httpx.Client, repo: str, packing: str
) -> None:
    """As `tar -C dir .` writes it (./, ./disk/, ./disk/disk.img, a file elsewhere),
    compressed as two gzip members or two zstd frames (as zstd:chunked layers come):
    the disk is read across them."""
    entries = [
        tar_entry("./", tarfile.DIRTYPE),
        tar_entry("./disk/", tarfile.DIRTYPE),
        tar_entry("./disk/disk.img", data=_DISK),
        tar_entry("./README", data=b"a containerDisk\n"),
    ]
    tar = tar_of(entries)
    half = len(tar) // 2
    layer = packed(tar[:half], packing) + packed(tar[half:], packing)
    name = f"{repo}/dotted"
    manifest = _push_containerdisk_layer(client, name, layer, packing)
    response = put_manifest(client, name, "v1", manifest)
    assert response.status_code == 201, response.text
    assert client.get(f"/reg/{repo}/dotted/v1").content == _DISK
