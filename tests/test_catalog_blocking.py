"""Blocked blobs in the catalog: downloads refused naming the rule, /meta still read,
an upload of the same bytes never unblocks, only ``unblock_blob`` does."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloudimg.catalog import Catalog
from cloudimg.digest import Digest
from cloudimg.errors import BlobCorruptError, ImageBlockedError, NotFoundError
from cloudimg.maintenance import check
from tests.databases import catalog_database
from tests.maintenance_support import cli, cli_json, open_test_catalog, put, sql, store_of
from tests.support import random_image, sha256_hex

RULE = "qcow2-backing-file"


@pytest.fixture
async def catalog(tmp_path: Path, backend: str) -> AsyncIterator[Catalog]:
    async with open_test_catalog(tmp_path / "data", backend) as opened:
        yield opened


async def assert_blocked(catalog: Catalog, digest: str, data: bytes, *tags: str) -> None:
    """Every download reference of ``digest`` raises IMAGE_BLOCKED naming the rule."""
    references: list[tuple[str, str, str | Digest]] = []
    for ref in tags:
        repo, image, tag = ref.split("/")
        references += [
            (repo, image, tag),
            (repo, image, Digest("blake3", digest)),
            (repo, image, Digest("sha256", sha256_hex(data))),
        ]
    for repo, image, reference in references:
        with pytest.raises(ImageBlockedError) as raised:
            await catalog.reads.resolve(repo, image, reference)
        assert RULE in raised.value.message
        assert raised.value.context is not None
        assert raised.value.context["rule"] == RULE
        assert raised.value.context["digest"] == f"blake3:{digest}"


async def test_a_blocked_blob_is_refused_by_tag_and_digest_and_meta_says_why(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    data = random_image(10_000)
    digest = await put(catalog, "repo/img/v1", data)
    await put(catalog, "other/img/pinned", data)
    kept = await put(catalog, "repo/img/v2", random_image(5_000))

    with caplog.at_level(logging.WARNING, logger="cloudimg.catalog"):
        block = await catalog.maintenance.block_blob(digest, RULE)
    assert block.rule == RULE
    assert f"blocked blob blake3:{digest}" in caplog.text
    assert RULE in caplog.text

    await assert_blocked(catalog, digest, data, "repo/img/v1", "other/img/pinned")
    assert await catalog.reads.list_tags("repo", "img") == ["v1", "v2"]  # the tags stay listed
    info = await catalog.reads.get_tag("repo", "img", "v1")
    assert info.blocked == block
    assert (await catalog.reads.resolve("repo", "img", "v2")).digest == kept  # others are served
    assert (await catalog.reads.get_tag("repo", "img", "v2")).blocked is None

    again = await catalog.maintenance.block_blob(digest, "some-other-rule")
    assert again == block  # blocked already: the first rule and time stay


async def test_an_upload_of_the_same_bytes_does_not_unblock(catalog: Catalog) -> None:
    data = random_image(10_000)
    digest = await put(catalog, "repo/img/v1", data)
    await catalog.maintenance.block_blob(digest, RULE)
    await put(catalog, "repo/img/v1", data, os="again")  # the same tag, new metadata
    await put(catalog, "repo/img/v3", data)  # another tag of the same bytes
    await assert_blocked(catalog, digest, data, "repo/img/v1", "repo/img/v3")
    assert (await catalog.reads.get_tag("repo", "img", "v1")).meta == {"os": "again"}


async def test_healing_a_quarantined_blob_keeps_its_block(catalog: Catalog) -> None:
    data = random_image(10_000)
    digest = await put(catalog, "repo/img/v1", data)
    await catalog.maintenance.block_blob(digest, RULE)
    store = store_of(catalog)
    path = store.blob_path(digest)
    path.chmod(0o644)
    os.truncate(path, 100)
    report = await check(catalog, store)
    assert [(p.kind, p.quarantined) for p in report.problems] == [("size", True)]
    with pytest.raises(BlobCorruptError):
        await catalog.reads.resolve("repo", "img", "v1")

    await put(catalog, "repo/img/v2", data)  # heals the bytes (displace), not the block
    assert store.blob_path(digest).read_bytes() == data
    await assert_blocked(catalog, digest, data, "repo/img/v1", "repo/img/v2")


async def test_unblock_serves_again_and_is_logged(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    data = random_image(10_000)
    digest = await put(catalog, "repo/img/v1", data)
    block = await catalog.maintenance.block_blob(digest, RULE)
    with caplog.at_level(logging.WARNING, logger="cloudimg.catalog"):
        lifted = await catalog.maintenance.unblock_blob(digest)
    assert lifted == block
    assert f"unblocked blob blake3:{digest}" in caplog.text
    assert RULE in caplog.text
    assert (await catalog.reads.resolve("repo", "img", "v1")).digest == digest
    assert (await catalog.reads.resolve("repo", "img", Digest("blake3", digest))).digest == digest
    assert (await catalog.reads.get_tag("repo", "img", "v1")).blocked is None
    assert sql(store_of(catalog).root, "SELECT blocked_rule, blocked_at FROM blobs") == [
        (None, None)
    ]
    assert await catalog.maintenance.unblock_blob(digest) is None  # not blocked: nothing to lift


async def test_block_and_unblock_of_an_unknown_digest_change_nothing(catalog: Catalog) -> None:
    await put(catalog, "repo/img/v1", b"stays served")
    unknown = "f" * 64
    with pytest.raises(NotFoundError):
        await catalog.maintenance.block_blob(unknown, RULE)
    with pytest.raises(NotFoundError):
        await catalog.maintenance.unblock_blob(unknown)
    assert sql(store_of(catalog).root, "SELECT blocked_rule FROM blobs") == [(None,)]


async def test_the_snapshot_tells_inspected_and_blocked_blobs(catalog: Catalog) -> None:
    old = await put(catalog, "repo/img/old", random_image(1000))
    blocked = await put(catalog, "repo/img/bad", random_image(1000))
    await catalog.maintenance.block_blob(blocked, RULE)
    root = store_of(catalog).root
    sql(root, "UPDATE blobs SET inspected_at = NULL")
    sql(root, "UPDATE blobs SET inspected_at = created_at WHERE digest = ?", blocked)
    snapshot = await catalog.maintenance.snapshot()
    assert snapshot.blobs[old].inspected is False
    assert snapshot.blobs[old].blocked is None
    record = snapshot.blobs[blocked]
    assert record.inspected is True
    assert record.blocked is not None
    assert record.blocked.rule == RULE


async def test_fsck_counts_uninspected_and_lists_blocked_blobs(catalog: Catalog) -> None:
    old = await put(catalog, "repo/img/old", random_image(1000))
    blocked = await put(catalog, "repo/img/bad", random_image(1000))
    root = store_of(catalog).root
    sql(root, "UPDATE blobs SET inspected_at = NULL")  # stored before inspection existed
    await catalog.maintenance.block_blob(blocked, RULE)
    report = await check(catalog, store_of(catalog))
    assert report.ok  # neither is a problem without --inspect
    assert (report.inspect, report.inspected, report.uninspected) == (False, 0, 1)
    assert [(p.kind, p.digest, p.rule, p.tags) for p in report.blocked] == [
        ("blocked", blocked, RULE, ("repo/img:bad",))
    ]
    assert old not in {p.digest for p in report.blocked}


@pytest.mark.slow  # five CLI runs
def test_cli_unblock(tmp_path: Path, backend: str) -> None:
    root = tmp_path / "data"
    data = random_image(2000)

    async def fill() -> str:
        async with open_test_catalog(root, backend) as catalog:
            digest = await put(catalog, "repo/img/v1", data)
            await catalog.maintenance.block_blob(digest, RULE)
            return digest

    with catalog_database(backend, root):
        digest = asyncio.run(fill())
        listed = cli("fsck", "--data-root", str(root), check=0)
        assert "blocked images (not served; cloudimg unblock lifts it): 1" in listed.stdout
        assert f"blake3:{digest}: [rule {RULE}]" in listed.stdout

        done = cli("unblock", "--data-root", str(root), f"blake3:{digest}", check=0)
        assert f"unblocked blake3:{digest}" in done.stdout
        assert RULE in done.stdout
        assert f"unblocked blob blake3:{digest}" in done.stderr  # the log line
        assert sql(root, "SELECT blocked_rule FROM blobs") == [(None,)]

        again = cli_json("unblock", "--data-root", str(root), f"blake3:{digest}", check=0)
        assert again == {
            "digest": f"blake3:{digest}",
            "unblocked": False,
            "rule": None,
            "since": None,
        }

        unknown = cli("unblock", "--data-root", str(root), "blake3:" + "0" * 64, check=1)
        assert "no blob has the digest" in unknown.stderr
        bad = cli("unblock", "--data-root", str(root), f"sha256:{sha256_hex(data)}", check=2)
        assert "blake3" in bad.stderr
