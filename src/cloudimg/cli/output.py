"""Printing helpers shared by the maintenance commands."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from cloudimg.blobstore import MaintenanceBlobStore
from cloudimg.catalog import Catalog
from cloudimg.cli.storage import catalog_errors, prepare_storage
from cloudimg.config import Settings
from cloudimg.registry import open_registry
from cloudimg.units import human_bytes

__all__ = [
    "FREE_HISTORY",
    "SHOWN_PER_KIND",
    "history_hint",
    "human_bytes",
    "print_json",
    "run",
    "shown",
]

T = TypeVar("T")
SHOWN_PER_KIND = 10
"""Problems of one kind printed in full; the rest are counted."""


def run(
    settings: Settings,
    work: Callable[[Catalog, MaintenanceBlobStore], Awaitable[T]],
    *,
    create: bool = False,
    writable: bool = True,
) -> T:
    """Open the registry of ``settings`` and run ``work`` on its catalog and blob store.

    The data root and the catalog are checked first (``prepare_storage``): only with
    ``create`` (``import-legacy``) may they be made and the schema migrated; otherwise a
    schema that is behind is refused with one line naming ``cloudimg db upgrade``. A
    database that fails meanwhile is one line too.
    """
    url = prepare_storage(settings, create=create, writable=writable, migrate=False)

    async def main() -> T:
        async with open_registry(settings, migrate=create) as registry:
            if writable:
                registry.blobs.ensure_layout()
            return await work(registry.catalog, registry.blobs)

    with catalog_errors(url):
        return asyncio.run(main())


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def print_json(report: Any, **extra: Any) -> None:
    """The report dataclass as one JSON document on stdout, with ``extra`` keys."""
    body = {**dataclasses.asdict(report), **extra}
    click.echo(json.dumps(body, indent=2, sort_keys=True, default=_plain))


def shown(items: Iterable[T]) -> tuple[list[T], int]:
    """The first ``SHOWN_PER_KIND`` items and how many more there are."""
    listed = list(items)
    return listed[:SHOWN_PER_KIND], max(0, len(listed) - SHOWN_PER_KIND)


FREE_HISTORY = (
    "gc does not free them: `cloudimg rm REPO/IMAGE:TAG --purge-history` drops a tag's"
    " history and frees what nothing else holds (the server's --keep-history sets how many"
    " earlier images each tag keeps)"
)
"""How bytes only tag history holds are freed, as ``du`` and ``gc`` say it."""


def history_hint(blobs: int, size: int) -> str | None:
    """``gc``'s line when tag history holds bytes no tag names (None when it holds none)."""
    if blobs == 0:
        return None
    return f"held only by tag history: {blobs} blob(s), {human_bytes(size)}; {FREE_HISTORY}"
