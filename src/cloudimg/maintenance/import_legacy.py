"""``import-legacy``: bring a data root written by the old Go server into the registry.

The old layout is ``<repo>/<image>/<tag>/image.bin`` with the tag's metadata in
``meta.json`` beside it. Each valid entry becomes the tag ``repo/image:tag`` with
the same metadata and bytes, committed like an upload (identical images share one
blob). What is not a valid entry is skipped with the reason.

Each image to import is inspected first (``cloudimg.images``): one that breaks an
inspection rule is skipped, with the rule in its entry, in a dry run too.

Idempotent and resumable: an entry whose tag already holds the same bytes and
metadata is left as it is, so a second run, or a run after a crash, ends in the
same state. With ``move``, the bytes are taken without a second copy when the
source is on the blob store's file system (a second name for the file, hashed in
place), and the entry is removed from the old tree once it is committed. An
``image.bin`` with another hard link (a name outside the entry, maybe outside the
tree) is copied instead: the blob must be a file no one else can write.

The old tree is read as untrusted input (``cloudimg.maintenance.legacy_tree``):
``meta.json`` and ``image.bin`` are opened only when they are regular files, never
through a symbolic link and never in a way that blocks (a FIFO), and ``meta.json`` is
held to an upload's limit and parser (``cloudimg.meta``), so nothing outside the tree
becomes a tag's metadata or bytes.

``preview_import`` decides the same way and does nothing: with the catalog of
``open_registry(settings, migrate=False, read_only=True)`` (or none before the first
start) it creates, writes and removes nothing, so an operator can look before the
first server has even created the data root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cloudimg.blobstore import MaintenanceBlobStore, StagedBlob
from cloudimg.catalog import Catalog, TagInfo
from cloudimg.core import commit_staged
from cloudimg.errors import (
    BlobCorruptError,
    CloudimgError,
    ImageRefusedError,
    InvalidArgumentError,
    NotFoundError,
)
from cloudimg.images import ImageInspector, Inspection, InspectionPolicy
from cloudimg.maintenance.legacy_tree import (
    IMAGE_FILE,
    META_FILE,
    Candidate,
    blake3_of,
    image_sizes,
    link_count,
    open_image,
    open_regular,
    read_meta,
    remove_entry,
    walk,
)
from cloudimg.progress import Progress, ProgressMeter

__all__ = [
    "ImportReport",
    "LegacyEntry",
    "import_legacy",
    "preview_import",
]

_COPY_CHUNK = 4 * 1024 * 1024
_NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP}


@dataclass(frozen=True, slots=True)
class LegacyEntry:
    """What became of one entry of the old tree."""

    path: str
    """Relative to the old data root, e.g. ``repo/image/tag``."""
    outcome: str
    """``imported``, ``unchanged`` (the catalog has it already), ``skipped`` or ``failed``.

    In a dry run, what the import would do: ``imported`` means "would be imported"."""
    reason: str = ""
    digest: str | None = None
    """The blake3 of the bytes; None for an entry a dry run would import (not hashed)."""
    size: int = 0
    linked: bool = False
    """The bytes were taken without a copy (``move`` on the same file system)."""
    rule: str | None = None
    """The inspection rule a ``skipped`` unsafe image breaks."""


@dataclass
class ImportReport:
    """What an import run did."""

    source: str
    move: bool
    dry_run: bool = False
    """Nothing was done: the entries say what a real run would do."""
    entries: list[LegacyEntry] = field(default_factory=list)
    duration_seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for entry in self.entries if entry.outcome == outcome)

    @property
    def bytes_imported(self) -> int:
        return sum(e.size for e in self.entries if e.outcome == "imported")

    @property
    def ok(self) -> bool:
        """Every entry was imported or was there already."""
        return all(e.outcome in ("imported", "unchanged") for e in self.entries)


async def import_legacy(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    source: Path,
    *,
    move: bool = False,
    data_root: Path | None = None,
    progress: Progress | None = None,
    policy: InspectionPolicy | None = None,
) -> ImportReport:
    """Import the old server's tree at ``source``.

    Args:
        catalog: where the entries go.
        blobs: where their bytes go (the store ``catalog`` is over).
        source: the old server's ``--data-root``.
        move: take the bytes without a copy where possible, and remove imported entries.
        data_root: the blob store's data root, skipped if it sits inside ``source``.
        progress: told how many bytes are imported (``imported``; ``checked`` in a dry run).
        policy: what the inspection accepts (default: the registry's defaults).
    """
    policy = policy or InspectionPolicy()
    return await _run(catalog, blobs, source, move, False, data_root, progress, policy)


async def preview_import(
    catalog: Catalog | None,
    source: Path,
    *,
    move: bool = False,
    data_root: Path | None = None,
    progress: Progress | None = None,
    policy: InspectionPolicy | None = None,
) -> ImportReport:
    """What ``import_legacy`` would do with ``source``, doing none of it.

    Reads the old tree and the catalog only. Each image to import is read through
    the inspector (an unsafe one would be skipped); an image is hashed only where the
    catalog already has its tag (to tell ``unchanged`` from a conflict).

    Args:
        catalog: the catalog to compare with (opened ``read_only`` by ``open_registry``);
            None when there is none yet, so every valid entry would be imported.
        source, move, data_root, progress, policy: as for ``import_legacy``.
    """
    policy = policy or InspectionPolicy()
    return await _run(catalog, None, source, move, True, data_root, progress, policy)


async def _run(
    catalog: Catalog | None,
    blobs: MaintenanceBlobStore | None,
    source: Path,
    move: bool,
    dry_run: bool,
    data_root: Path | None,
    progress: Progress | None,
    policy: InspectionPolicy,
) -> ImportReport:
    started = time.monotonic()
    report = ImportReport(source=str(source), move=move, dry_run=dry_run)
    candidates, skipped = await asyncio.to_thread(walk, source, data_root)
    report.entries += [LegacyEntry(s.rel, "skipped", s.reason) for s in skipped]
    sizes = await asyncio.to_thread(image_sizes, candidates)
    meter = ProgressMeter(progress, sum(sizes), "checked" if dry_run else "imported")
    for candidate in candidates:
        try:
            entry = await _import_one(catalog, blobs, candidate, move, dry_run, meter, policy)
        except (CloudimgError, OSError) as exc:
            entry = LegacyEntry(candidate.rel, "failed", str(exc))
        report.entries.append(entry)
    meter.finish()
    report.entries.sort(key=lambda e: e.path)
    report.duration_seconds = time.monotonic() - started
    return report


async def _existing(catalog: Catalog, names: tuple[str, str, str]) -> TagInfo | None:
    try:
        return await catalog.reads.get_tag(*names)
    except (NotFoundError, BlobCorruptError):  # a quarantined tag is imported again: healed
        return None


async def _decide(
    catalog: Catalog | None, candidate: Candidate, meter: ProgressMeter
) -> tuple[LegacyEntry, dict[str, str]]:
    """What to do with ``candidate``, reading only, and its metadata.

    ``imported`` means "to import" (no digest yet); the other outcomes are final.
    """
    rel, directory = candidate.rel, candidate.directory
    image_path = directory / IMAGE_FILE
    try:
        meta = await asyncio.to_thread(read_meta, directory / META_FILE)
    except InvalidArgumentError as exc:
        return LegacyEntry(rel, "skipped", exc.message), {}
    existing = None if catalog is None else await _existing(catalog, candidate.names)
    if not image_path.is_file() or image_path.is_symlink():
        if existing is not None and existing.meta == meta and not image_path.exists():
            # A --move run stopped between removing image.bin and meta.json.
            return LegacyEntry(rel, "unchanged", "imported earlier", existing.digest), meta
        return LegacyEntry(rel, "skipped", f"no {IMAGE_FILE} regular file"), meta
    size = image_path.stat().st_size
    if existing is None:
        return LegacyEntry(rel, "imported", "", None, size), meta
    same = existing.meta == meta and existing.size == size
    if same and await asyncio.to_thread(blake3_of, image_path) == existing.digest:
        meter.add(size)
        reason = "the catalog has it already"
        return LegacyEntry(rel, "unchanged", reason, existing.digest, size), meta
    reason = "the catalog has this tag with other bytes or metadata; left as it is"
    return LegacyEntry(rel, "skipped", reason, existing.digest, size), meta


async def _import_one(
    catalog: Catalog | None,
    blobs: MaintenanceBlobStore | None,
    candidate: Candidate,
    move: bool,
    dry_run: bool,
    meter: ProgressMeter,
    policy: InspectionPolicy,
) -> LegacyEntry:
    entry, meta = await _decide(catalog, candidate, meter)
    image_path = candidate.directory / IMAGE_FILE
    if dry_run:
        if entry.outcome == "imported":
            try:
                await asyncio.to_thread(_inspect_file, image_path, policy, meter.add)
            except ImageRefusedError as exc:
                return _unsafe(entry, exc)
            links = await asyncio.to_thread(link_count, image_path) if move else 0
            if links > 1:
                return dataclasses.replace(entry, reason=_shared_note(links, dry_run=True))
        return entry
    assert catalog is not None, "only a dry run goes without a catalog"
    assert blobs is not None, "only a dry run goes without a blob store"
    if entry.outcome == "unchanged" and move:
        await asyncio.to_thread(remove_entry, candidate.directory)
    if entry.outcome != "imported":
        return entry
    try:
        staged, linked, note, inspection = await _stage(blobs, image_path, move, meter, policy)
    except ImageRefusedError as exc:
        return _unsafe(entry, exc)
    try:  # qemu-img confirms the verdict before the commit, as for an upload
        await commit_staged(
            catalog, blobs, candidate.names, staged, meta,
            inspection=inspection, qemu_img=policy.qemu_img,
        )  # fmt: skip
    except ImageRefusedError as exc:
        return _unsafe(entry, exc)
    if move:
        await asyncio.to_thread(remove_entry, candidate.directory)
    return LegacyEntry(entry.path, "imported", note, staged.blake3, staged.size, linked)


def _unsafe(entry: LegacyEntry, refusal: ImageRefusedError) -> LegacyEntry:
    """The entry skipped for the inspection rule its image breaks; it stays in the old tree."""
    rule = str((refusal.context or {}).get("rule", "unknown"))
    reason = f"unsafe image (rule {rule}): {refusal.message}"
    return LegacyEntry(entry.path, "skipped", reason, size=entry.size, rule=rule)


def _inspect_file(
    path: Path, policy: InspectionPolicy, on_bytes: Callable[[int], None] | None
) -> Inspection:
    """Read ``path`` through the inspector (blocking: on a thread)."""
    inspector = ImageInspector(policy)
    size = 0
    with os.fdopen(open_regular(path), "rb") as source:
        while chunk := source.read(_COPY_CHUNK):
            inspector.feed(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return inspector.finish(size)


async def _stage(
    blobs: MaintenanceBlobStore,
    image_path: Path,
    move: bool,
    meter: ProgressMeter,
    policy: InspectionPolicy,
) -> tuple[StagedBlob, bool, str, Inspection]:
    """Stage the image's bytes and inspect them: the staged blob, whether it is the file
    itself (not a copy), why a move copied it (or "") and the inspection. Raises
    ``ImageRefusedError`` with nothing left staged when the image is unsafe.

    With ``move``, the file itself becomes the blob only when the entry's name is its
    only one: a file with another hard link (anywhere, maybe outside the tree) would
    stay writable through that name, changing the bytes served under their digest, and
    placing the blob makes it read-only for every name. Such a file is copied.
    """
    note = ""
    links = await asyncio.to_thread(link_count, image_path) if move else 0
    if links > 1:
        note = _shared_note(links)
    elif move:
        # A link hashes the file in place, so the inspector reads it on its own first
        # (and, when the link falls back to a copy, once more: the copy feeds it too).
        inspection = await asyncio.to_thread(_inspect_file, image_path, policy, None)
        try:
            staged = await blobs.stage_link(image_path)
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
        else:
            # Ours alone: the entry's name and the staging name. A link made since the
            # check above makes it a copy after all.
            links = await asyncio.to_thread(link_count, Path(staged.key))
            if links == 2:
                meter.add(staged.size)
                return staged, True, "", inspection
            await blobs.discard(staged)
            note = _shared_note(links - 1)
    staged, inspection = await _copy(blobs, image_path, meter, policy)
    return staged, False, note, inspection


def _shared_note(links: int, *, dry_run: bool = False) -> str:
    """Why ``move`` copies a file with ``links`` names (a dry run counts them as they are
    now: one that shares its file with another entry the run imports first is copied
    when its turn comes only if that one's name is still there)."""
    what = "would be copied" if dry_run else "copied"
    removed = "would be removed" if dry_run else "is removed"
    return (
        f"{what}, not moved: {IMAGE_FILE} has {links} hard links (a name outside this "
        f"entry could change the blob's bytes); its name in the old tree {removed}"
    )


async def _copy(
    blobs: MaintenanceBlobStore, image_path: Path, meter: ProgressMeter, policy: InspectionPolicy
) -> tuple[StagedBlob, Inspection]:
    """Copy the image into staging, feeding the inspector each chunk as it is read."""
    inspector = ImageInspector(policy)

    def read(source: BinaryIO) -> bytes:
        chunk = source.read(_COPY_CHUNK)
        if chunk:
            inspector.feed(chunk)
        return chunk

    writer = await blobs.open_staging()
    try:
        with await asyncio.to_thread(open_image, image_path) as source:
            while chunk := await asyncio.to_thread(read, source):
                await writer.write(chunk)
                meter.add(len(chunk))
        staged = await writer.finish()
        return staged, inspector.finish(staged.size)
    except BaseException:
        await writer.abort()
        raise
