"""du: logical bytes per repository against the distinct blobs behind them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloudimg.maintenance import disk_usage
from tests.maintenance_support import cli, cli_json, open_test_catalog, put

A, B, C = b"a" * 1000, b"b" * 300, b"c" * 50


async def fill(root: Path) -> None:
    async with open_test_catalog(root) as catalog:
        await put(catalog, "alpha/img/v1", A)
        await put(catalog, "alpha/img/v2", A)
        await put(catalog, "alpha/other/v1", B)
        await put(catalog, "beta/img/v1", A)
        await put(catalog, "beta/img/v2", C)


async def test_logical_physical_and_saving(catalog_root: Path) -> None:
    await fill(catalog_root)
    async with open_test_catalog(catalog_root) as catalog:
        report = await disk_usage(catalog)
    alpha, beta = report.repositories
    assert (alpha.repo, alpha.images, alpha.tags) == ("alpha", 2, 3)
    assert (alpha.logical_bytes, alpha.physical_bytes, alpha.saved_bytes) == (2300, 1300, 1000)
    assert (beta.logical_bytes, beta.physical_bytes) == (1050, 1050)
    assert (report.logical_bytes, report.physical_bytes) == (3350, 1350)
    assert report.saved_bytes == 2000
    assert (report.stored_blobs, report.stored_bytes) == (3, 1350)


def test_cli(catalog_root: Path) -> None:
    asyncio.run(fill(catalog_root))
    report = cli_json("du", "--data-root", str(catalog_root), check=0)
    assert [(r["repo"], r["saved_bytes"]) for r in report["repositories"]] == [
        ("alpha", 1000),
        ("beta", 0),
    ]
    assert report["saved_bytes"] == 2000
    human = cli("du", "--data-root", str(catalog_root), check=0).stdout
    assert "alpha" in human
    assert "beta" in human
