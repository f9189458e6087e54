"""``--redirect-downloads``: a real server on a real SeaweedFS sends GETs of stored bytes
to presigned URLs, and real clients (curl, qemu-img, ``cloudimg pull``, skopeo) follow.

One server for the module, with auth on (write tokens, Basic reads), so every client
sends an ``Authorization`` to the registry. The server reaches SeaweedFS through a
recording proxy on another loopback address (127.0.0.2): the presigned URLs name it,
so every request a client sends the object store passes it, and the tests check that
none carries an ``Authorization`` (SeaweedFS 4.48 ignores one beside a presigned
signature; AWS S3 refuses the request). The store's host name differs from the
registry's, as in a cluster (see docs/configuration.md on why that matters).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import blake3
import httpx
import pytest

from cloudimg.blobstore.s3 import S3BlobStore
from cloudimg.blobstore.s3.store import MAX_URL_EXPIRY
from tests.conftest import RunningServer, start_server, upload
from tests.databases import catalog_database, query
from tests.object_store import SeaweedFS, assert_secret_kept, s3_location
from tests.oci_support import (
    OCI_MANIFEST,
    assert_oci_error,
    container_manifest,
    push_blob,
    tar_layer,
)
from tests.proxy import RecordedRequest, RecordingProxy
from tests.support import assert_error, random_image

pytestmark = pytest.mark.slow

WRITE_TOKEN = "redirect-write-" + secrets.token_hex(8)
READ_USER, READ_PASSWORD = "reader", "read-" + secrets.token_hex(8)
STORE_HOST = "127.0.0.2"
MIB = 1024 * 1024
PREFIX = "cloudimg"
EXPIRY_SECS = 240
"""``--redirect-expiry-secs`` of the module's servers (not the default, 300)."""


@pytest.fixture(scope="module")
def store_proxy(seaweedfs: SeaweedFS) -> Iterator[RecordingProxy]:
    with socket.socket() as probe:
        try:
            probe.bind((STORE_HOST, 0))
        except OSError:
            pytest.skip(f"cannot listen on {STORE_HOST} (loopback other than 127.0.0.1)")
    port = int(seaweedfs.endpoint.rpartition(":")[2])
    proxy = RecordingProxy(port, host=STORE_HOST)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def bucket(backend: str, seaweedfs: SeaweedFS) -> str:
    """The bucket of this backend's server (a test deletes objects behind its back)."""
    return seaweedfs.new_bucket()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    backend: str,
    bucket: str,
    seaweedfs: SeaweedFS,
    store_proxy: RecordingProxy,
) -> Iterator[RunningServer]:
    """One server per backend (the redirect is decided after the catalog's lookup, which
    differs between them), sharing the module's object store and proxy."""
    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "tokens").write_text(WRITE_TOKEN + "\n")
    (secrets_dir / "credentials").write_text(f"{READ_USER}:{READ_PASSWORD}\n")
    root = tmp_path_factory.mktemp("redirects") / "data"
    with catalog_database(backend, root):
        running = start_server(
            root,
            *("--blob-store", f"s3://{bucket}/{PREFIX}"),
            *("--s3-endpoint", store_proxy.url, "--s3-path-style"),
            *("--redirect-downloads", "--redirect-expiry-secs", str(EXPIRY_SECS)),
            *("--write-token-file", str(secrets_dir / "tokens")),
            *("--read-auth", "basic"),
            *("--read-credentials-file", str(secrets_dir / "credentials")),
            env={
                "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
                "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
            },
        )
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture
def reader(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client(auth=(READ_USER, READ_PASSWORD)) as http:
        yield http


@pytest.fixture
def writer(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client(headers={"Authorization": f"Bearer {WRITE_TOKEN}"}) as http:
        yield http


@pytest.fixture
def repo() -> str:
    return "r-" + secrets.token_hex(6)


def _store_requests(proxy: RecordingProxy, since: int) -> list[RecordedRequest]:
    """The requests through the store's proxy since ``since`` that came by a presigned
    URL (the registry's own requests carry a SigV4 ``Authorization`` instead)."""
    return [r for r in proxy.recorded()[since:] if "X-Amz-Signature=" in r.target]


def _assert_followed_without_credentials(proxy: RecordingProxy, since: int) -> None:
    """Some client fetched through a presigned URL since ``since``, none with credentials."""
    presigned = _store_requests(proxy, since)
    assert presigned, "no client came to the object store: the download was not redirected"
    for request in presigned:
        assert request.method == "GET", request
        assert "authorization" not in request.headers, request
        assert "cookie" not in request.headers, request


def _digests(data: bytes) -> tuple[str, str]:
    return blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest()


# -- the HTTP side ----------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["tag", "blake3", "sha256"])
def test_a_get_of_image_bytes_answers_307_to_the_object(
    server: RunningServer,
    reader: httpx.Client,
    writer: httpx.Client,
    store_proxy: RecordingProxy,
    repo: str,
    reference: str,
) -> None:
    data = random_image(300_000)
    b3, sha = _digests(data)
    assert upload(writer, f"/reg/{repo}/disk/v1", data).status_code == 201
    name = {"tag": "v1", "blake3": f"blake3:{b3}", "sha256": f"sha256:{sha}"}[reference]
    answer = reader.get(f"/reg/{repo}/disk/{name}")
    assert answer.status_code == 307
    location = answer.headers["Location"]
    assert location.startswith(f"{store_proxy.url}/")
    assert f"/blobs/blake3/{b3}?" in location
    # What a client verifies comes from the registry; the URL expires, so no cache keeps it.
    assert answer.headers["ETag"] == f'"blake3:{b3}"'
    assert answer.headers["Repr-Digest"].startswith("sha-256=:")
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.content == b""
    assert f"X-Amz-Expires={EXPIRY_SECS}&" in location
    since = len(store_proxy.recorded())
    with httpx.Client(timeout=30) as anonymous:
        assert anonymous.get(location).content == data
        ranged = anonymous.get(location, headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206
    assert ranged.content == data[1000:2000]
    _assert_followed_without_credentials(store_proxy, since)


def test_a_range_is_redirected_and_the_store_answers_it(
    reader: httpx.Client, writer: httpx.Client, repo: str
) -> None:
    data = random_image(200_000)
    assert upload(writer, f"/reg/{repo}/disk/v1", data).status_code == 201
    answer = reader.get(f"/reg/{repo}/disk/v1", headers={"Range": "bytes=-100"})
    assert answer.status_code == 307
    # httpx follows to another origin without the registry's credentials.
    followed = reader.get(
        f"/reg/{repo}/disk/v1", headers={"Range": "bytes=-100"}, follow_redirects=True
    )
    assert followed.status_code == 206
    assert followed.content == data[-100:]


def test_head_meta_and_conditional_answers_stay_local(
    reader: httpx.Client, writer: httpx.Client, repo: str
) -> None:
    data = random_image(100_000)
    b3, _sha = _digests(data)
    etag = f'"blake3:{b3}"'
    assert upload(writer, f"/reg/{repo}/disk/v1", data).status_code == 201
    path = f"/reg/{repo}/disk/v1"
    head = reader.head(path)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Accept-Ranges"] == "bytes"
    assert reader.get(f"{path}/meta").json()["digest"] == f"blake3:{b3}"
    assert reader.get(path, headers={"If-None-Match": etag}).status_code == 304
    assert reader.get(path, headers={"If-Match": '"blake3:other"'}).status_code == 412
    assert reader.get(path, headers={"Range": "bytes=999999-"}).status_code == 416
    # Answers that hang on this server's validators are sent from here (the store's
    # ETag is not ours: it would answer If-Match with 412).
    matched = reader.get(path, headers={"If-Match": etag})
    assert matched.status_code == 200
    assert matched.content == data
    moved = reader.get(path, headers={"Range": "bytes=10-", "If-Range": '"blake3:old"'})
    assert moved.status_code == 200
    assert moved.content == data
    held = reader.get(path, headers={"Range": "bytes=10-", "If-Range": etag})
    assert held.status_code == 307


def test_without_credentials_there_is_no_url(server: RunningServer, repo: str) -> None:
    with server.client() as anonymous:
        refused = anonymous.get(f"/reg/{repo}/disk/v1")
    assert refused.status_code == 401
    assert "Location" not in refused.headers


def _sql(server: RunningServer, statement: str, *args: str) -> None:
    query(server.database_url, statement, *args)


def test_a_blocked_or_quarantined_image_gets_its_refusal_never_a_url(
    server: RunningServer, reader: httpx.Client, writer: httpx.Client, repo: str
) -> None:
    blocked, quarantined = random_image(50_000), random_image(50_001)
    assert upload(writer, f"/reg/{repo}/disk/blocked", blocked).status_code == 201
    assert upload(writer, f"/reg/{repo}/disk/bad", quarantined).status_code == 201
    _sql(
        server,
        "UPDATE blobs SET blocked_rule = 'backing-file', blocked_at = created_at WHERE digest = ?",
        _digests(blocked)[0],
    )
    _sql(
        server,
        "UPDATE blobs SET quarantined_at = created_at WHERE digest = ?",
        _digests(quarantined)[0],
    )
    for data, tag, status in ((blocked, "blocked", 403), (quarantined, "bad", 500)):
        for name in (tag, f"blake3:{_digests(data)[0]}", f"sha256:{_digests(data)[1]}"):
            answer = reader.get(f"/reg/{repo}/disk/{name}")
            assert answer.status_code == status, answer.text
            assert "Location" not in answer.headers


# -- /v2: stored blobs redirect, computed containerDisk layers do not --------------------


def test_v2_stored_blobs_redirect_and_generated_layers_stay_local(
    reader: httpx.Client, writer: httpx.Client, repo: str
) -> None:
    disk = random_image(100_000)
    assert upload(writer, f"/reg/{repo}/disk/v1", disk).status_code == 201
    name = f"{repo}/disk"
    manifest = reader.get(
        f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST}, follow_redirects=False
    )
    assert manifest.status_code == 200  # manifests are small and made here
    generated = manifest.json()["layers"][0]["digest"]
    layer = reader.get(f"/v2/{name}/blobs/{generated}")
    assert layer.status_code == 200  # tar headers around the blob: no object holds it
    # A disk pushed as an artifact layer is the stored blob: by its digest, it redirects.
    sha = "sha256:" + hashlib.sha256(disk).hexdigest()
    artifact = reader.get(f"/v2/{name}/blobs/{sha}")
    assert artifact.status_code == 307
    assert artifact.headers["Docker-Content-Digest"] == sha
    assert reader.head(f"/v2/{name}/blobs/{sha}").status_code == 200


def _push_container_image(writer: httpx.Client, name: str, disk: bytes) -> tuple[bytes, bytes]:
    """Push a containerDisk over ``/v2`` as a client builds it: its layer and config are
    kept as pushed (stored blobs, redirected). Gives (layer, config)."""
    layer = tar_layer(disk)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
    push_blob(writer, name, layer)
    push_blob(writer, name, config)
    pushed = writer.put(
        f"/v2/{name}/manifests/v1",
        content=container_manifest(layer, "application/vnd.oci.image.layer.v1.tar", config),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert pushed.status_code == 201, pushed.text
    return layer, config


def test_an_object_lost_behind_the_registrys_back_is_its_own_404_never_the_stores(
    reader: httpx.Client,
    writer: httpx.Client,
    seaweedfs: SeaweedFS,
    bucket: str,
    repo: str,
) -> None:
    """A listed blob whose object is gone (an operator's mistake, a store that lost it):
    the redirect looks before it signs, so the client gets the registry's error in the
    registry's shape rather than a 307 to the store's XML 404."""
    disk, kept = random_image(70_000), random_image(80_000)
    assert upload(writer, f"/reg/{repo}/disk/v1", disk).status_code == 201
    layer, _config = _push_container_image(writer, f"{repo}/pushed", kept)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    disk_sha = "sha256:" + hashlib.sha256(disk).hexdigest()
    # Both redirect while their objects are there.
    assert reader.get(f"/v2/{repo}/pushed/blobs/{layer_digest}").status_code == 307
    assert reader.get(f"/reg/{repo}/disk/v1").status_code == 307
    store = seaweedfs.client()
    for data in (disk, layer):
        store.delete_object(Bucket=bucket, Key=f"{PREFIX}/blobs/blake3/{_digests(data)[0]}")

    for path in (f"/reg/{repo}/disk/v1", f"/reg/{repo}/disk/{disk_sha}"):
        lost = reader.get(path)
        assert_error(lost, 404, "NOT_FOUND")
        assert "Location" not in lost.headers
    for path in (f"/v2/{repo}/pushed/blobs/{layer_digest}", f"/v2/{repo}/disk/blobs/{disk_sha}"):
        lost = reader.get(path)
        assert_oci_error(lost, 404, "BLOB_UNKNOWN")
        assert "Location" not in lost.headers


# -- the clients -------------------------------------------------------------------------


def test_curl_follows_and_drops_the_credentials(
    server: RunningServer,
    writer: httpx.Client,
    store_proxy: RecordingProxy,
    repo: str,
    tmp_path: Path,
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    data = random_image(2 * MIB + 5)
    assert upload(writer, f"/reg/{repo}/disk/v1", data).status_code == 201
    since = len(store_proxy.recorded())
    out = tmp_path / "out.raw"
    url = f"{server.base_url}/reg/{repo}/disk/v1"
    done = subprocess.run(
        [curl, "-sSfL", "-u", f"{READ_USER}:{READ_PASSWORD}", "-o", str(out), url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data
    part = subprocess.run(
        [curl, "-sSfL", "-u", f"{READ_USER}:{READ_PASSWORD}", "-r", "100-199", url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert part.stdout == data[100:200]
    _assert_followed_without_credentials(store_proxy, since)


QEMU_IMG = shutil.which("qemu-img")


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run(
        [QEMU_IMG, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not found (Debian: qemu-utils)")
def test_qemu_img_info_and_convert_follow(
    server: RunningServer,
    writer: httpx.Client,
    store_proxy: RecordingProxy,
    repo: str,
    tmp_path: Path,
) -> None:
    raw = bytearray(4 * MIB)
    raw[:MIB] = os.urandom(MIB)
    raw[-4096:] = b"end".ljust(4096, b"\x5c")
    (tmp_path / "disk.raw").write_bytes(raw)
    converted = _qemu_img(
        "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "disk.raw"), str(tmp_path / "d.qcow2")
    )
    assert converted.returncode == 0, converted.stderr
    assert (
        upload(writer, f"/reg/{repo}/disk/v1", (tmp_path / "d.qcow2").read_bytes()).status_code
        == 201
    )
    since = len(store_proxy.recorded())
    # The curl driver's Basic credentials, the password from a secret object.
    source = "json:" + json.dumps(
        {
            "file.driver": "http",
            "file.url": f"{server.base_url}/reg/{repo}/disk/v1",
            "file.username": READ_USER,
            "file.password-secret": "pw",
            "driver": "qcow2",
        }
    )
    secret = f"secret,id=pw,data={READ_PASSWORD}"
    info = _qemu_img("info", "--object", secret, "--output=json", source)
    assert info.returncode == 0, info.stderr + server.log()[-2000:]
    assert json.loads(info.stdout)["virtual-size"] == len(raw)
    out = tmp_path / "out.raw"
    copied = _qemu_img("convert", "--object", secret, "-m", "1", "-O", "raw", source, str(out))
    assert copied.returncode == 0, copied.stderr
    assert out.read_bytes() == bytes(raw)
    _assert_followed_without_credentials(store_proxy, since)


def _cloudimg(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDIMG_")}
    environment.update({"HOME": str(cwd), **env})
    return subprocess.run(
        [sys.executable, "-m", "cloudimg", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=cwd,
        check=False,
    )


def test_cloudimg_pull_follows_resumes_and_verifies(
    server: RunningServer,
    writer: httpx.Client,
    store_proxy: RecordingProxy,
    repo: str,
    tmp_path: Path,
) -> None:
    data = random_image(3 * MIB + 11)
    b3, sha = _digests(data)
    assert upload(writer, f"/reg/{repo}/disk/v1", data).status_code == 201
    env = {
        "CLOUDIMG_SERVER": server.base_url,
        "CLOUDIMG_USER": READ_USER,
        "CLOUDIMG_PASSWORD": READ_PASSWORD,
    }
    since = len(store_proxy.recorded())
    for ref, dest in ((f"{repo}/disk:v1", "tag.raw"), (f"{repo}/disk@sha256:{sha}", "pin.raw")):
        done = _cloudimg("pull", ref, dest, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / dest).read_bytes() == data
    _assert_followed_without_credentials(store_proxy, since)

    # A partial of the first MiB: the pull resumes it from the store with Range.
    partial = tmp_path / f".resumed.raw.blake3-{b3}.part"
    partial.write_bytes(data[:MIB])
    since = len(store_proxy.recorded())
    done = _cloudimg("pull", f"{repo}/disk:v1", "resumed.raw", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "resumed at 1.0 MiB" in done.stdout + done.stderr
    assert (tmp_path / "resumed.raw").read_bytes() == data
    ranges = [r.headers.get("range") for r in _store_requests(store_proxy, since)]
    assert ranges == [f"bytes={MIB}-"]
    _assert_followed_without_credentials(store_proxy, since)

    # A partial whose bytes are wrong: the rest comes from the store, the hash refuses.
    partial = tmp_path / f".bad.raw.blake3-{b3}.part"
    partial.write_bytes(bytes(MIB))
    done = _cloudimg("pull", f"{repo}/disk:v1", "bad.raw", cwd=tmp_path, env=env)
    assert done.returncode == 5, done.stderr
    assert not (tmp_path / "bad.raw").exists()


def test_cloudimg_pull_asks_the_registry_again_when_the_store_refuses_its_url(
    server: RunningServer,
    writer: httpx.Client,
    store_proxy: RecordingProxy,
    repo: str,
    tmp_path: Path,
) -> None:
    data = random_image(MIB + 1)
    assert upload(writer, f"/reg/{repo}/disk/v1", data).status_code == 201
    env = {
        "CLOUDIMG_SERVER": server.base_url,
        "CLOUDIMG_USER": READ_USER,
        "CLOUDIMG_PASSWORD": READ_PASSWORD,
    }
    since = len(store_proxy.recorded())
    store_proxy.expire_presigned = 1  # as a URL that expired before the client came
    done = _cloudimg("pull", f"{repo}/disk:v1", "again.raw", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "again.raw").read_bytes() == data
    assert len(_store_requests(store_proxy, since)) == 2
    # The retry asked the registry again (for a fresh URL), not the store with the old one.
    asked = f"GET /reg/{repo}/disk/v1 307 "
    assert server.log().count(asked) == 2
    # Past its retries, the store's own error is the one line.
    store_proxy.expire_presigned = 2
    done = _cloudimg(
        "pull", f"{repo}/disk:v1", "never.raw", "--retries", "1", cwd=tmp_path, env=env
    )
    assert done.returncode == 6, done.stderr
    assert "403 AccessDenied: Request has expired" in done.stderr
    assert not (tmp_path / "never.raw").exists()


def test_skopeo_copies_a_pushed_image_through_redirects(
    server: RunningServer,
    writer: httpx.Client,
    store_proxy: RecordingProxy,
    repo: str,
    tmp_path: Path,
) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    # A containerDisk pushed over /v2 is kept as pushed: its layer and config are stored
    # blobs, which redirect (a /reg tag would pull a generated layer, sent from here).
    name = f"{repo}/disk"
    layer, _config = _push_container_image(writer, name, random_image(MIB + 3))
    since = len(store_proxy.recorded())
    out = tmp_path / "out"
    done = subprocess.run(
        [
            skopeo, "copy", "--src-tls-verify=false",
            "--src-creds", f"{READ_USER}:{READ_PASSWORD}",
            f"docker://127.0.0.1:{server.port}/{name}:v1", f"dir:{out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    layer_sha = hashlib.sha256(layer).hexdigest()
    assert (out / layer_sha).read_bytes() == layer
    _assert_followed_without_credentials(store_proxy, since)


def test_a_presigned_url_lives_as_set_and_shows_no_secret(
    server: RunningServer, reader: httpx.Client, writer: httpx.Client, seaweedfs: SeaweedFS,
    repo: str,
) -> None:  # fmt: skip
    """SigV4 query signing: the URL is valid from ``X-Amz-Date`` for ``X-Amz-Expires``
    seconds, which must be the setting, signed when the client asked (not earlier, as a
    cached URL would be); it names the access key id, never the secret."""
    data = random_image(10_000)
    assert upload(writer, f"/reg/{repo}/disk/v1", data).status_code == 201
    for path in (f"/reg/{repo}/disk/v1", f"/reg/{repo}/disk/v1"):  # each GET signs anew
        before = datetime.now(UTC).replace(microsecond=0)
        answer = reader.get(path)
        after = datetime.now(UTC)
        assert answer.status_code == 307
        signed = parse_qs(urlsplit(answer.headers["Location"]).query)
        assert signed["X-Amz-Expires"] == [str(EXPIRY_SECS)]
        assert signed["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        issued = datetime.strptime(signed["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert before <= issued <= after
        assert signed["X-Amz-Credential"][0].startswith(seaweedfs.access_key + "/")
        assert_secret_kept(seaweedfs.secret_key, server.process.pid, reader, server.log(), answer)


# -- settings and the URL's life ---------------------------------------------------------


def test_redirects_without_an_object_store_are_refused_at_start(tmp_path: Path) -> None:
    done = _cloudimg(
        "serve", "--listener-addr", "127.0.0.1:0", "--data-root", str(tmp_path / "data"),
        cwd=tmp_path, env={"CLOUDIMG_REDIRECT_DOWNLOADS": "true"},
    )  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    assert "--redirect-downloads" in errors[0]
    assert "--blob-store" in errors[0]
    assert not (tmp_path / "data").exists()  # refused before anything was touched


async def test_a_presigned_url_does_not_outlive_its_expiry(seaweedfs: SeaweedFS) -> None:
    store = S3BlobStore(s3_location(seaweedfs, seaweedfs.new_bucket()))
    writer = await store.open_staging()
    await writer.write(b"expiring bytes")
    staged = await writer.finish()
    await store.place(staged)
    url = await store.download_url(staged.blake3, 1)
    assert url is not None
    assert "X-Amz-Expires=1&" in url
    await asyncio.sleep(2.5)  # past the expiry whatever the load: the store says so
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(url)).status_code == 403
    with pytest.raises(ValueError, match="1 to"):
        await store.download_url(staged.blake3, MAX_URL_EXPIRY + 1)
