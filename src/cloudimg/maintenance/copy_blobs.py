"""``copy-blobs``: copy a data root's blobs into another blob store (a bucket), resumably.

The move from the filesystem store on a volume to an S3 bucket (docs/scaling.md,
"Moving a volume's blobs into a bucket"). Each blob goes through the target store's own
upload path (``open_staging``, then ``place``), so its bytes are hashed on the way and
a copy that does not hash to its digest is discarded, never placed; a digest the target
holds already is skipped, so a run interrupted at any point is finished by running it
again. The catalog is only read: the digests stay what they are, and switching the
servers to the bucket changes no row.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal

from cloudimg.blobstore import MaintenanceBlobStore
from cloudimg.catalog import BlobRecord, Catalog
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["CopyProblem", "CopyReport", "copy_blobs"]

CHUNK = 8 * 1024 * 1024
"""Bytes read from the source at a time: a few of them are in flight per blob."""

Outcome = Literal["copied", "present"]


@dataclass(frozen=True, slots=True)
class CopyProblem:
    """A blob that is not (or not correctly) in the target."""

    digest: str
    reason: str
    tags: tuple[str, ...] = ()


@dataclass
class CopyReport:
    """What a copy did; ``ok`` when every blob it was to copy is in the target."""

    copied: int = 0
    copied_bytes: int = 0
    present: int = 0
    """Already in the target with the right size (an earlier run): skipped."""
    present_bytes: int = 0
    unreferenced: int = 0
    """Blob files no catalog row names, copied too (gc of the target reclaims them)."""
    quarantined: int = 0
    """Blobs fsck quarantined: their bytes are bad, nothing to copy (as on the volume,
    their tags answer DATA_LOSS until uploaded again)."""
    deleted: int = 0
    """Blobs deleted while the copy ran (no catalog row any more, no file): nothing to
    copy, as gc would have removed them from the bucket."""
    verified: int = 0
    verified_bytes: int = 0
    problems: list[CopyProblem] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


class _Refused(Exception):
    """One blob could not be copied; the message is the report's reason."""


class _Missing(_Refused):
    """The source has no file for the blob: a problem unless the catalog lost it too."""


async def copy_blobs(
    catalog: Catalog,
    source: MaintenanceBlobStore,
    target: MaintenanceBlobStore,
    *,
    verify: bool = False,
    jobs: int = 4,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every blob of ``catalog`` (and every blob file of ``source``) into ``target``.

    ``verify``: read every blob the target should now hold back from it
    (``target.checksum``) and compare its blake3 with its digest. ``jobs``: blobs copied
    at once. ``progress`` is told the bytes copied (``copied``) and verified
    (``verified``).
    """
    started = time.monotonic()
    report = CopyReport()
    snapshot = await catalog.maintenance.snapshot()
    files = {entry.digest: entry for entry in await source.list_blobs() if entry.digest}
    wanted: dict[str, int | None] = {}
    records: dict[str, BlobRecord] = {}
    for digest, record in snapshot.blobs.items():
        if record.quarantined:
            report.quarantined += 1
            continue
        wanted[digest] = record.size
        records[digest] = record
    for digest in files:
        if digest not in wanted and digest not in snapshot.blobs:
            wanted[digest] = None  # a file no row names: its own size
            report.unreferenced += 1
    total = sum(size if size is not None else files[d].size for d, size in wanted.items())
    meter = ProgressMeter(progress, total, "copied")
    limit = asyncio.Semaphore(max(1, jobs))
    deleted: set[str] = set()

    async def one(digest: str, size: int | None) -> None:
        async with limit:
            tags = _tags(records.get(digest))
            try:
                outcome, length = await _copy(source, target, digest, size, meter)
            except _Missing as exc:
                # Confirmed against the catalog as it is now (as fsck does): a blob
                # whose last tag was deleted since the snapshot is gone, not lost.
                if await catalog.maintenance.blob_state(digest) is None:
                    report.deleted += 1
                    deleted.add(digest)
                else:
                    report.problems.append(CopyProblem(digest, str(exc), tags))
                return
            except _Refused as exc:
                report.problems.append(CopyProblem(digest, str(exc), tags))
                return
            except OSError as exc:  # the store's errors are one line already
                report.problems.append(CopyProblem(digest, str(exc), tags))
                return
            if outcome == "copied":
                report.copied += 1
                report.copied_bytes += length
            else:
                report.present += 1
                report.present_bytes += length

    await asyncio.gather(*(one(d, s) for d, s in sorted(wanted.items())))
    meter.finish()
    if verify:
        failed = {problem.digest for problem in report.problems} | deleted
        await _verify(
            target, sorted(d for d in wanted if d not in failed), records, report, jobs, progress
        )
    report.problems.sort(key=lambda p: p.digest)
    report.duration_seconds = time.monotonic() - started
    return report


async def _copy(
    source: MaintenanceBlobStore,
    target: MaintenanceBlobStore,
    digest: str,
    size: int | None,
    meter: ProgressMeter,
) -> tuple[Outcome, int]:
    """Copy one blob unless the target has it; ``size``: the catalog's (None: unknown)."""
    held = await target.size_of(digest)
    if held is not None:
        if size is not None and held != size:
            # Write-once: a stored digest is never rewritten, so this needs a person.
            raise _Refused(f"the target holds it with {held} bytes, the catalog says {size}")
        meter.add(held)
        return "present", held
    reader = await source.open(digest)
    if reader is None:
        raise _Missing("no blob file in the source (run cloudimg gc, which puts back a"
                       " trashed one, then copy again)")  # fmt: skip
    try:
        length = reader.size
        if size is not None and length != size:
            raise _Refused(f"the source file has {length} bytes, the catalog says {size}")
        writer = await target.open_staging()
        try:
            offset = 0
            while offset < length:
                data = await asyncio.to_thread(reader.read, min(CHUNK, length - offset), offset)
                if not data:
                    raise _Refused(f"the source file ended at {offset} of {length} bytes")
                await writer.write(data)
                offset += len(data)
                meter.add(len(data))
            staged = await writer.finish()
        except BaseException:
            await writer.abort()
            raise
    finally:
        reader.close()
    if staged.blake3 != digest or staged.size != length:
        # The target hashed what it received: bad bytes on the volume (or read wrong)
        # never reach a blob key.
        await target.discard(staged)
        raise _Refused(
            f"the bytes read hash to blake3:{staged.blake3} ({staged.size} bytes): not copied;"
            " run cloudimg fsck --checksum on the source"
        )
    outcome = await target.place(staged)
    if outcome == "gone":
        raise _Refused("the staged copy disappeared before it was placed (copy again)")
    return ("copied" if outcome == "placed" else "present"), length


async def _verify(
    target: MaintenanceBlobStore,
    digests: list[str],
    records: dict[str, BlobRecord],
    report: CopyReport,
    jobs: int,
    progress: Progress | None,
) -> None:
    """Read back every blob the target should hold and compare its blake3 with its digest."""
    sizes = {d: await target.size_of(d) for d in digests}
    meter = ProgressMeter(progress, sum(s or 0 for s in sizes.values()), "verified")
    limit = asyncio.Semaphore(max(1, jobs))

    async def one(digest: str) -> None:
        async with limit:
            try:
                found = await target.checksum(digest, meter.add)
            except OSError as exc:
                report.problems.append(
                    CopyProblem(digest, f"verify: {exc}", _tags(records.get(digest)))
                )
                return
            if found is None:
                reason = "verify: not in the target"
            elif found[0] != digest:
                reason = f"verify: the target's copy hashes to blake3:{found[0]}"
            else:
                report.verified += 1
                report.verified_bytes += sizes[digest] or 0
                return
            report.problems.append(CopyProblem(digest, reason, _tags(records.get(digest))))

    await asyncio.gather(*(one(d) for d in digests))
    meter.finish()


def _tags(record: BlobRecord | None) -> tuple[str, ...]:
    if record is None:
        return ()
    return tuple(str(tag) for tag in record.tags)
