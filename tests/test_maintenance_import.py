"""import-legacy: the old server's tree, as it was, into the store; idempotent, resumable."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cloudimg.catalog import Catalog, upgrade_database
from cloudimg.catalog.database import NoCatalogError
from cloudimg.catalog.schema import SchemaVersionError, current_revision
from cloudimg.config import Settings
from cloudimg.maintenance import ImportReport, import_legacy
from cloudimg.maintenance.import_legacy import preview_import
from cloudimg.meta import MAX_META_BYTES
from cloudimg.registry import open_registry
from tests.databases import catalog_database, catalog_url
from tests.maintenance_support import (
    catalog_state,
    cli,
    cli_json,
    open_test_catalog,
    put,
    sql,
    store_of,
    tree_state,
)
from tests.support import blake3_hex, blob_path, random_image

UBUNTU = random_image(300_000)
DEBIAN = random_image(200_000)


@pytest.fixture
async def catalog(tmp_path: Path, backend: str) -> AsyncIterator[Catalog]:
    async with open_test_catalog(tmp_path / "data", backend) as opened:
        yield opened


@asynccontextmanager
async def open_catalog_read_only(settings: Settings) -> AsyncIterator[Catalog | None]:
    """The catalog as the dry run opens it (read only), or None when there is none yet."""
    try:
        registry = open_registry(settings, migrate=False, read_only=True)
    except NoCatalogError:
        yield None
        return
    async with registry:
        yield registry.catalog


def entry(root: Path, rel: str, data: bytes | None, meta: object = None) -> Path:
    directory = root / rel
    directory.mkdir(parents=True, exist_ok=True)
    if data is not None:
        (directory / "image.bin").write_bytes(data)
    if meta is not None:
        raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        (directory / "meta.json").write_bytes(raw)
    return directory


def legacy_tree(root: Path) -> Path:
    """Valid entries, two sharing their bytes, and the kinds of junk the walk must skip."""
    entry(root, "crownlabs/ubuntu/2204", UBUNTU, {"os": "ubuntu", "arch": "amd64"})
    entry(root, "crownlabs/ubuntu/latest", UBUNTU, {"os": "ubuntu"})
    entry(root, "teaching/debian/v12", DEBIAN, {})
    entry(root, "Bad_Repo/img/v1", b"x", {})
    entry(root, "crownlabs/ab/v1", b"x", {})  # image name too short
    entry(root, "crownlabs/ubuntu/x", b"x", {})  # tag too short
    entry(root, "crownlabs/ubuntu/no-meta", b"x")
    entry(root, "crownlabs/ubuntu/bad-meta", b"x", [1, 2])
    entry(root, "crownlabs/ubuntu/no-image", None, {})
    (root / "crownlabs" / "stray-file").write_text("not an image directory")
    return root


def by_path(report: ImportReport) -> dict[str, tuple[str, str]]:
    return {e.path: (e.outcome, e.reason) for e in report.entries}


async def test_import_copies_names_meta_and_bytes(catalog: Catalog, tmp_path: Path) -> None:
    source = legacy_tree(tmp_path / "old")
    report = await import_legacy(catalog, store_of(catalog), source)
    outcomes = by_path(report)
    assert {p for p, (o, _) in outcomes.items() if o == "imported"} == {
        "crownlabs/ubuntu/2204",
        "crownlabs/ubuntu/latest",
        "teaching/debian/v12",
    }
    skipped = {p: reason for p, (o, reason) in outcomes.items() if o == "skipped"}
    assert "invalid repo name" in skipped["Bad_Repo"]
    assert "invalid image name" in skipped["crownlabs/ab"]
    assert "invalid tag name" in skipped["crownlabs/ubuntu/x"]
    assert skipped["crownlabs/ubuntu/no-meta"] == "no meta.json"
    assert skipped["crownlabs/ubuntu/bad-meta"] == "meta.json must be a JSON object"
    assert "no image.bin" in skipped["crownlabs/ubuntu/no-image"]
    assert "not a directory" in skipped["crownlabs/stray-file"]
    assert not report.ok

    info = await catalog.reads.get_tag("crownlabs", "ubuntu", "2204")
    assert info.meta == {"os": "ubuntu", "arch": "amd64"}
    assert info.digest == blake3_hex(UBUNTU)
    assert store_of(catalog).blob_path(info.digest).read_bytes() == UBUNTU
    assert (await catalog.reads.get_tag("crownlabs", "ubuntu", "latest")).meta == {"os": "ubuntu"}
    assert (await catalog.reads.get_tag("teaching", "debian", "v12")).digest == blake3_hex(DEBIAN)
    # Identical images are one blob with two references.
    root = store_of(catalog).root
    assert sorted(sql(root, "SELECT refcount FROM blobs")) == [(1,), (2,)]
    assert (source / "crownlabs/ubuntu/2204/image.bin").read_bytes() == UBUNTU  # copy: untouched


async def test_import_twice_changes_nothing(catalog: Catalog, tmp_path: Path) -> None:
    source = legacy_tree(tmp_path / "old")
    await import_legacy(catalog, store_of(catalog), source)
    root = store_of(catalog).root
    tags_before = sql(root, "SELECT name, digest, meta, updated_at FROM tags ORDER BY name")
    second = await import_legacy(catalog, store_of(catalog), source)
    assert second.count("imported") == 0
    assert second.count("unchanged") == 3
    assert sql(root, "SELECT name, digest, meta, updated_at FROM tags ORDER BY name") == tags_before
    assert list(store_of(catalog).staging_dir.iterdir()) == []


async def test_move_takes_the_bytes_without_a_copy(catalog: Catalog, tmp_path: Path) -> None:
    source = tmp_path / "old"
    inode = entry(source, "crownlabs/ubuntu/2204", UBUNTU, {"os": "ubuntu"}) / "image.bin"
    original_inode = inode.stat().st_ino
    entry(source, "crownlabs/ubuntu/latest", UBUNTU, {})
    report = await import_legacy(catalog, store_of(catalog), source, move=True)
    assert report.ok
    assert [e.linked for e in report.entries] == [True, True]
    blob = store_of(catalog).blob_path(blake3_hex(UBUNTU))
    assert blob.stat().st_ino == original_inode  # the same file, now under its digest
    assert blob.stat().st_nlink == 1
    assert list(source.iterdir()) == []  # imported entries leave the old tree
    assert list(store_of(catalog).staging_dir.iterdir()) == []


async def test_move_resumes_after_a_crash(catalog: Catalog, tmp_path: Path) -> None:
    source = tmp_path / "old"
    committed = entry(source, "crownlabs/ubuntu/2204", UBUNTU, {"os": "ubuntu"})
    half_removed = entry(source, "crownlabs/ubuntu/latest", None, {"k": "v"})
    entry(source, "teaching/debian/v12", DEBIAN, {})
    # The crashed run had committed the first two and removed only part of the second.
    await put(catalog, "crownlabs/ubuntu/2204", UBUNTU, os="ubuntu")
    await put(catalog, "crownlabs/ubuntu/latest", UBUNTU, k="v")
    report = await import_legacy(catalog, store_of(catalog), source, move=True)
    assert by_path(report)["crownlabs/ubuntu/2204"][0] == "unchanged"
    assert by_path(report)["crownlabs/ubuntu/latest"][0] == "unchanged"
    assert by_path(report)["teaching/debian/v12"][0] == "imported"
    assert report.ok
    assert not committed.exists()
    assert not half_removed.exists()
    assert list(source.iterdir()) == []


async def test_tag_changed_since_is_not_overwritten(catalog: Catalog, tmp_path: Path) -> None:
    source = tmp_path / "old"
    entry(source, "crownlabs/ubuntu/2204", UBUNTU, {})
    newer = await put(catalog, "crownlabs/ubuntu/2204", b"uploaded through the new API")
    report = await import_legacy(catalog, store_of(catalog), source)
    assert by_path(report)["crownlabs/ubuntu/2204"][0] == "skipped"
    assert (await catalog.reads.get_tag("crownlabs", "ubuntu", "2204")).digest == newer


async def test_in_place_migration_skips_the_store_itself(catalog: Catalog) -> None:
    root = store_of(catalog).root  # the old tree is the data root itself
    entry(root, "crownlabs/ubuntu/2204", UBUNTU, {})
    report = await import_legacy(catalog, store_of(catalog), root, move=True, data_root=root)
    assert report.ok, report.entries
    assert [e.path for e in report.entries] == ["crownlabs/ubuntu/2204"]
    assert not (root / "crownlabs").exists()
    assert (await catalog.reads.get_tag("crownlabs", "ubuntu", "2204")).digest == blake3_hex(UBUNTU)


def test_cli_json(tmp_path: Path) -> None:
    source = legacy_tree(tmp_path / "old")
    data = tmp_path / "data"
    report = cli_json("import-legacy", "--data-root", str(data), "--from", str(source), check=1)
    assert report["counts"] == {"imported": 3, "unchanged": 0, "skipped": 7, "failed": 0}
    assert report["bytes_imported"] == 2 * len(UBUNTU) + len(DEBIAN)
    again = cli_json("import-legacy", "--data-root", str(data), "--from", str(source), check=1)
    assert again["counts"]["unchanged"] == 3


# -- --dry-run: says what the import would do, touches nothing -------------------------------


def outcomes(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {e["path"]: (e["outcome"], e["reason"]) for e in report["entries"]}


async def test_dry_run_predicts_the_import_and_changes_nothing(
    tmp_path: Path, backend: str
) -> None:
    source = legacy_tree(tmp_path / "old")
    data = tmp_path / "data"
    with catalog_database(backend, data):
        async with open_test_catalog(data, backend) as catalog:  # closed: no -wal left open
            await put(catalog, "crownlabs/ubuntu/2204", UBUNTU, os="ubuntu", arch="amd64")
            await put(catalog, "teaching/debian/v12", b"uploaded through the new API")
        tree, rows = tree_state(tmp_path), catalog_state(data)
        previews = [
            cli_json("import-legacy", "--data-root", str(data), "--from", str(source),
                     "--dry-run", *flags, check=1)
            for flags in ([], ["--move"])
        ]  # fmt: skip
        assert tree_state(tmp_path) == tree  # byte for byte: old tree, blobs, SQLite files
        assert catalog_state(data) == rows
        preview = previews[0]
        assert preview["dry_run"] is True
        assert outcomes(previews[1]) == outcomes(preview)
        expected = {
            "crownlabs/ubuntu/latest": "imported",
            "crownlabs/ubuntu/2204": "unchanged",
            "teaching/debian/v12": "skipped",  # other bytes in the catalog: left alone
            "Bad_Repo": "skipped",
            "crownlabs/ab": "skipped",
            "crownlabs/ubuntu/x": "skipped",
            "crownlabs/ubuntu/no-meta": "skipped",
            "crownlabs/ubuntu/bad-meta": "skipped",
            "crownlabs/ubuntu/no-image": "skipped",
            "crownlabs/stray-file": "skipped",
        }
        assert {path: outcome for path, (outcome, _) in outcomes(preview).items()} == expected
        assert preview["bytes_imported"] == len(UBUNTU)

        done = cli_json("import-legacy", "--data-root", str(data), "--from", str(source), check=1)
        assert outcomes(done) == outcomes(preview)  # outcomes and reasons, entry by entry
        assert done["counts"] == preview["counts"]
        assert done["bytes_imported"] == preview["bytes_imported"]


def test_dry_run_before_the_first_start_creates_nothing(tmp_path: Path, backend: str) -> None:
    """No data root yet (and, on PostgreSQL, a database without the schema): all is new."""
    source = legacy_tree(tmp_path / "old")
    missing = tmp_path / "not-yet" / "data"
    with ExitStack() as stack:
        url = []
        if backend == "postgresql":
            url = [
                "--database-url",
                stack.enter_context(catalog_database(backend, tmp_path / "pg")),
            ]
        tree = tree_state(tmp_path)
        preview = cli_json("import-legacy", "--data-root", str(missing), "--from", str(source),
                           *url, "--dry-run", check=1)  # fmt: skip
        assert tree_state(tmp_path) == tree
        assert not (tmp_path / "not-yet").exists()
        if url:
            assert catalog_state(tmp_path / "pg") == []  # no schema was created
    assert preview["counts"] == {"imported": 3, "unchanged": 0, "skipped": 7, "failed": 0}


@pytest.mark.parametrize("while_open", [False, True], ids=["closed", "open-elsewhere"])
async def test_the_read_only_catalog_refuses_writes(
    catalog_root: Path, backend: str, while_open: bool
) -> None:
    """Read only for real: a SQLite file whether or not a server has it open (-wal), and
    PostgreSQL transactions."""
    settings = Settings(data_root=catalog_root, database_url=catalog_url(catalog_root))
    async with open_test_catalog(catalog_root, backend) as writer:
        await put(writer, "crownlabs/ubuntu/2204", UBUNTU)
        if not while_open:
            await writer.engine.dispose()  # the last connection closes: SQLite drops -wal
        assert (catalog_root / "catalog.sqlite3-wal").exists() == (
            while_open and backend == "sqlite"
        )
        async with open_catalog_read_only(settings) as catalog:
            assert catalog is not None
            assert (await catalog.reads.get_tag("crownlabs", "ubuntu", "2204")).size == len(UBUNTU)
            with pytest.raises(DBAPIError, match=r"read-?only"):
                async with catalog.engine.begin() as connection:
                    await connection.execute(text("DELETE FROM tags"))
        assert (await writer.reads.get_tag("crownlabs", "ubuntu", "2204")).size == len(UBUNTU)


def test_dry_run_does_not_migrate_an_old_catalog(catalog_root: Path, tmp_path: Path) -> None:
    url = catalog_url(catalog_root)
    upgrade_database(url, "0001")
    settings = Settings(data_root=catalog_root, database_url=url)
    source = legacy_tree(tmp_path / "old")

    async def preview() -> None:
        async with open_catalog_read_only(settings) as catalog:
            await preview_import(catalog, source)

    with pytest.raises(SchemaVersionError, match="cloudimg db upgrade"):
        asyncio.run(preview())
    assert current_revision(url) == "0001"


# -- a hostile old tree: nothing outside it gets in, nothing outside it changes -------------

HOST_SECRET = "host-secret-" + secrets.token_hex(8)
"""What the host file holds: it must show up nowhere in the catalog."""
RUNS = {
    "import": [],
    "move": ["--move"],
    "dry-run": ["--dry-run"],
    "dry-run-move": ["--dry-run", "--move"],
}
GUARD_SECONDS = 120
"""A run still going after this is a hang (a FIFO opened for reading waits forever)."""


def run_import(data: Path, source: Path, run: str, check: int) -> dict[str, Any]:
    return cli_json(
        "import-legacy", "--data-root", str(data), "--from", str(source), *RUNS[run],
        check=check, timeout=GUARD_SECONDS,
    )  # fmt: skip


def host_file(tmp_path: Path, content: bytes, mode: int = 0o640) -> Path:
    """A file outside the old tree standing in for one of the host's (``/etc/...``)."""
    path = tmp_path / "host" / "etc" / "secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)
    return path


def file_state(path: Path) -> tuple[bytes, int, int, int]:
    """Bytes, permission bits, link count and inode of a regular file."""
    status = os.lstat(path)
    return path.read_bytes(), stat.S_IMODE(status.st_mode), status.st_nlink, status.st_ino


def old_tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every name under ``root`` as it is, following no link and opening no FIFO."""
    state: dict[str, tuple[Any, ...]] = {}
    for top, directories, files in os.walk(root):
        for name in [*directories, *files]:
            path = Path(top) / name
            status = os.lstat(path)
            if stat.S_ISREG(status.st_mode):
                content: object = path.read_bytes()
            elif stat.S_ISLNK(status.st_mode):
                content = os.readlink(path)
            else:
                content = None
            state[str(path.relative_to(root))] = (status.st_mode, status.st_nlink, content)
    return state


def registry_holds_nothing_of(data: Path, secret: str, host: Path) -> None:
    """Neither the host file's text in any catalog row, nor its file among the blobs."""
    assert secret not in repr(catalog_state(data))
    host_inode = os.lstat(host).st_ino
    for blob in (data / "blobs").rglob("*"):
        assert blob.is_dir() or os.lstat(blob).st_ino != host_inode


def json_length(column: str | dict[str, str]) -> int:
    """The length of a tag's metadata as ``json.dumps`` writes it (a JSON column reads
    back as text or as a dict, depending on the driver)."""
    return len(json.dumps(json.loads(column) if isinstance(column, str) else column))


def new_catalog(data: Path) -> None:
    cli("db", "upgrade", "--data-root", str(data), check=0)


@pytest.mark.parametrize("run", list(RUNS))
def test_a_symlinked_meta_json_is_not_followed(
    catalog_root: Path, tmp_path: Path, run: str
) -> None:
    """A meta.json linking to a host file skips its tag; the host file's text never
    becomes metadata anyone could read through /meta (it did, and a dry run said so)."""
    new_catalog(catalog_root)
    host = host_file(tmp_path, json.dumps({"password": HOST_SECRET}).encode())
    source = tmp_path / "old"
    linked = entry(source, "crownlabs/ubuntu/2204", UBUNTU)
    (linked / "meta.json").symlink_to(host)
    relative = entry(source, "crownlabs/ubuntu/rel", DEBIAN)  # ../ out of the tree, too
    (relative / "meta.json").symlink_to(os.path.relpath(host, relative))
    entry(source, "crownlabs/ubuntu/fine", UBUNTU, {"os": "ubuntu"})
    host_before, tree_before = file_state(host), old_tree_state(source)
    catalog_before = catalog_state(catalog_root)

    report = run_import(catalog_root, source, run, check=1)

    found = outcomes(report)
    for path in ("crownlabs/ubuntu/2204", "crownlabs/ubuntu/rel"):
        outcome, reason = found[path]
        assert outcome == "skipped"
        assert reason.startswith("meta.json is a symbolic link (not followed")
    assert found["crownlabs/ubuntu/fine"][0] == "imported"
    assert file_state(host) == host_before
    registry_holds_nothing_of(catalog_root, HOST_SECRET, host)
    tree_after = old_tree_state(source)
    for path in ("crownlabs/ubuntu/2204", "crownlabs/ubuntu/rel"):  # left as they were
        assert {k: v for k, v in tree_after.items() if k.startswith(path)} == {
            k: v for k, v in tree_before.items() if k.startswith(path)
        }
    if run.startswith("dry-run"):
        assert catalog_state(catalog_root) == catalog_before
        assert tree_after == tree_before
    else:
        tags = sql(catalog_root, "SELECT name, meta FROM tags ORDER BY name")
        assert [name for name, _ in tags] == ["fine"]


@pytest.mark.parametrize("run", ["move", "dry-run-move"])
def test_move_copies_an_image_that_has_other_hard_links(
    catalog_root: Path, tmp_path: Path, run: str
) -> None:
    """The blob is never the inode of a file outside the tree (writing that file would
    change the bytes served under their digest), and that file keeps its mode."""
    new_catalog(catalog_root)
    host = host_file(tmp_path, UBUNTU, mode=0o644)
    source = tmp_path / "old"
    shared = entry(source, "crownlabs/ubuntu/2204", None, {"os": "ubuntu"})
    os.link(host, shared / "image.bin")
    entry(source, "teaching/debian/v12", DEBIAN, {})  # its own file: taken without a copy
    content, mode, links, inode = file_state(host)
    assert links == 2

    report = run_import(catalog_root, source, run, check=0)

    found = {e["path"]: e for e in report["entries"]}
    assert found["crownlabs/ubuntu/2204"]["outcome"] == "imported"
    assert found["crownlabs/ubuntu/2204"]["linked"] is False
    verb = "would be copied" if run.startswith("dry-run") else "copied"
    assert found["crownlabs/ubuntu/2204"]["reason"].startswith(
        f"{verb}, not moved: image.bin has 2 hard links"
    )
    assert found["teaching/debian/v12"]["reason"] == ""
    registry_holds_nothing_of(catalog_root, HOST_SECRET, host)
    if run == "dry-run-move":
        assert file_state(host) == (content, mode, 2, inode)
        assert (shared / "image.bin").exists()
        return
    assert found["teaching/debian/v12"]["linked"] is True
    # The old tree's name is gone (--move), the host's own name is untouched.
    assert file_state(host) == (content, 0o644, 1, inode)
    assert not shared.exists()
    blob = blob_path(catalog_root, blake3_hex(UBUNTU))
    assert os.lstat(blob).st_nlink == 1
    host.write_bytes(b"the host rewrites its file")  # in place: the same inode
    assert blob.read_bytes() == UBUNTU
    assert sql(catalog_root, "SELECT digest FROM tags WHERE name = '2204'") == [
        (blake3_hex(UBUNTU),)
    ]


@pytest.mark.parametrize("run", ["import", "dry-run"])
def test_meta_json_is_held_to_the_upload_limit_and_parser(
    catalog_root: Path, tmp_path: Path, run: str
) -> None:
    """What an upload refuses as metadata (over 64 KiB: a 50 MB meta.json was imported,
    and /meta answered 50 MB) is skipped with the upload's reason."""
    new_catalog(catalog_root)
    source = tmp_path / "old"

    def sized(size: int) -> bytes:
        raw = json.dumps({"notes": ""}).encode()
        return json.dumps({"notes": "n" * (size - len(raw))}).encode()

    assert len(sized(MAX_META_BYTES)) == MAX_META_BYTES
    entry(source, "crownlabs/ubuntu/at-limit", UBUNTU, sized(MAX_META_BYTES))
    entry(source, "crownlabs/ubuntu/over-limit", UBUNTU, sized(MAX_META_BYTES + 1))
    entry(source, "crownlabs/ubuntu/huge", UBUNTU, sized(8 * 1024 * 1024))
    entry(source, "crownlabs/ubuntu/repeated", UBUNTU, b'{"os": "a", "os": "b"}')
    entry(source, "crownlabs/ubuntu/bom", UBUNTU, b'\xef\xbb\xbf{"os": "ubuntu"}')
    entry(source, "crownlabs/ubuntu/number", UBUNTU, b'{"os": "ubuntu", "version": 22}')
    tree_before, catalog_before = old_tree_state(source), catalog_state(catalog_root)

    found = outcomes(run_import(catalog_root, source, run, check=1))

    too_large = "meta.json is larger than 65536 bytes, the limit of an upload's metadata"
    assert found == {
        "crownlabs/ubuntu/at-limit": ("imported", ""),
        "crownlabs/ubuntu/over-limit": ("skipped", too_large),
        "crownlabs/ubuntu/huge": ("skipped", too_large),
        "crownlabs/ubuntu/repeated": ("skipped", "meta.json repeats a key ('os')"),
        "crownlabs/ubuntu/bom": (
            "skipped",
            "meta.json starts with a byte order mark; send UTF-8 JSON without one",
        ),
        "crownlabs/ubuntu/number": (
            "skipped",
            "meta.json: metadata values must be strings ('version')",
        ),
    }
    assert old_tree_state(source) == tree_before
    if run == "dry-run":
        assert catalog_state(catalog_root) == catalog_before
    else:
        tags = sql(catalog_root, "SELECT name, meta FROM tags")
        assert [(name, json_length(meta)) for name, meta in tags] == [("at-limit", MAX_META_BYTES)]


@pytest.mark.parametrize("run", list(RUNS))
def test_a_fifo_meta_json_is_skipped_without_waiting(
    catalog_root: Path, tmp_path: Path, run: str
) -> None:
    """A FIFO (in the tree, or outside it behind a link) is never opened: the import
    hung on one forever, dry run too."""
    new_catalog(catalog_root)
    host_fifo = tmp_path / "host" / "run" / "pipe"
    host_fifo.parent.mkdir(parents=True)
    os.mkfifo(host_fifo, 0o600)
    source = tmp_path / "old"
    os.mkfifo(entry(source, "crownlabs/ubuntu/fifo", UBUNTU) / "meta.json")
    (entry(source, "crownlabs/ubuntu/linked-fifo", UBUNTU) / "meta.json").symlink_to(host_fifo)
    (entry(source, "crownlabs/ubuntu/directory", UBUNTU) / "meta.json").mkdir()
    entry(source, "crownlabs/ubuntu/fine", UBUNTU, {"os": "ubuntu"})
    tree_before, catalog_before = old_tree_state(source), catalog_state(catalog_root)
    host_before = os.lstat(host_fifo)

    found = outcomes(run_import(catalog_root, source, run, check=1))

    assert found["crownlabs/ubuntu/fifo"] == (
        "skipped",
        "meta.json is a FIFO; only a regular file is imported",
    )
    assert found["crownlabs/ubuntu/linked-fifo"][0] == "skipped"
    assert found["crownlabs/ubuntu/linked-fifo"][1].startswith("meta.json is a symbolic link")
    assert found["crownlabs/ubuntu/directory"] == (
        "skipped",
        "meta.json is a directory; only a regular file is imported",
    )
    assert found["crownlabs/ubuntu/fine"][0] == "imported"
    host_after = os.lstat(host_fifo)
    assert stat.S_ISFIFO(host_after.st_mode)
    assert (host_after.st_mode, host_after.st_nlink) == (host_before.st_mode, 1)
    tree_after = old_tree_state(source)
    if run.startswith("dry-run"):
        assert tree_after == tree_before
        assert catalog_state(catalog_root) == catalog_before
    else:
        for path in ("fifo", "linked-fifo", "directory"):  # skipped: left where they were
            rel = f"crownlabs/ubuntu/{path}/meta.json"
            assert tree_after[rel] == tree_before[rel]
        assert [name for (name,) in sql(catalog_root, "SELECT name FROM tags")] == ["fine"]
