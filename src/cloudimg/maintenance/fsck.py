"""``fsck``: check the blob store against one consistent view of the catalog.

Checks every blob row: its file exists with the catalog's size, and (with
``checksum``) its bytes hash to its digest; its reference count equals the number
of tags naming it. Reports files in the blob tree that do not look like blobs, and
(as notes: gc reclaims them) blob files that no row names.

A blob whose bytes do not match is quarantined: its file is moved aside and the
catalog marks it, so the server refuses to serve it; uploading the image again
heals it. A problem found in the snapshot is confirmed against the catalog as it
is now before it is reported, so work that commits while fsck runs is no problem.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from cloudimg.blobstore import MaintenanceBlobStore, StoredFile
from cloudimg.catalog import BlobRecord, Catalog
from cloudimg.errors import CloudimgError
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["KINDS", "FsckProblem", "FsckReport", "check"]

KINDS = ("missing", "size", "checksum", "quarantined", "refcount", "stray", "error")
"""Kinds of problem: blob file missing, wrong size, wrong bytes, blob quarantined
earlier and not uploaded again, wrong reference count, a file in the blob tree that
is not a blob, a check that could not run."""

_HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))


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


@dataclass
class FsckReport:
    """What fsck found."""

    checksum: bool
    blobs: int = 0
    tags: int = 0
    bytes_hashed: int = 0
    problems: list[FsckProblem] = field(default_factory=list)
    unreferenced: list[FsckProblem] = field(default_factory=list)
    """Blob files no row names: not a problem (gc reclaims them after the grace period)."""
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


async def check(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    *,
    checksum: bool = False,
    progress: Progress | None = None,
) -> FsckReport:
    """Check the store; quarantine blobs whose bytes are wrong.

    Args:
        catalog: the catalog over ``blobs``.
        blobs: the blob store to check.
        checksum: hash every blob (reads every byte) instead of comparing sizes only.
        progress: told how many blobs are checked (``checked``) and, with ``checksum``,
            how many bytes are hashed (``hashed``).
    """
    started = time.monotonic()
    report = FsckReport(checksum=checksum)
    snapshot = await catalog.snapshot()
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

    for digest, entry in files.items():
        if digest not in snapshot.blobs and await catalog.blob_state(digest) is None:
            detail = "no blob row names this file (gc reclaims it after the grace period)"
            report.unreferenced.append(FsckProblem("unreferenced", digest, detail, path=entry.key))
    report.problems.sort(key=lambda p: (KINDS.index(p.kind), p.digest or "", p.path or ""))
    report.duration_seconds = time.monotonic() - started
    return report


def _tags(record: BlobRecord) -> tuple[str, ...]:
    return tuple(str(tag) for tag in record.tags)


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
        state = await catalog.blob_state(record.digest)  # confirm against the catalog now
        if state is not None and state.refcount != state.references:
            detail = (
                f"refcount {state.refcount}, {state.references} tag(s) or retained history"
                " entries name it (gc fixes it)"
            )
            report.problems.append(FsckProblem("refcount", record.digest, detail, _tags(record)))
    if entry is None:
        if await blobs.size_of(record.digest) is None and await catalog.blob_state(record.digest):
            detail = "the blob file is missing (gc restores it from trash if a copy is there)"
            report.problems.append(FsckProblem("missing", record.digest, detail, _tags(record)))
    elif entry.size != record.size:
        quarantined = await catalog.quarantine_blob(blobs, record.digest, entry.version)
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
                    if await catalog.blob_state(record.digest) is not None:
                        detail = "the blob file is missing"
                        report.problems.append(
                            FsckProblem("missing", record.digest, detail, _tags(record))
                        )
                    return
                actual, version = result
                if actual != record.digest and await catalog.quarantine_blob(
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
