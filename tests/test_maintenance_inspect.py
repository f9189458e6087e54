"""fsck --inspect: images stored before inspection get their format recorded, unsafe ones
are listed with their rule and tags and, when asked, blocked; import-legacy skips them.

The images are real (qemu-img, ``tests/images.py``); every backing file and data file
they name lies in the test's directory. "Stored before inspection" is what an older
version wrote: a blob row whose inspection columns are NULL (``legacy_put``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloudimg.catalog import Catalog
from cloudimg.digest import Digest
from cloudimg.errors import ImageBlockedError
from cloudimg.images import InspectionPolicy
from cloudimg.maintenance import check
from cloudimg.maintenance.fsck import Inspect
from cloudimg.maintenance.import_legacy import import_legacy, preview_import
from tests.databases import catalog_database
from tests.hostile_images import HOSTILE, HOSTILE_TOOLS, stand_in_qemu_img
from tests.images import MIB, needs_qemu_img, qcow2, qcow2_with_backing_file, qcow2_with_data_file
from tests.maintenance_support import cli, cli_json, legacy_put, open_test_catalog, store_of

pytestmark = needs_qemu_img

POLICY = InspectionPolicy()


@pytest.fixture
async def catalog(tmp_path: Path, backend: str) -> AsyncIterator[Catalog]:
    async with open_test_catalog(tmp_path / "data", backend) as opened:
        yield opened


def images(tmp_path: Path) -> dict[str, bytes]:
    """A clean qcow2 and two hostile ones, each made in a directory of its own."""
    made = {}
    for name, make in (
        ("clean", qcow2),
        ("backing", qcow2_with_backing_file),
        ("data-file", qcow2_with_data_file),
    ):
        directory = tmp_path / f"image-{name}"
        directory.mkdir()
        made[name] = make(directory).read_bytes()
    return made


async def test_inspect_records_format_and_lists_unsafe_images(
    catalog: Catalog, tmp_path: Path
) -> None:
    made = images(tmp_path)
    clean = await legacy_put(catalog, "repo/img/clean", made["clean"])
    backing = await legacy_put(catalog, "repo/img/backing", made["backing"])
    await legacy_put(catalog, "other/img/pinned", made["backing"])
    data_file = await legacy_put(catalog, "repo/img/data", made["data-file"])
    store = store_of(catalog)

    before = await check(catalog, store)
    assert before.ok
    assert (before.uninspected, before.inspected) == (3, 0)

    report = await check(catalog, store, inspect=Inspect(POLICY))
    assert report.inspected == 3
    assert report.bytes_inspected == sum(len(made[n]) for n in made)
    unsafe = {p.digest: p for p in report.problems}
    assert [p.kind for p in report.problems] == ["unsafe", "unsafe"]
    assert unsafe[backing].rule == "qcow2-backing-file"
    assert unsafe[backing].tags == ("other/img:pinned", "repo/img:backing")
    assert unsafe[data_file].rule == "qcow2-data-file"
    assert unsafe[data_file].tags == ("repo/img:data",)
    assert not any(p.blocked for p in report.problems)
    assert report.uninspected == 2  # the unsafe ones stay uninspected: reported again

    info = await catalog.reads.get_tag("repo", "img", "clean")
    assert (info.digest, info.format, info.virtual_size) == (clean, "qcow2", 16 * MIB)
    assert (await catalog.reads.resolve("repo", "img", "backing")).digest == backing  # not blocked

    again = await check(catalog, store, inspect=Inspect(POLICY))
    assert again.inspected == 2  # the clean one is not read again
    assert {p.digest for p in again.problems} == {backing, data_file}


async def test_block_unsafe_refuses_downloads_and_lists_the_block(
    catalog: Catalog, tmp_path: Path
) -> None:
    made = images(tmp_path)
    clean = await legacy_put(catalog, "repo/img/clean", made["clean"])
    backing = await legacy_put(catalog, "repo/img/backing", made["backing"])
    store = store_of(catalog)

    report = await check(catalog, store, inspect=Inspect(POLICY, block_unsafe=True))
    assert [(p.kind, p.digest, p.rule, p.blocked) for p in report.problems] == [
        ("unsafe", backing, "qcow2-backing-file", True)
    ]
    for reference in ("backing", Digest("blake3", backing)):
        with pytest.raises(ImageBlockedError, match="qcow2-backing-file"):
            await catalog.reads.resolve("repo", "img", reference)
    assert (await catalog.reads.resolve("repo", "img", "clean")).digest == clean

    after = await check(catalog, store, inspect=Inspect(POLICY, every=True, block_unsafe=True))
    assert after.ok  # blocked: a note, not a problem, and never read again
    assert after.inspected == 1
    assert after.uninspected == 0
    assert [(p.digest, p.rule) for p in after.blocked] == [(backing, "qcow2-backing-file")]


async def test_reinspect_applies_a_tighter_policy(catalog: Catalog, tmp_path: Path) -> None:
    data = qcow2(tmp_path).read_bytes()
    digest = await legacy_put(catalog, "repo/img/v1", data)
    store = store_of(catalog)
    assert (await check(catalog, store, inspect=Inspect(POLICY))).ok  # safe, inspected
    tight = InspectionPolicy(max_virtual_size=8 * MIB)
    assert (await check(catalog, store, inspect=Inspect(tight))).inspected == 0  # once only
    report = await check(catalog, store, inspect=Inspect(tight, every=True, block_unsafe=True))
    assert [(p.digest, p.rule) for p in report.problems] == [(digest, "virtual-size-too-large")]
    with pytest.raises(ImageBlockedError, match="virtual-size-too-large"):
        await catalog.reads.resolve("repo", "img", "v1")


@pytest.mark.slow  # CLI runs
def test_cli_lists_blocks_and_unblocks(tmp_path: Path, backend: str) -> None:
    root = tmp_path / "data"
    made = images(tmp_path)

    async def fill() -> str:
        async with open_test_catalog(root, backend) as catalog:
            await legacy_put(catalog, "repo/img/clean", made["clean"])
            return await legacy_put(catalog, "repo/img/data", made["data-file"])

    with catalog_database(backend, root):
        digest = asyncio.run(fill())
        listed = cli_json("fsck", "--data-root", str(root), "--inspect", check=1)
        problems = [(p["kind"], p["digest"], p["rule"], p["blocked"]) for p in listed["problems"]]
        assert problems == [("unsafe", digest, "qcow2-data-file", False)]
        assert listed["problems"][0]["tags"] == ["repo/img:data"]
        assert listed["inspected"] == 2

        blocked = cli_json("fsck", "--data-root", str(root), "--block-unsafe", check=1)
        assert [(p["digest"], p["blocked"]) for p in blocked["problems"]] == [(digest, True)]
        assert blocked["inspected"] == 1

        quiet = cli_json("fsck", "--data-root", str(root), "--inspect", check=0)
        assert quiet["inspected"] == 0
        assert [(p["digest"], p["rule"]) for p in quiet["blocked"]] == [(digest, "qcow2-data-file")]
        done = cli_json("unblock", "--data-root", str(root), f"blake3:{digest}", check=0)
        assert (done["unblocked"], done["rule"]) == (True, "qcow2-data-file")


def legacy_entry(source: Path, rel: str, data: bytes) -> Path:
    directory = source / rel
    directory.mkdir(parents=True)
    (directory / "image.bin").write_bytes(data)
    (directory / "meta.json").write_text(json.dumps({"from": "old"}))
    return directory


@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
async def test_import_legacy_skips_unsafe_images_with_the_rule(
    catalog: Catalog, tmp_path: Path, move: bool
) -> None:
    made = images(tmp_path)
    source = tmp_path / "old"
    legacy_entry(source, "repo/img/clean", made["clean"])
    legacy_entry(source, "repo/img/backing", made["backing"])
    legacy_entry(source, "repo/img/data", made["data-file"])
    expected = {
        "repo/img/clean": ("imported", None),
        "repo/img/backing": ("skipped", "qcow2-backing-file"),
        "repo/img/data": ("skipped", "qcow2-data-file"),
    }

    preview = await preview_import(catalog, source, policy=POLICY)
    assert {e.path: (e.outcome, e.rule) for e in preview.entries} == expected
    reasons = {e.path: e.reason for e in preview.entries}
    assert "unsafe image (rule qcow2-backing-file)" in reasons["repo/img/backing"]
    assert await catalog.reads.list_repositories() == []  # the dry run changed nothing

    store = store_of(catalog)
    report = await import_legacy(catalog, store, source, move=move, policy=POLICY)
    assert {e.path: (e.outcome, e.rule) for e in report.entries} == expected
    assert not report.ok
    assert await catalog.reads.list_tags("repo", "img") == ["clean"]
    assert (await catalog.reads.get_tag("repo", "img", "clean")).format == "qcow2"
    assert list(store.staging_dir.iterdir()) == []  # nothing of the unsafe ones stayed
    # The unsafe entries stay in the old tree (--move removes only what it imported).
    left = ["backing", "data"] if move else ["backing", "clean", "data"]
    assert sorted(p.name for p in (source / "repo" / "img").iterdir()) == left
    assert [e.linked for e in report.entries if e.outcome == "imported"] == [move]


@pytest.mark.slow  # CLI runs
def test_cli_import_legacy_dry_run_names_the_rule_under_the_policy_flags(
    tmp_path: Path, backend: str
) -> None:
    made = images(tmp_path)
    source = tmp_path / "old"
    legacy_entry(source, "repo/img/clean", made["clean"])
    legacy_entry(source, "repo/img/backing", made["backing"])
    root = tmp_path / "data"
    with catalog_database(backend, root):
        args = ("import-legacy", "--data-root", str(root), "--from", str(source), "--dry-run")
        report = cli_json(*args, check=1)
        rules = {e["path"]: (e["outcome"], e["rule"]) for e in report["entries"]}
        assert rules == {
            "repo/img/clean": ("imported", None),
            "repo/img/backing": ("skipped", "qcow2-backing-file"),
        }
        tight = cli_json(*args, "--max-virtual-size", "8M", check=1)
        rules = {e["path"]: (e["outcome"], e["rule"]) for e in tight["entries"]}
        assert rules["repo/img/clean"] == ("skipped", "virtual-size-too-large")
        text = cli(*args, "--allowed-formats", "raw", check=1).stdout
        assert "skipped: repo/img/clean: unsafe image (rule format-not-allowed)" in text


def _hostile(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """Every hostile kind that needs only qemu-img, each made in a directory of its own."""
    made = {}
    for name, (make, rule) in HOSTILE.items():
        if name in HOSTILE_TOOLS:
            continue
        directory = tmp_path / f"hostile-{name}"
        directory.mkdir()
        made[name] = (make(directory).read_bytes(), rule)
    return made


async def test_reinspect_finds_and_blocks_what_the_old_inspection_let_in(
    catalog: Catalog, tmp_path: Path
) -> None:
    """An installation that stored these before the qemu-faithful inspection finds them."""
    made = _hostile(tmp_path)
    digests = {name: await legacy_put(catalog, f"repo/img/{name}", data)
               for name, (data, _) in made.items()}  # fmt: skip
    store = store_of(catalog)
    report = await check(catalog, store, inspect=Inspect(POLICY, every=True, block_unsafe=True))
    found = {p.digest: (p.rule, p.blocked) for p in report.problems}
    assert found == {digests[name]: (rule, True) for name, (_, rule) in made.items()}


async def test_import_legacy_skips_hostile_images_with_their_rule(
    catalog: Catalog, tmp_path: Path
) -> None:
    made = _hostile(tmp_path)
    source = tmp_path / "old"
    for name, (data, _) in made.items():
        legacy_entry(source, f"repo/img/{name}", data)
    report = await import_legacy(catalog, store_of(catalog), source, move=False, policy=POLICY)
    assert {e.path: (e.outcome, e.rule) for e in report.entries} == {
        f"repo/img/{name}": ("skipped", rule) for name, (_, rule) in made.items()
    }
    assert await catalog.reads.list_repositories() == []


async def test_qemu_img_confirms_imports_and_reinspections(
    catalog: Catalog, tmp_path: Path
) -> None:
    """With a qemu-img that disagrees (a stand-in: the real one and a correct inspection
    cannot), import-legacy skips the image and fsck --reinspect reports it."""
    lying = stand_in_qemu_img(tmp_path, lie=True) / "qemu-img"
    policy = InspectionPolicy(qemu_img=str(lying))
    made = images(tmp_path)
    source = tmp_path / "old"
    legacy_entry(source, "repo/img/clean", made["clean"])
    report = await import_legacy(catalog, store_of(catalog), source, move=False, policy=policy)
    assert [(e.outcome, e.rule) for e in report.entries] == [("skipped", "qemu-img-disagrees")]
    assert await catalog.reads.list_repositories() == []
    digest = await legacy_put(catalog, "repo/img/clean", made["clean"])
    checked = await check(catalog, store_of(catalog), inspect=Inspect(policy, every=True))
    assert [(p.digest, p.rule) for p in checked.problems] == [(digest, "qemu-img-disagrees")]
