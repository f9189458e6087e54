"""gc: crash debris is reclaimed after the grace period; live uploads and referenced blobs never."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cloudimg.catalog import Catalog
from cloudimg.cli.gc import print_report
from cloudimg.maintenance import GcAction, GcKind, GcReport, collect_garbage, parse_duration
from tests.conftest import RunningServer
from tests.maintenance_support import (
    age,
    cli,
    cli_json,
    open_test_catalog,
    put,
    sql,
    stage,
    store_of,
)
from tests.support import blake3_hex, random_image


@pytest.fixture
async def catalog(tmp_path: Path, backend: str) -> AsyncIterator[Catalog]:
    async with open_test_catalog(tmp_path / "data", backend) as opened:
        yield opened


def data_root(catalog: Catalog) -> Path:
    return store_of(catalog).root


def kinds(report: object) -> dict[str, int]:
    totals = report.totals()  # type: ignore[attr-defined]
    return {kind: total["count"] for kind, total in totals.items() if total["count"]}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("90", 90), ("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "5x", "h", "1 h 2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


async def test_dead_staging_file_is_removed(catalog: Catalog) -> None:
    debris = store_of(catalog).staging_dir / "deadbeef.part"
    debris.write_bytes(b"x" * 1000)  # what a killed upload leaves: no one holds it
    report = await collect_garbage(catalog, store_of(catalog), grace=0)
    assert kinds(report) == {"staging": 1}
    assert report.bytes_freed == 1000
    assert not debris.exists()


async def test_running_upload_keeps_its_staging_file_whatever_the_grace(catalog: Catalog) -> None:
    writer = await catalog.blobs.open_staging()
    await writer.write(random_image(100_000))
    staging = store_of(catalog).staging_dir
    for path in staging.iterdir():
        age(path)  # even when it looks ancient
    report = await collect_garbage(catalog, store_of(catalog), grace=0)
    assert report.skipped_live_staging == 1
    assert len(list(staging.iterdir())) == 1
    staged = await writer.finish()  # written, not committed yet: still held
    age(Path(staged.key))
    assert (await collect_garbage(catalog, store_of(catalog), grace=0)).skipped_live_staging == 1
    await catalog.tags.commit_upload("repo", "img", "v1", staged, {})
    await catalog.blobs.discard(staged)
    assert list(staging.iterdir()) == []
    info = await catalog.reads.get_tag("repo", "img", "v1")
    assert store_of(catalog).blob_path(info.digest).stat().st_size == 100_000


async def test_young_debris_waits_for_the_grace_period(catalog: Catalog) -> None:
    store = store_of(catalog)
    (store.staging_dir / "young.part").write_bytes(b"x")
    (store.trash_dir / f"{'a' * 64}.0123").write_bytes(b"y")
    report = await collect_garbage(catalog, store_of(catalog), grace=3600)
    assert report.actions == []
    assert report.skipped_young == 2
    assert len(list(store.staging_dir.iterdir())) == 1


async def test_trash_of_a_rolled_back_delete_is_restored(catalog: Catalog) -> None:
    data = random_image(5000)
    digest = await put(catalog, "repo/img/v1", data)
    store = store_of(catalog)
    # A crash between the delete's rename and its commit: the row stays, the file is in trash.
    trash = store.trash_dir / f"{digest}.00ff00ff"
    os.rename(store.blob_path(digest), trash)
    age(trash)
    report = await collect_garbage(catalog, store_of(catalog), grace=0)
    assert kinds(report) == {"restored": 1}
    assert store.blob_path(digest).read_bytes() == data
    assert not trash.exists()
    assert (await catalog.reads.resolve("repo", "img", "v1")).digest == digest


async def test_trash_of_a_committed_delete_is_removed(catalog: Catalog) -> None:
    store = store_of(catalog)
    gone = store.trash_dir / f"{blake3_hex(b'gone')}.01"
    gone.write_bytes(b"gone")
    kept_digest = await put(catalog, "repo/img/v1", b"kept")
    duplicate = store.trash_dir / f"{kept_digest}.02"  # the blob file is there as well
    duplicate.write_bytes(b"kept")
    for path in (gone, duplicate):
        age(path)
    report = await collect_garbage(catalog, store_of(catalog), grace=0)
    assert kinds(report) == {"trash": 2}
    assert list(store.trash_dir.iterdir()) == []
    assert store.blob_path(kept_digest).read_bytes() == b"kept"


async def test_trash_copy_of_a_quarantined_blob_is_kept(catalog: Catalog) -> None:
    """The catalog still names the digest: gc never purges it, nor serves it again."""
    digest = await put(catalog, "repo/img/v1", b"suspect")
    store = store_of(catalog)
    assert await catalog.maintenance.quarantine_blob(store_of(catalog), digest, None)
    copy = store.trash_dir / f"{digest}.03"
    copy.write_bytes(b"suspect")
    age(copy)
    report = await collect_garbage(catalog, store_of(catalog), grace=0)
    assert kinds(report) == {}
    assert copy.exists()
    assert await catalog.maintenance.restore_trashed() == []
    assert not store.blob_path(digest).exists()


async def test_blob_file_without_a_row_is_reclaimed(catalog: Catalog) -> None:
    store = store_of(catalog)
    staged = await stage(catalog, b"orphan bytes")
    await store.place(staged)  # a crash after placing, before the commit
    path = store.blob_path(staged.blake3)
    assert (await collect_garbage(catalog, store_of(catalog), grace=3600)).actions == []
    age(path)
    report = await collect_garbage(catalog, store_of(catalog), grace=3600)
    assert kinds(report) == {"orphan-blob": 1}
    assert report.bytes_freed == len(b"orphan bytes")
    assert not path.exists()
    assert list(store.trash_dir.iterdir()) == []


async def test_wrong_refcounts_are_repaired(catalog: Catalog) -> None:
    digest = await put(catalog, "repo/img/v1", b"shared")
    await put(catalog, "repo/img/v2", b"shared")
    root = data_root(catalog)
    sql(root, "UPDATE blobs SET refcount = 7 WHERE digest = ?", digest)
    report = await collect_garbage(catalog, store_of(catalog), grace=0)
    assert kinds(report) == {"refcount": 1}
    assert "refcount was 7, 2 tag(s)" in report.actions[0].detail
    assert sql(root, "SELECT refcount FROM blobs WHERE digest = ?", digest) == [(2,)]
    assert (await collect_garbage(catalog, store_of(catalog), grace=0)).actions == []


async def test_blob_row_no_tag_names_goes_with_its_file(catalog: Catalog) -> None:
    store = store_of(catalog)
    staged = await stage(catalog, b"unreferenced")
    await store.place(staged)
    root = data_root(catalog)
    sql(
        root,
        "INSERT INTO blobs (digest, size, sha256, refcount, created_at)"
        " VALUES (?, ?, ?, 0, CURRENT_TIMESTAMP)",
        staged.blake3,
        staged.size,
        staged.sha256,
    )
    report = await collect_garbage(catalog, store_of(catalog), grace=3600)  # rows: no grace needed
    assert kinds(report) == {"unreferenced-row": 1}
    assert sql(root, "SELECT count(*) FROM blobs") == [(0,)]
    assert not store.blob_path(staged.blake3).exists()
    assert list(store.trash_dir.iterdir()) == []


async def test_dry_run_changes_nothing(catalog: Catalog) -> None:
    store = store_of(catalog)
    await put(catalog, "repo/img/v1", b"data")
    root = data_root(catalog)
    sql(root, "UPDATE blobs SET refcount = 3")
    (store.staging_dir / "dead.part").write_bytes(b"x")
    trash = store.trash_dir / f"{blake3_hex(b'old')}.01"
    trash.write_bytes(b"old")
    for path in [*store.staging_dir.iterdir(), trash]:
        age(path)
    before = sorted(p.relative_to(root) for p in root.rglob("*") if "catalog" not in p.name)
    report = await collect_garbage(catalog, store_of(catalog), grace=0, dry_run=True)
    assert kinds(report) == {"staging": 1, "trash": 1, "refcount": 1}
    after = sorted(p.relative_to(root) for p in root.rglob("*") if "catalog" not in p.name)
    assert after == before
    assert sql(root, "SELECT refcount FROM blobs") == [(3,)]


async def test_referenced_blobs_survive_gc(catalog: Catalog) -> None:
    data = {f"repo/img/v{i}": random_image(1000 + i) for i in range(5)}
    for ref, payload in data.items():
        await put(catalog, ref, payload)
    for path in store_of(catalog).blobs_dir.rglob("*"):
        age(path)
    report = await collect_garbage(catalog, store_of(catalog), grace=0)
    assert report.actions == []
    for ref, payload in data.items():
        blob = await catalog.reads.resolve(*ref.split("/"))
        assert store_of(catalog).blob_path(blob.digest).read_bytes() == payload


def test_cli_reports_json_and_exit_code(tmp_path: Path) -> None:
    root = tmp_path / "data"
    cli("db", "upgrade", "--data-root", str(root), check=0)  # gc needs a registry there
    (root / "staging" / "dead.part").write_bytes(b"x" * 10)
    report = cli_json("gc", "--data-root", str(root), "--grace", "0", check=0)
    assert report["ok"] is True
    assert report["totals"]["staging"] == {"count": 1, "bytes": 10}
    assert report["bytes_freed"] == 10
    assert report["dry_run"] is False
    human = cli("gc", "--data-root", str(root), "--grace", "0s", check=0)
    assert "freed 0 B" in human.stdout
    bad = cli("gc", "--data-root", str(root), "--grace", "soon")
    assert bad.returncode == 2
    assert "not a duration" in bad.stderr


def test_cli_reads_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "env-data"
    cli("db", "upgrade", "--data-root", str(root), check=0)  # gc needs a registry there
    (root / "staging" / "dead.part").write_bytes(b"x")
    env = {**os.environ, "CLOUDIMG_DATA_ROOT": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "cloudimg", "gc", "--grace", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not (root / "staging" / "dead.part").exists()


# -- the human report: every kind of action has its label ---------------------------------


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_every_kind_of_action_is_printed_with_its_label(
    dry_run: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printer knows each kind the report can hold (a kind without a label crashed it)."""
    report = GcReport(dry_run=dry_run, grace_seconds=0)
    report.actions = [GcAction(kind, f"target-{kind.value}", 10) for kind in GcKind]
    print_report(report)
    out = capsys.readouterr().out
    for kind in GcKind:
        label = kind.label(dry_run)
        assert f"{label}: 1 (10 B)\n  target-{kind.value}\n" in out
    assert len({kind.label(dry_run) for kind in GcKind}) == len(GcKind)  # told apart
    planned = [kind for kind in GcKind if "would" in kind.label(True)]
    assert planned == list(GcKind)  # a dry run says so for every kind
    assert not any("would" in kind.label(False) for kind in GcKind)
    assert list(report.totals()) == [kind.value for kind in GcKind]  # JSON names, gc's order


def test_a_detail_without_a_target_is_printed_alone(capsys: pytest.CaptureFixture[str]) -> None:
    report = GcReport(dry_run=False, grace_seconds=0)
    report.actions = [GcAction(GcKind.PUSHED_MANIFEST, "", 0, "2 released, 0 pending")]
    print_report(report)
    assert "\n  2 released, 0 pending\n" in capsys.readouterr().out


WRITE_TOKEN = "wt-gc-0123456789abcdef"


def test_gc_reports_an_abandoned_oci_upload_session(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    """An OCI upload started and left: gc drops its catalog row and prints that it did
    (it crashed with KeyError: 'upload-session' after doing the work)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{WRITE_TOKEN}\n")
    server = server_factory("--write-token-file", str(tokens))
    root = server.data_root
    with server.client(headers={"Authorization": f"Bearer {WRITE_TOKEN}"}) as http:
        started = http.post("/v2/vms/disk/blobs/uploads/")
    assert started.status_code == 202, started.text
    session = started.headers["location"].rsplit("/", 1)[-1]
    assert sql(root, "SELECT id FROM oci_uploads") == [(session,)]

    preview = cli("gc", "--data-root", str(root), "--grace", "0s", "--dry-run", check=0)
    label = GcKind.UPLOAD_SESSION.label(dry_run=True)
    assert f"{label}: 1 (0 B)\n  {session}\n" in preview.stdout
    assert "Traceback" not in preview.stderr
    assert sql(root, "SELECT id FROM oci_uploads") == [(session,)]

    done = cli("gc", "--data-root", str(root), "--grace", "0s", check=0)
    assert f"{GcKind.UPLOAD_SESSION.label(dry_run=False)}: 1 (0 B)\n  {session}\n" in done.stdout
    assert "gc done in" in done.stdout
    assert "Traceback" not in done.stderr
    assert sql(root, "SELECT id FROM oci_uploads") == []
    with server.client(headers={"Authorization": f"Bearer {WRITE_TOKEN}"}) as http:
        assert http.get(f"/v2/vms/disk/blobs/uploads/{session}").status_code == 404
