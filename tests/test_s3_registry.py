"""A registry whose blobs live in a bucket: real ``cloudimg serve`` processes started with
``--blob-store s3://...`` over a real SeaweedFS (``tests/object_store.py``), on both
catalog backends.

One server per module and backend does the HTTP and maintenance cases (each in a
repository of its own); a second server over the same bucket and PostgreSQL catalog,
with a data root of its own, resumes a ``/v2`` upload the first began (replicas with
no shared volume). The object store's outage is a SeaweedFS of its own, stopped and
started again under a server of its own (marked slow: the client's retries run out
before each 503).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, start_server, upload, upload_raw
from tests.databases import catalog_database, registered_url
from tests.maintenance_support import cli, cli_json
from tests.object_store import SeaweedFS, assert_secret_kept, start_seaweedfs
from tests.oci_support import (
    artifact_manifest,
    assert_oci_error,
    assert_pulls_as_containerdisk,
    put_manifest,
    sha256_digest,
    start_upload,
)
from tests.support import (
    assert_error,
    blake3_hex,
    random_image,
    sha256_hex,
    wait_until,
)

PREFIX = "reg/"
LOCAL_AREAS = ("blobs", "staging", "trash", "quarantine")
"""What the file system store makes in a data root; a bucket's registry makes none."""


@dataclass
class BucketRegistry:
    """A server whose blobs are in ``bucket`` (under ``PREFIX``) of ``store``."""

    server: RunningServer
    store: SeaweedFS
    bucket: str
    env: dict[str, str]
    """The variables a maintenance command needs to open the same registry."""

    def listed(self, area: str = "") -> list[str]:
        listed = self.store.client().list_objects_v2(Bucket=self.bucket, Prefix=PREFIX + area)
        return sorted(item["Key"].removeprefix(PREFIX) for item in listed.get("Contents", []))

    def blob_key(self, data: bytes) -> str:
        return f"blobs/blake3/{blake3_hex(data)}"


def bucket_env(store: SeaweedFS, bucket: str) -> dict[str, str]:
    """The blob store's settings as ``CLOUDIMG_*`` variables, credentials as boto3 reads
    them (never a flag)."""
    return {
        "CLOUDIMG_BLOB_STORE": f"s3://{bucket}/{PREFIX.rstrip('/')}",
        "CLOUDIMG_S3_ENDPOINT": store.endpoint,
        "CLOUDIMG_S3_PATH_STYLE": "true",
        "AWS_ACCESS_KEY_ID": store.access_key,
        "AWS_SECRET_ACCESS_KEY": store.secret_key,
    }


def serve_bucket(
    root: Path, store: SeaweedFS, bucket: str, *args: str, flags: bool = True
) -> BucketRegistry:
    """A server on ``bucket``; ``flags``: the settings as flags, else as variables."""
    env = bucket_env(store, bucket)
    named = (
        (
            "--blob-store",
            env["CLOUDIMG_BLOB_STORE"],
            "--s3-endpoint",
            store.endpoint,
            "--s3-path-style",
        )
        if flags
        else ()
    )
    credentials = {k: v for k, v in env.items() if flags is False or k.startswith("AWS_")}
    running = start_server(root, *named, *args, env=credentials)
    return BucketRegistry(running, store, bucket, env)


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, backend: str, seaweedfs: SeaweedFS
) -> Iterator[BucketRegistry]:
    root = tmp_path_factory.mktemp("s3-server") / "data"
    with catalog_database(backend, root):
        running = serve_bucket(root, seaweedfs, seaweedfs.new_bucket())
        try:
            yield running
        finally:
            running.server.stop()


@pytest.fixture
def client(registry: BucketRegistry) -> Iterator[httpx.Client]:
    with registry.server.client() as http:
        yield http


@pytest.fixture
def maintenance(registry: BucketRegistry, monkeypatch: pytest.MonkeyPatch) -> BucketRegistry:
    """The registry, with its blob store's settings in this process's environment for
    the maintenance commands ``cli`` runs (``--data-root`` finds the catalog)."""
    for name, value in registry.env.items():
        monkeypatch.setenv(name, value)
    return registry


def root_of(registry: BucketRegistry) -> str:
    return str(registry.server.data_root)


# -- uploads and downloads -----------------------------------------------------------------


def test_uploads_land_in_the_bucket_and_download_with_ranges_and_conditions(
    registry: BucketRegistry, client: httpx.Client, repo: str
) -> None:
    posted, put = random_image(3 * 1024 * 1024 + 17), random_image(40_000)
    assert upload(client, f"/reg/{repo}/disk/v1", posted, {"os": "a"}).status_code == 201
    assert upload_raw(client, f"/reg/{repo}/disk/v2", put, {"os": "b"}).status_code == 201
    assert registry.blob_key(posted) in registry.listed("blobs/")
    assert registry.blob_key(put) in registry.listed("blobs/")
    assert registry.listed("staging/") == []

    whole = client.get(f"/reg/{repo}/disk/v1")
    assert whole.status_code == 200
    assert whole.content == posted
    etag = whole.headers["etag"]
    assert etag == f'"blake3:{blake3_hex(posted)}"'
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["repr-digest"].startswith("sha-256=:")
    head = client.head(f"/reg/{repo}/disk/v1")
    assert head.headers["content-length"] == str(len(posted))

    part = client.get(f"/reg/{repo}/disk/v1", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == posted[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(posted)}"
    tail = client.get(f"/reg/{repo}/disk/v1", headers={"Range": "bytes=-10"})
    assert tail.content == posted[-10:]
    beyond = client.get(f"/reg/{repo}/disk/v1", headers={"Range": f"bytes={len(posted)}-"})
    assert beyond.status_code == 416
    assert client.get(f"/reg/{repo}/disk/v1", headers={"If-None-Match": etag}).status_code == 304
    stale = client.get(
        f"/reg/{repo}/disk/v1", headers={"Range": "bytes=0-9", "If-Range": '"blake3:00"'}
    )
    assert stale.status_code == 200
    assert stale.content == posted
    by_digest = client.get(f"/reg/{repo}/disk/sha256:{sha256_hex(put)}")
    assert by_digest.content == put
    assert client.get(f"/reg/{repo}/disk/v2/meta").json()["data"] == {"os": "b"}
    # Nothing of the store in the data root: the bucket is the store.
    assert not any((registry.server.data_root / area).exists() for area in LOCAL_AREAS)


def test_retag_delete_and_history_free_the_object_after_the_commit(
    registry: BucketRegistry, client: httpx.Client, repo: str
) -> None:
    old, new = random_image(20_000), random_image(30_000)
    assert upload_raw(client, f"/reg/{repo}/disk/v1", old).status_code == 201
    assert upload_raw(client, f"/reg/{repo}/disk/v1", new).status_code == 201
    # The tag's history holds the old bytes (--keep-history 3): still stored and served.
    assert registry.blob_key(old) in registry.listed("blobs/")
    assert client.get(f"/reg/{repo}/disk/blake3:{blake3_hex(old)}").content == old
    retag = client.post(f"/reg/{repo}/disk/v2/retag", json={"digest": f"blake3:{blake3_hex(old)}"})
    assert retag.status_code == 201, retag.text
    assert client.get(f"/reg/{repo}/disk/v2").content == old

    assert client.delete(f"/reg/{repo}/disk/v2", params={"purge": "history"}).status_code == 200
    # v1's history still holds the old bytes.
    assert registry.blob_key(old) in registry.listed("blobs/")
    assert client.delete(f"/reg/{repo}/disk/v1", params={"purge": "history"}).status_code == 200
    assert_error(client.get(f"/reg/{repo}"), 404, "NOT_FOUND")  # the repository went too
    blobs = registry.listed("blobs/")
    assert registry.blob_key(old) not in blobs
    assert registry.blob_key(new) not in blobs
    assert client.get(f"/reg/{repo}/disk/blake3:{blake3_hex(new)}").status_code == 404


def test_a_delete_cut_short_by_a_crash_is_undone_by_gc(
    maintenance: BucketRegistry, client: httpx.Client, repo: str
) -> None:
    """What a kill -9 between the trash move and the commit leaves: the tag listed, its
    object moved to trash/. gc puts it back, as on the file system."""
    data = random_image(25_000)
    assert upload_raw(client, f"/reg/{repo}/disk/v1", data).status_code == 201
    s3 = maintenance.store.client()
    key = maintenance.blob_key(data)
    trashed = f"{PREFIX}trash/{blake3_hex(data)}.{secrets.token_hex(8)}"
    s3.copy_object(
        Bucket=maintenance.bucket, Key=trashed, CopySource=f"{maintenance.bucket}/{PREFIX}{key}"
    )
    s3.delete_object(Bucket=maintenance.bucket, Key=PREFIX + key)
    assert key not in maintenance.listed("blobs/")

    report = cli_json("gc", "--data-root", root_of(maintenance), check=0)
    assert key in maintenance.listed("blobs/"), report
    assert client.get(f"/reg/{repo}/disk/v1").content == data


def test_gc_finds_orphans_by_listing_the_bucket_and_aborts_abandoned_uploads(
    maintenance: BucketRegistry, client: httpx.Client, repo: str
) -> None:
    data = random_image(10_000)
    assert upload_raw(client, f"/reg/{repo}/disk/v1", data).status_code == 201
    s3, bucket = maintenance.store.client(), maintenance.bucket
    orphan = random_image(5_000)  # a blob no catalog row names (a crash before a commit)
    s3.put_object(Bucket=bucket, Key=PREFIX + maintenance.blob_key(orphan), Body=orphan)
    stray = f"{PREFIX}staging/{secrets.token_hex(16)}"  # a finished upload never committed
    s3.put_object(Bucket=bucket, Key=stray, Body=b"x" * 100)
    abandoned = f"{PREFIX}staging/{secrets.token_hex(16)}"  # a crashed multipart upload
    started = s3.create_multipart_upload(Bucket=bucket, Key=abandoned)
    s3.upload_part(
        Bucket=bucket, Key=abandoned, UploadId=started["UploadId"], PartNumber=1, Body=b"y" * 10
    )

    # Within the grace period nothing is touched.
    young = cli_json("gc", "--data-root", root_of(maintenance), check=0)
    assert maintenance.blob_key(orphan) in maintenance.listed("blobs/"), young
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX).get("Uploads", [])
    assert abandoned in [u["Key"] for u in uploads]

    report = cli_json("gc", "--data-root", root_of(maintenance), "--grace", "0", check=0)
    assert maintenance.blob_key(orphan) not in maintenance.listed("blobs/"), report
    assert maintenance.blob_key(data) in maintenance.listed("blobs/")
    assert stray.removeprefix(PREFIX) not in maintenance.listed("staging/")
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX).get("Uploads", [])
    assert abandoned not in [u["Key"] for u in uploads]
    assert client.get(f"/reg/{repo}/disk/v1").content == data


def test_fsck_checksum_streams_from_the_bucket_and_quarantines_bad_bytes(
    maintenance: BucketRegistry, client: httpx.Client, repo: str
) -> None:
    data = random_image(12_000)
    assert upload_raw(client, f"/reg/{repo}/disk/v1", data).status_code == 201
    healthy = cli_json("fsck", "--data-root", root_of(maintenance), "--checksum", check=0)
    assert healthy["ok"], healthy

    s3, key = maintenance.store.client(), PREFIX + maintenance.blob_key(data)
    s3.put_object(Bucket=maintenance.bucket, Key=key, Body=random_image(len(data)))
    broken = cli_json("fsck", "--data-root", root_of(maintenance), "--checksum", check=1)
    assert not broken["ok"]
    assert blake3_hex(data) in json.dumps(broken)
    assert maintenance.blob_key(data) not in maintenance.listed("blobs/")
    assert any(k.startswith(f"quarantine/{blake3_hex(data)}.") for k in maintenance.listed())
    assert_error(client.get(f"/reg/{repo}/disk/v1"), 500, "DATA_LOSS")
    # The same bytes uploaded again heal it.
    assert upload_raw(client, f"/reg/{repo}/disk/v1", data).status_code == 201
    assert client.get(f"/reg/{repo}/disk/v1").content == data
    assert cli_json("fsck", "--data-root", root_of(maintenance), "--checksum", check=0)["ok"]


def test_du_counts_what_the_bucket_holds(
    maintenance: BucketRegistry, client: httpx.Client, repo: str
) -> None:
    data = random_image(8_000)
    assert upload_raw(client, f"/reg/{repo}/disk/v1", data).status_code == 201
    assert upload_raw(client, f"/reg/{repo}/other/v1", data).status_code == 201
    report = cli_json("du", "--data-root", root_of(maintenance), check=0)
    assert report["stored_blobs"] >= 1
    assert report["saved_bytes"] >= len(data)


def test_import_legacy_into_a_bucket(
    maintenance: BucketRegistry, client: httpx.Client, repo: str, tmp_path: Path
) -> None:
    data = random_image(15_000)
    entry = tmp_path / "old" / repo / "disk" / "v1"
    entry.mkdir(parents=True)
    (entry / "image.bin").write_bytes(data)
    (entry / "meta.json").write_text(json.dumps({"from": "go"}))
    report = cli_json(
        "import-legacy", "--data-root", root_of(maintenance), "--from", str(tmp_path / "old"),
        check=0,
    )  # fmt: skip
    assert report["counts"]["imported"] == 1, report
    assert maintenance.blob_key(data) in maintenance.listed("blobs/")
    assert client.get(f"/reg/{repo}/disk/v1").content == data
    assert client.get(f"/reg/{repo}/disk/v1/meta").json()["data"] == {"from": "go"}
    assert (tmp_path / "old" / repo / "disk" / "v1" / "image.bin").exists()  # a copy


def test_a_reg_upload_pulls_as_a_containerdisk_from_the_bucket(
    client: httpx.Client, repo: str
) -> None:
    """/v2 frames the blob as a tar layer read from the bucket (no descriptor to send)."""
    disk = random_image(70_000)
    assert upload_raw(client, f"/reg/{repo}/disk/v1", disk).status_code == 201
    wait_until(
        lambda: client.get(f"/v2/{repo}/disk/manifests/v1").status_code == 200,
        "the containerDisk layer hashed",
    )
    assert_pulls_as_containerdisk(client, f"{repo}/disk", "v1", disk)


def test_readyz_reports_the_blob_store(client: httpx.Client) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["data"] == {"catalog": "ok", "blob_store": "ok", "free_bytes": None}


KEY_LAYOUT = re.compile(
    r"(blobs/blake3/[0-9a-f]{64}"
    r"|staging/[0-9a-f]{32}"
    r"|staging/sessions/[0-9a-f]{32}/([0-9]{20}|blob)"
    r"|locks/[0-9a-f]{32}"
    r"|(trash|purged|quarantine)/[0-9a-f]{64}\.[0-9a-f]{16})"
)
"""Every key the store makes (store.py's layout): digests and random names only."""


def test_keys_come_from_digests_and_random_names_never_from_the_request(
    registry: BucketRegistry, client: httpx.Client
) -> None:
    """Names, tags, metadata and upload ids a client chooses, made to look like keys of
    the layout or to climb out of it, reach no key: every object in the bucket (of every
    test of the module so far, too) has a key of the layout."""
    repo = "blobs-blake3-" + secrets.token_hex(4)
    tricky = {"key": "../../locks/x", "path": "blobs/blake3/" + "0" * 64}
    data = random_image(30_000)
    posted = upload(client, f"/reg/{repo}/staging/v..1", data, tricky)
    assert posted.status_code == 201, posted.text
    put = upload_raw(client, f"/reg/{repo}/locks/trash.1", data, tricky)
    assert put.status_code == 201, put.text
    name = f"{repo}/quarantine"
    session = start_upload(client, name)
    for hostile in ("../../blobs/blake3/" + "0" * 64, "0" * 31 + "/", "%2e%2e%2fblobs"):
        refused = client.patch(
            session.rsplit("/", 1)[0] + "/" + hostile,
            content=b"bytes",
            headers={"Content-Range": "0-4", "Content-Type": "application/octet-stream"},
        )
        assert refused.status_code in (400, 404), (hostile, refused.status_code)
    written = client.patch(
        session,
        content=data,
        headers={"Content-Range": f"0-{len(data) - 1}", "Content-Type": "application/octet-stream"},
    )
    assert written.status_code == 202, written.text
    keys = registry.listed()
    assert registry.blob_key(data) in keys
    strays = [key for key in keys if not KEY_LAYOUT.fullmatch(key)]
    assert strays == []
    assert not any(repo in key for key in keys)


# -- replicas without a shared volume --------------------------------------------------------


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small qcow2 image made by qemu-img (plus random bytes: a blob of its own), or
    a raw disk without qemu-img."""
    path = tmp_path_factory.mktemp("disk") / "disk.qcow2"
    if shutil.which("qemu-img") is None:
        return random_image(300_000)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True, timeout=60
    )
    return path.read_bytes()


def test_a_push_begun_on_one_replica_is_finished_on_another_with_no_shared_volume(
    registry: BucketRegistry, client: httpx.Client, repo: str, qcow2: bytes, tmp_path: Path
) -> None:
    database = registered_url(registry.server.data_root)
    if database is None:
        pytest.skip("replicas share a PostgreSQL catalog; SQLite lives in one data root")
    other = serve_bucket(
        tmp_path / "replica", registry.store, registry.bucket, "--database-url", database,
        flags=False,
    )  # fmt: skip
    try:
        disk = qcow2 + secrets.token_bytes(8)  # bytes no other test pushed
        name = f"{repo}/disk"
        location = start_upload(client, name)
        half = len(disk) // 2
        first = client.patch(
            location,
            content=disk[:half],
            headers={"Content-Range": f"0-{half - 1}", "Content-Type": "application/octet-stream"},
        )
        assert first.status_code == 202, first.text
        with other.server.client() as second:
            rest = second.patch(
                first.headers["location"],
                content=disk[half:],
                headers={
                    "Content-Range": f"{half}-{len(disk) - 1}",
                    "Content-Type": "application/octet-stream",
                },
            )
            assert rest.status_code == 202, rest.text
            done = second.put(rest.headers["location"], params={"digest": sha256_digest(disk)})
            assert done.status_code == 201, done.text
            assert put_manifest(second, name, "v1", artifact_manifest(disk)).status_code == 201
        assert client.get(f"/reg/{repo}/disk/v1").content == disk
        assert client.get(f"/v2/{name}/blobs/{sha256_digest(disk)}").content == disk
        assert registry.blob_key(disk) in registry.listed("blobs/")
        for root in (registry.server.data_root, other.server.data_root):
            assert sorted(p.name for p in root.iterdir()) == [], root
    finally:
        other.server.stop()


# -- the object store fails during requests ---------------------------------------------------


def _restart(store: SeaweedFS) -> None:
    """Start the stopped ``weed mini`` again, same ports and directory: the same store."""
    log = store.log_path.open("ab")
    store.process = subprocess.Popen(
        store.process.args,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=store.log_path.parent,
        start_new_session=True,
    )
    log.close()


def _all_at_once(calls: dict[str, Any]) -> dict[str, httpx.Response]:
    """Run the requests in threads: each waits out the client's retries before its 503."""
    answers: dict[str, httpx.Response] = {}

    def one(name: str) -> None:
        answers[name] = calls[name]()

    threads = [threading.Thread(target=one, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(answers) == set(calls)
    return answers


@pytest.mark.slow
def test_an_object_store_outage_is_503_with_retry_after_and_changes_nothing(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = start_seaweedfs(tmp_path / "weed")
    bucket = store.new_bucket()
    with catalog_database(backend, tmp_path / "data"):
        _outage_changes_nothing(store, bucket, tmp_path / "data", monkeypatch)


def _outage_changes_nothing(
    store: SeaweedFS, bucket: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage = serve_bucket(root, store, bucket, "--keep-history", "0")
    try:
        with outage.server.client() as http:
            kept = random_image(20_000)
            assert upload_raw(http, "/reg/outage/disk/v1", kept, {"k": "v"}).status_code == 201
            dropped = random_image(20_001)
            assert upload_raw(http, "/reg/outage/disk/v0", dropped).status_code == 201
            session = start_upload(http, "outage/disk")
            store.stop()

            fresh = random_image(30_000)
            answers = _all_at_once(
                {
                    "put": lambda: upload_raw(http, "/reg/outage/disk/v2", fresh),
                    "post": lambda: upload(http, "/reg/outage/disk/v3", fresh),
                    "get": lambda: http.get("/reg/outage/disk/v1"),
                    "delete": lambda: http.delete("/reg/outage/disk/v0"),
                    "ready": lambda: http.get("/readyz"),
                    "patch": lambda: http.patch(
                        session,
                        content=fresh,
                        headers={
                            "Content-Range": f"0-{len(fresh) - 1}",
                            "Content-Type": "application/octet-stream",
                        },
                    ),
                }
            )
            # A delete is the catalog's change alone: it commits, and the object it
            # could not copy to trash stays, named by no row, until gc (below).
            assert answers["delete"].status_code == 200, answers["delete"].text
            for name in ("put", "post", "get"):
                body = assert_error(answers[name], 503, "UNAVAILABLE")
                assert answers[name].headers["retry-after"].isdigit(), name
                assert store.secret_key not in answers[name].text
                assert "reason" in body.get("context", {}), body
            ready = assert_error(answers["ready"], 503, "UNAVAILABLE")
            assert "blob_store" in ready["context"]
            assert_oci_error(answers["patch"], 503, "UNAVAILABLE")
            assert answers["patch"].headers["retry-after"].isdigit()

            # The catalog still answers, and nothing half-written is visible.
            assert http.get("/reg/outage/disk").json()["data"] == ["v1"]
            assert http.get("/reg/outage/disk/v1/meta").json()["data"] == {"k": "v"}

            _restart(store)
            wait_until(lambda: http.get("/readyz").status_code == 200, "the store back")

            # A restarted SeaweedFS takes writes (what /readyz probes) before it serves its
            # old volumes again; a read that fails after the 200 went out can only drop the
            # connection, so wait for the store's own readiness to read.
            def reads_back() -> bool:
                try:
                    return http.get("/reg/outage/disk/v1").content == kept
                except httpx.HTTPError:  # the connection dropped mid-body
                    return False

            wait_until(reads_back, "the old bytes readable")
            assert upload_raw(http, "/reg/outage/disk/v2", fresh).status_code == 201
            assert http.get("/reg/outage/disk/v2").content == fresh
            assert http.delete("/reg/outage/disk/v1").status_code == 200
            # The errors of the outage showed no credential anywhere.
            assert_secret_kept(
                store.secret_key,
                outage.server.process.pid,
                http,
                outage.server.log(),
                *answers.values(),
            )
        assert outage.blob_key(kept) not in outage.listed("blobs/")
        assert outage.blob_key(dropped) in outage.listed("blobs/")  # v0's, for gc
        # What the failed uploads staged goes with gc's grace, as a crash's would.
        for name, value in outage.env.items():  # gc opens the same bucket
            monkeypatch.setenv(name, value)
        report = cli_json(
            "gc", "--data-root", str(outage.server.data_root), "--grace", "0", check=0
        )  # fmt: skip
        assert outage.listed("staging/") == [], report
        assert outage.blob_key(dropped) not in outage.listed("blobs/"), report
        uploads = store.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert uploads == []
    finally:
        outage.server.stop()
        store.stop()


def test_cli_refuses_bad_blob_store_urls(tmp_path: Path) -> None:
    for url, words in (
        ("gs://bucket", "s3://"),
        ("s3://Bad_Bucket", "bucket name"),
        ("s3://ab", "bucket name"),
        ("s3://192.168.1.1", "bucket name"),
        ("s3://key:secret@bucket", "credentials"),
        ("s3://bucket/../up", "prefix"),
    ):
        done = cli("du", "--data-root", str(tmp_path), "--blob-store", url)
        assert done.returncode != 0
        assert "--blob-store" in done.stderr, done.stderr
        assert words in done.stderr, (url, done.stderr)
        assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())
