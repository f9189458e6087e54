"""``cloudimg copy-blobs``: a data root's blobs into a bucket, resumable and verified.

A real data root (uploads committed through the core, on SQLite and PostgreSQL), a real
SeaweedFS (``tests/object_store.py``), the command run as a process. The copy refuses
bytes that do not hash to their digest, a rerun after a failure or a kill finishes the
copy, ``--verify`` catches an object changed in the bucket, and the catalog is never
written.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudimg.blobstore import BlobReader, FilesystemBlobStore
from cloudimg.blobstore.s3 import S3BlobStore, S3Location, parse_s3_url
from cloudimg.catalog import Catalog
from cloudimg.config import Settings
from cloudimg.core import commit_staged
from cloudimg.maintenance import CopyReport, copy_blobs
from cloudimg.registry import open_registry
from tests.databases import catalog_database, catalog_url
from tests.maintenance_support import catalog_state
from tests.object_store import SeaweedFS, s3_location
from tests.support import random_image

PREFIX = "moved"


@dataclass
class Registry:
    """A data root with committed blobs, and the bucket to copy them into."""

    root: Path
    digests: dict[str, bytes]
    """Every blob the catalog names, with its bytes."""
    orphan: str
    """A blob file placed by an upload that never committed (no catalog row)."""
    server: SeaweedFS
    bucket: str

    @property
    def location(self) -> S3Location:
        return s3_location(self.server, self.bucket, prefix=f"{PREFIX}/")

    def key(self, digest: str) -> str:
        return f"{PREFIX}/blobs/blake3/{digest}"


async def _populate(root: Path, images: dict[str, bytes]) -> tuple[dict[str, bytes], str]:
    settings = Settings(data_root=root, database_url=catalog_url(root))
    async with open_registry(settings, migrate=True) as registry:
        digests = {}
        for ref, data in images.items():
            writer = await registry.blobs.open_staging()
            await writer.write(data)
            staged = await writer.finish()
            repo, image, tag = ref.split("/")
            await commit_staged(registry.catalog, registry.blobs, (repo, image, tag), staged, {})
            digests[staged.blake3] = data
        # A crash after the place and before the commit leaves a file no row names.
        writer = await registry.blobs.open_staging()
        await writer.write(random_image(70_000))
        staged = await writer.finish()
        assert await registry.blobs.place(staged) == "placed"
        return digests, staged.blake3


def make_registry(
    root: Path, server: SeaweedFS, backend: str, images: dict[str, bytes]
) -> Iterator[Registry]:
    with catalog_database(backend, root):
        digests, orphan = asyncio.run(_populate(root, images))
        yield Registry(root, digests, orphan, server, server.new_bucket())


@pytest.fixture(params=["sqlite", "postgres"])
def registry(
    request: pytest.FixtureRequest, tmp_path: Path, seaweedfs: SeaweedFS
) -> Iterator[Registry]:
    images = {
        "alpine/base/v1": random_image(300_000),
        "alpine/base/v2": random_image(1_200_000),
        "debian/cloud/12": random_image(5 * 1024 * 1024 + 17),
        "debian/cloud/same": b"",  # replaced below: the same bytes under a second tag
    }
    images["debian/cloud/same"] = images["alpine/base/v1"]
    yield from make_registry(tmp_path / "data", seaweedfs, request.param, images)


def command(registry: Registry, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cloudimg",
        "copy-blobs",
        "--data-root",
        str(registry.root),
        "--to",
        f"s3://{registry.bucket}/{PREFIX}",
        "--s3-endpoint",
        registry.server.endpoint,
        "--s3-path-style",
        "--quiet",
        *extra,
    ]


def environment(registry: Registry) -> dict[str, str]:
    """The catalog's URL and the credentials as boto3's usual variables (no flag takes
    a secret)."""
    env = dict(os.environ)
    env["CLOUDIMG_DATABASE_URL"] = catalog_url(registry.root)
    env["AWS_ACCESS_KEY_ID"] = registry.server.access_key
    env["AWS_SECRET_ACCESS_KEY"] = registry.server.secret_key
    return env


def copy(registry: Registry, *extra: str, check: int) -> dict[str, Any]:
    done = subprocess.run(
        command(registry, "--json", *extra),
        capture_output=True,
        text=True,
        timeout=300,
        env=environment(registry),
    )
    assert done.returncode == check, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def in_bucket(registry: Registry) -> dict[str, bytes]:
    """Every blob object under the prefix, by digest, with its bytes."""
    client = registry.server.client()
    found = {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=registry.bucket, Prefix=f"{PREFIX}/blobs/blake3/"
    )
    for page in pages:
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=registry.bucket, Key=item["Key"])["Body"].read()
            found[item["Key"].rsplit("/", 1)[1]] = body
    return found


def expected(registry: Registry) -> dict[str, bytes]:
    orphan = FilesystemBlobStore(registry.root).blobs_dir
    path = next(p for p in orphan.rglob("*") if p.is_file() and registry.orphan.endswith(p.name))
    return {**registry.digests, registry.orphan: path.read_bytes()}


def blob_file(registry: Registry, digest: str) -> Path:
    (path,) = [
        p
        for p in FilesystemBlobStore(registry.root).blobs_dir.rglob("*")
        if p.is_file() and digest.endswith(p.name) and p.parent.name == digest[:2]
    ]
    return path


def test_every_blob_reaches_the_bucket_and_the_catalog_is_not_written(
    registry: Registry,
) -> None:
    before = catalog_state(registry.root)
    report = copy(registry, "--verify", check=0)
    # Four tags, three distinct blobs, one orphan file: four objects, each its digest.
    assert (report["copied"], report["present"], report["unreferenced"]) == (4, 0, 1)
    assert report["verified"] == 4
    assert report["copied_bytes"] == sum(len(data) for data in expected(registry).values())
    assert report["problems"] == []
    assert report["ok"] is True
    assert in_bucket(registry) == expected(registry)
    assert catalog_state(registry.root) == before
    # Nothing left in staging: every staged copy was placed.
    client = registry.server.client()
    staging = client.list_objects_v2(Bucket=registry.bucket, Prefix=f"{PREFIX}/staging/")
    assert staging.get("KeyCount", 0) == 0

    # The store the servers will open reads the same bytes under the same digests.
    async def read_back() -> None:
        store = S3BlobStore(registry.location)
        for digest, data in registry.digests.items():
            reader = await store.open(digest)
            assert reader is not None
            try:
                assert await asyncio.to_thread(reader.read, len(data) + 1, 0) == data
            finally:
                reader.close()

    asyncio.run(read_back())

    again = copy(registry, check=0)
    assert (again["copied"], again["present"]) == (0, 4)
    assert catalog_state(registry.root) == before


def test_bytes_that_do_not_hash_to_their_digest_are_refused_and_a_rerun_copies_the_rest(
    registry: Registry,
) -> None:
    digest = max(registry.digests, key=lambda d: len(registry.digests[d]))
    path = blob_file(registry, digest)
    good = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])  # same size, other bytes

    report = copy(registry, check=1)
    assert [p["digest"] for p in report["problems"]] == [digest]
    assert "hash to blake3:" in report["problems"][0]["reason"]
    assert report["problems"][0]["tags"] == ["debian/cloud:12"]
    assert report["copied"] == 3
    assert digest not in in_bucket(registry)  # never under its key, not even staged
    client = registry.server.client()
    staging = client.list_objects_v2(Bucket=registry.bucket, Prefix=f"{PREFIX}/staging/")
    assert staging.get("KeyCount", 0) == 0

    path.write_bytes(good)  # the volume repaired (a re-upload would do the same)
    rerun = copy(registry, "--verify", check=0)
    assert (rerun["copied"], rerun["present"], rerun["verified"]) == (1, 3, 4)
    assert in_bucket(registry) == expected(registry)


def test_verify_finds_an_object_changed_in_the_bucket(registry: Registry) -> None:
    copy(registry, check=0)
    digest = sorted(registry.digests)[0]
    data = registry.digests[digest]
    client = registry.server.client()
    client.put_object(Bucket=registry.bucket, Key=registry.key(digest), Body=data[::-1])

    report = copy(registry, "--verify", check=1)
    assert (report["copied"], report["present"]) == (0, 4)  # the size matches: present
    assert [p["digest"] for p in report["problems"]] == [digest]
    assert "verify: the target's copy hashes to blake3:" in report["problems"][0]["reason"]
    assert report["verified"] == 3
    human = subprocess.run(
        command(registry, "--verify"),
        capture_output=True,
        text=True,
        timeout=300,
        env=environment(registry),
    )
    assert human.returncode == 1
    assert f"problem: blake3:{digest}" in human.stderr
    assert "1 problem(s)" in human.stdout


def test_an_object_of_another_size_under_the_digest_is_a_problem_not_a_rewrite(
    registry: Registry,
) -> None:
    digest = sorted(registry.digests)[0]
    client = registry.server.client()
    client.put_object(Bucket=registry.bucket, Key=registry.key(digest), Body=b"short")
    report = copy(registry, check=1)
    assert [p["digest"] for p in report["problems"]] == [digest]
    assert "the target holds it with 5 bytes" in report["problems"][0]["reason"]
    assert in_bucket(registry)[digest] == b"short"  # write-once: left for a person


class DeletingSource(FilesystemBlobStore):
    """The volume's store, where a tag is deleted (its history purged) just before its
    blob is opened for the copy: a delete that commits while the copy runs."""

    def __init__(self, root: Path, catalog: Catalog, digest: str, ref: str) -> None:
        super().__init__(root)
        self.catalog, self.digest, self.ref = catalog, digest, ref

    async def open(self, blake3_hex: str) -> BlobReader | None:
        if blake3_hex == self.digest:
            repo, image, tag = self.ref.split("/")
            await self.catalog.tags.delete_tag(repo, image, tag, purge_history=True)
        return await super().open(blake3_hex)


def test_a_blob_deleted_during_the_copy_is_no_problem_a_lost_file_is(registry: Registry) -> None:
    """Each missing file is confirmed against the catalog as it is now, as fsck does."""
    by_size = sorted(registry.digests, key=lambda d: len(registry.digests[d]))
    deleted = next(d for d in by_size if len(registry.digests[d]) == 1_200_000)  # one tag
    lost = by_size[-1]
    blob_file(registry, lost).unlink()  # its row stays: a real loss

    async def run() -> CopyReport:
        settings = Settings(data_root=registry.root, database_url=catalog_url(registry.root))
        async with open_registry(settings, migrate=False) as opened:
            source = DeletingSource(registry.root, opened.catalog, deleted, "alpine/base/v2")
            target = S3BlobStore(registry.location)
            return await copy_blobs(opened.catalog, source, target, verify=True)

    report = asyncio.run(run())
    assert report.deleted == 1
    assert [(p.digest, p.tags) for p in report.problems] == [(lost, ("debian/cloud:12",))]
    assert "no blob file in the source" in report.problems[0].reason
    assert (report.copied, report.verified) == (2, 2)  # the shared blob and the orphan
    assert set(in_bucket(registry)) == {d for d in expected(registry) if d not in (deleted, lost)}


@pytest.fixture
def big_registry(tmp_path: Path, seaweedfs: SeaweedFS) -> Iterator[Registry]:
    images = {f"big/disk/v{i}": random_image(12 * 1024 * 1024) for i in range(6)}
    yield from make_registry(tmp_path / "data", seaweedfs, "sqlite", images)


@pytest.mark.slow
def test_a_copy_killed_midway_is_finished_by_running_it_again(big_registry: Registry) -> None:
    registry = big_registry
    process = subprocess.Popen(
        command(registry, "--jobs", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(registry),
    )
    client = registry.server.client()
    deadline = time.monotonic() + 120
    try:
        while True:  # kill -9 once the first blob is in, while the others are not
            listed = client.list_objects_v2(
                Bucket=registry.bucket, Prefix=f"{PREFIX}/blobs/blake3/"
            )
            if listed.get("KeyCount", 0) >= 1 or process.poll() is not None:
                break
            assert time.monotonic() < deadline, "no blob reached the bucket"
            time.sleep(0.02)
        assert process.poll() is None, "the copy ended before it could be interrupted"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    placed = len(in_bucket(registry))
    assert 1 <= placed < len(expected(registry))

    report = copy(registry, "--verify", check=0)
    assert report["present"] == placed
    assert report["copied"] == len(expected(registry)) - placed
    assert report["verified"] == len(expected(registry))
    assert in_bucket(registry) == expected(registry)


def test_a_bucket_that_is_not_there_is_one_line(registry: Registry) -> None:
    registry.bucket = "no-such-bucket-here"
    done = subprocess.run(
        command(registry), capture_output=True, text=True, timeout=120, env=environment(registry)
    )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no botocore chatter, no traceback
    assert "no bucket 'no-such-bucket-here'" in lines[0]
    assert registry.server.secret_key not in done.stderr


def test_a_url_that_is_not_a_bucket_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudimg",
            "copy-blobs",
            "--data-root",
            str(tmp_path),
            "--to",
            "s3://Bad_Bucket/x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--to" in done.stderr
    assert "not a bucket name" in done.stderr


# -- parse_s3_url ------------------------------------------------------------------------


def test_parse_s3_url_gives_the_bucket_the_prefix_and_the_endpoint() -> None:
    assert parse_s3_url("s3://images") == S3Location(bucket="images")
    found = parse_s3_url(
        "s3://images/a/b/", endpoint="http://rgw.rook-ceph.svc:80", region="eu", path_style=True
    )
    assert found == S3Location(
        bucket="images",
        prefix="a/b/",
        endpoint_url="http://rgw.rook-ceph.svc:80",
        region="eu",
        path_style=True,
    )
    assert parse_s3_url("s3://images/cloudimg", endpoint="").endpoint_url is None


@pytest.mark.parametrize(
    "url",
    [
        "images",
        "https://images/x",
        "s3://",
        "s3://ab",
        "s3://Images",
        "s3://user:secret@images",
        "s3://images:9000/x",
        "s3://images/../other",
        "s3://images/a b",
        "s3://images/x?versionId=1",
    ],
)
def test_parse_s3_url_refuses_what_is_not_a_bucket_and_prefix(url: str) -> None:
    with pytest.raises(ValueError, match=r"s3://|bucket|prefix"):
        parse_s3_url(url)


def test_parse_s3_url_refuses_an_endpoint_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        parse_s3_url("s3://images", endpoint="rgw:80")


def test_a_data_root_that_is_not_there_is_one_line(registry: Registry, tmp_path: Path) -> None:
    """A typo in --data-root copies nothing and reports no empty success."""
    missing = tmp_path / "typo"
    args = command(registry)
    args[args.index("--data-root") + 1] = str(missing)
    env = environment(registry)
    env.pop("CLOUDIMG_DATABASE_URL")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "does not exist" in lines[0]
    assert not missing.exists()
    assert in_bucket(registry) == {}
