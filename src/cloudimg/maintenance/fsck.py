"""``fsck``: check the blob store against one consistent view of the catalog.

Checks every blob row: its file exists with the catalog's size, and (with
``checksum``) its bytes hash to its digest; its reference count equals the number
of tags naming it. Reports files in the blob tree that do not look like blobs, and
(as notes: gc reclaims them) blob files that no row names.

A blob whose bytes do not match is quarantined: its file is moved aside and the
catalog marks it, so the server refuses to serve it; uploading the image again
heals it. A problem found in the snapshot is confirmed against the catalog as it
is now before it is reported, so work that commits while fsck runs is no problem.

With ``inspect``, the images stored before inspection existed (or, ``every``, all of
them) are read through the image inspector: a safe one gets its format and virtual
size recorded, an unsafe one is a problem naming the rule it breaks, and is blocked
(its downloads refused) when asked. Blobs an operator blocked are listed, never
inspected again: ``cloudimg unblock`` lifts a block, and the next inspection judges
the bytes again.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from cloudimg.blobstore import BlobReader, MaintenanceBlobStore, StoredFile
from cloudimg.catalog import BlobRecord, Catalog
from cloudimg.errors import CloudimgError, ImageRefusedError, NotFoundError
from cloudimg.images import ImageInspector, InspectionPolicy, inspect_reader
from cloudimg.oci.push import disk_layer_of, unpack_disk
from cloudimg.oci.store import OciStore
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["KINDS", "FsckProblem", "FsckReport", "Inspect", "check"]

KINDS = ("missing", "size", "checksum", "quarantined", "unsafe", "refcount", "stray", "error")
"""Kinds of problem: blob file missing, wrong size, wrong bytes, blob quarantined
earlier and not uploaded again, an image that breaks an inspection rule, wrong
reference count, a file in the blob tree that is not a blob, a check that could not run."""

_HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
_NOT_INSPECTED = {"missing", "size", "checksum", "quarantined", "error"}


@dataclass(frozen=True, slots=True)
class FsckProblem:
    """One problem, with the tags it affects."""

    kind: str
    digest: str | None
    detail: str
    tags: tuple[str, ...] = ()
    path: str | None = None
    quarantined: bool = False
    """fsck moved the bytes aside and marked the blob (the server no longer serves it)."""
    rule: str | None = None
    """The inspection rule an ``unsafe`` or ``blocked`` image breaks."""
    blocked: bool = False
    """The image is blocked: its downloads answer 403 ``IMAGE_BLOCKED``."""
    since: str | None = None
    """When a ``blocked`` image was blocked (ISO 8601)."""


@dataclass(frozen=True, slots=True)
class Inspect:
    """What ``check`` inspects, under which policy, and whether it blocks what is unsafe."""

    policy: InspectionPolicy
    every: bool = False
    """Inspect every image again, not only those never inspected (``--reinspect``)."""
    block_unsafe: bool = False
    """Block each unsafe image: its tags stay, its downloads are refused."""


@dataclass
class FsckReport:
    """What fsck found."""

    checksum: bool
    inspect: bool = False
    blobs: int = 0
    tags: int = 0
    bytes_hashed: int = 0
    inspected: int = 0
    """Images read through the inspector in this run (safe and unsafe)."""
    bytes_inspected: int = 0
    uninspected: int = 0
    """Images never inspected that this run left so (stored before inspection, not
    blocked; without ``inspect``, or unsafe): ``fsck --inspect`` reads them."""
    problems: list[FsckProblem] = field(default_factory=list)
    unreferenced: list[FsckProblem] = field(default_factory=list)
    """Blob files no row names: not a problem (gc reclaims them after the grace period)."""
    blocked: list[FsckProblem] = field(default_factory=list)
    """Images an operator blocked before this run: not served, not a problem."""
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


async def check(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    *,
    checksum: bool = False,
    inspect: Inspect | None = None,
    progress: Progress | None = None,
) -> FsckReport:
    """Check the store; quarantine blobs whose bytes are wrong.

    Args:
        catalog: the catalog over ``blobs``.
        blobs: the blob store to check.
        checksum: hash every blob (reads every byte) instead of comparing sizes only.
        inspect: inspect images (see ``Inspect``); None: only count those never inspected.
        progress: told how many blobs are checked (``checked``), with ``checksum`` how
            many bytes are hashed (``hashed``), with ``inspect`` how many bytes are
            inspected (``inspected``).
    """
    started = time.monotonic()
    report = FsckReport(checksum=checksum, inspect=inspect is not None)
    snapshot = await catalog.maintenance.snapshot()
    report.blobs, report.tags = len(snapshot.blobs), len(snapshot.tags)
    files: dict[str, StoredFile] = {}
    for entry in await blobs.list_blobs():
        if entry.digest is None:
            detail = "a file in the blob tree that is not named like a blob"
            report.problems.append(FsckProblem("stray", None, detail, path=entry.key))
        else:
            files[entry.digest] = entry

    to_hash: list[BlobRecord] = []
    checked = ProgressMeter(progress, len(snapshot.blobs), "checked", "items")
    for record in snapshot.blobs.values():
        checked.add()
        try:
            await _check_record(catalog, blobs, record, files.get(record.digest), report)
        except CloudimgError as exc:
            report.problems.append(FsckProblem("error", record.digest, str(exc), _tags(record)))
            continue
        found = files.get(record.digest)
        if checksum and not record.quarantined and found is not None and found.size == record.size:
            to_hash.append(record)
    checked.finish()

    if to_hash:
        await _hash_all(catalog, blobs, to_hash, report, progress)

    report.blocked = [_blocked(record) for record in snapshot.blobs.values() if record.blocked]
    await _inspection(catalog, blobs, list(snapshot.blobs.values()), inspect, report, progress)

    for digest, entry in files.items():
        if digest not in snapshot.blobs and await catalog.maintenance.blob_state(digest) is None:
            detail = "no blob row names this file (gc reclaims it after the grace period)"
            report.unreferenced.append(FsckProblem("unreferenced", digest, detail, path=entry.key))
    report.problems.sort(key=lambda p: (KINDS.index(p.kind), p.digest or "", p.path or ""))
    report.duration_seconds = time.monotonic() - started
    return report


async def _inspection(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    records: list[BlobRecord],
    inspect: Inspect | None,
    report: FsckReport,
    progress: Progress | None,
) -> None:
    """Inspect what ``inspect`` asks for; count the images left never inspected."""
    # Inspect only bytes that are there and right: not those this run found missing,
    # wrong or quarantined, nor those an operator blocked (their verdict is theirs), nor
    # the layers and configs kept /v2 pushes hold (no VM image: nothing boots them).
    bad = {p.digest for p in report.problems if p.kind in _NOT_INSPECTED}
    to_inspect = [
        record
        for record in records
        if record.is_disk
        and record.blocked is None
        and not record.quarantined
        and record.digest not in bad
        and (not record.inspected or (inspect is not None and inspect.every))
    ]
    settled: set[str] = set()
    if inspect is not None and to_inspect:
        settled = await _inspect_all(catalog, blobs, to_inspect, inspect, report, progress)
    if inspect is not None:
        skip = bad | {r.digest for r in records if r.blocked is not None or r.quarantined}
        by_digest = {record.digest: record for record in records}
        kept = await OciStore(catalog.engine, catalog.blobs).kept_child_layers()
        for layer, body, media_type in kept:
            if layer in by_digest and layer not in skip:
                skip.add(layer)
                await _inspect_child(catalog, blobs, by_digest[layer], body, media_type,
                                     inspect, report)  # fmt: skip
    report.uninspected = sum(
        1 for record in to_inspect if not record.inspected and record.digest not in settled
    )


def _tags(record: BlobRecord) -> tuple[str, ...]:
    return tuple(str(tag) for tag in record.tags)


def _blocked(record: BlobRecord) -> FsckProblem:
    assert record.blocked is not None
    since = record.blocked.since.isoformat()
    detail = f"blocked since {since}: downloads answer 403 IMAGE_BLOCKED"
    rule = record.blocked.rule
    return FsckProblem(
        "blocked", record.digest, detail, _tags(record), rule=rule, blocked=True, since=since
    )


async def _check_record(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    record: BlobRecord,
    entry: StoredFile | None,
    report: FsckReport,
) -> None:
    if record.quarantined:
        detail = "quarantined by an earlier fsck; upload the image again to heal it"
        report.problems.append(FsckProblem("quarantined", record.digest, detail, _tags(record)))
        return
    if record.refcount != record.references:
        state = await catalog.maintenance.blob_state(
            record.digest
        )  # confirm against the catalog now
        if state is not None and state.refcount != state.references:
            detail = (
                f"refcount {state.refcount}, {state.references} tag(s) or retained history"
                " entries name it (gc fixes it)"
            )
            report.problems.append(FsckProblem("refcount", record.digest, detail, _tags(record)))
    if entry is None:
        if await blobs.size_of(record.digest) is None and await catalog.maintenance.blob_state(
            record.digest
        ):
            detail = "the blob file is missing (gc restores it from trash if a copy is there)"
            report.problems.append(FsckProblem("missing", record.digest, detail, _tags(record)))
    elif entry.size != record.size:
        quarantined = await catalog.maintenance.quarantine_blob(blobs, record.digest, entry.version)
        if quarantined:
            detail = f"the file has {entry.size} bytes, the catalog says {record.size}"
            report.problems.append(
                FsckProblem("size", record.digest, detail, _tags(record), quarantined=True)
            )


async def _hash_all(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    records: list[BlobRecord],
    report: FsckReport,
    progress: Progress | None,
) -> None:
    meter = ProgressMeter(progress, sum(r.size for r in records), "hashed")
    workers = asyncio.Semaphore(_HASH_WORKERS)

    async def one(record: BlobRecord) -> None:
        async with workers:
            try:
                result = await blobs.checksum(record.digest, meter.add)
                if result is None:  # deleted meanwhile, or lost
                    if await catalog.maintenance.blob_state(record.digest) is not None:
                        detail = "the blob file is missing"
                        report.problems.append(
                            FsckProblem("missing", record.digest, detail, _tags(record))
                        )
                    return
                actual, version = result
                if actual != record.digest and await catalog.maintenance.quarantine_blob(
                    blobs, record.digest, version
                ):
                    detail = f"the bytes hash to blake3:{actual}"
                    report.problems.append(
                        FsckProblem(
                            "checksum", record.digest, detail, _tags(record), quarantined=True
                        )
                    )
            except (CloudimgError, OSError) as exc:
                report.problems.append(FsckProblem("error", record.digest, str(exc), _tags(record)))

    await asyncio.gather(*(one(record) for record in records))
    meter.finish()
    report.bytes_hashed = meter.done


async def _inspect_all(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    records: list[BlobRecord],
    inspect: Inspect,
    report: FsckReport,
    progress: Progress | None,
) -> set[str]:
    """Read each image through the inspector, a few at a time, each on a worker thread.

    Returns the digests now settled: inspection recorded, or blocked.
    """
    meter = ProgressMeter(progress, sum(r.size for r in records), "inspected")
    workers = asyncio.Semaphore(_HASH_WORKERS)
    settled: set[str] = set()

    async def one(record: BlobRecord) -> None:
        async with workers:
            try:
                reader = await blobs.open(record.digest)
                if reader is None:  # deleted meanwhile (or lost: the next fsck says missing)
                    return
                try:
                    inspection = await asyncio.to_thread(
                        inspect_reader, reader, inspect.policy, meter.add
                    )
                finally:
                    reader.close()
                report.inspected += 1
                if await catalog.maintenance.record_inspection(record.digest, inspection):
                    settled.add(record.digest)
            except ImageRefusedError as exc:
                report.inspected += 1
                if await _unsafe(catalog, record, exc, inspect, report):
                    settled.add(record.digest)
            except (CloudimgError, OSError) as exc:
                report.problems.append(FsckProblem("error", record.digest, str(exc), _tags(record)))

    await asyncio.gather(*(one(record) for record in records))
    meter.finish()
    report.bytes_inspected = meter.done
    return settled


async def _inspect_child(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    record: BlobRecord,
    body: bytes,
    media_type: str,
    inspect: Inspect,
    report: FsckReport,
) -> None:
    """An index child's kept layer: its disk (the layer itself, or the file its tar holds)
    passes the same inspection as a tag's, whatever the architecture; else reported and,
    when asked, blocked (a pull by digest then gets 403)."""
    reader = await blobs.open(record.digest)
    if reader is None:
        return
    try:
        packing = disk_layer_of(body, media_type).packing
        if packing == "disk":
            await asyncio.to_thread(inspect_reader, reader, inspect.policy)
        else:
            await asyncio.to_thread(_inspect_packed, reader, packing, inspect.policy)
        report.inspected += 1
    except ImageRefusedError as exc:
        report.inspected += 1
        await _unsafe(catalog, record, exc, inspect, report)
    except (CloudimgError, OSError) as exc:
        report.problems.append(FsckProblem("error", record.digest, str(exc), _tags(record)))
    finally:
        reader.close()


def _inspect_packed(reader: BlobReader, packing: str, policy: InspectionPolicy) -> None:
    """The disk inside a containerDisk tar, streamed through the inspector (no copy)."""
    inspector = ImageInspector(policy)
    size = unpack_disk(reader, packing, inspector.feed, max_virtual_size=policy.max_virtual_size)
    inspector.finish(size)


async def _unsafe(
    catalog: Catalog,
    record: BlobRecord,
    refusal: ImageRefusedError,
    inspect: Inspect,
    report: FsckReport,
) -> bool:
    """Report an image the inspector refused, and block it when asked; whether it was."""
    rule = str((refusal.context or {}).get("rule", "unknown"))
    blocked = False
    try:
        if inspect.block_unsafe:
            await catalog.maintenance.block_blob(record.digest, rule)
            blocked = True
        elif await catalog.maintenance.blob_state(record.digest) is None:
            return False  # its last tag went while we read it
    except NotFoundError:
        return False
    problem = FsckProblem(
        "unsafe", record.digest, refusal.message, _tags(record), rule=rule, blocked=blocked
    )
    report.problems.append(problem)
    return blocked
