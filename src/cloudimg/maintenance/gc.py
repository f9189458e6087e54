"""``gc``: reclaim what crashes and interrupted work leave behind, and fix reference counts.

What it touches, in this order:

1. trash files (``trash/<blake3>.<random>``): put back into the blob tree, whatever
   their age, when the catalog still has the blob and its file is missing (the
   delete that trashed it never committed); otherwise removed once older than the
   grace period (never while a quarantined blob's row still names the digest);
2. staging files older than the grace period that no upload holds (an upload keeps
   an exclusive lock on its staging file until it is committed or dropped), OCI upload
   sessions among them; then the catalog rows of sessions idle past the grace whose
   file is gone;
3. reference counts that differ from the number of tags plus retained history entries
   naming the blob: set right; a blob nothing names loses its row and its file (a
   retained digest is never freed);
4. blob files older than the grace period that no blob row names.

Every change to the catalog or the blob tree happens in a catalog write transaction
that takes the same lock as an upload of that digest, so gc may run while servers
serve, and several gc runs may overlap.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, TypeVar

from cloudimg.blobstore import MaintenanceBlobStore, StoredFile
from cloudimg.catalog import Catalog, StorageTotals
from cloudimg.errors import CloudimgError
from cloudimg.oci.store import OciStore
from cloudimg.progress import Progress, ProgressMeter

T = TypeVar("T")

__all__ = [
    "KINDS",
    "GcAction",
    "GcKind",
    "GcReport",
    "collect_garbage",
    "collect_garbage_and_totals",
    "parse_duration",
]


class GcKind(StrEnum):
    """The kinds of action gc takes, in its order, each with what the report calls it.

    The one table of kinds: the report counts them (its JSON names each by its value)
    and the CLI prints each with its label, so no kind can lack one.
    """

    TRASH = "trash", "trash files removed", "trash files that would be removed", True
    RESTORED = (
        "restored",
        "trash files restored into the blob tree",
        "trash files that would be restored into the blob tree",
        False,
    )
    STAGING = (
        "staging",
        "stale staging files removed",
        "stale staging files that would be removed",
        True,
    )
    UPLOAD_SESSION = (
        "upload-session",
        "OCI upload sessions whose file is gone dropped",
        "OCI upload sessions whose file is gone that would be dropped",
        True,
    )
    PUSHED_MANIFEST = (
        "pushed-manifest",
        "kept /v2 pushes nothing holds released",
        "kept /v2 pushes nothing holds that would be released",
        True,
    )
    REFCOUNT = (
        "refcount",
        "reference counts repaired",
        "reference counts that would be repaired",
        False,
    )
    UNREFERENCED_ROW = (
        "unreferenced-row",
        "blobs no tag names removed",
        "blobs no tag names that would be removed",
        True,
    )
    ORPHAN_BLOB = (
        "orphan-blob",
        "blob files no catalog row names removed",
        "blob files no catalog row names that would be removed",
        True,
    )

    done: str
    """What the human report calls the actions of this kind a run took."""
    planned: str
    """What it calls them in a dry run (not taken)."""
    frees: bool
    """Whether the bytes of its actions count in ``bytes_freed``."""

    def __new__(cls, value: str, done: str, planned: str, frees: bool) -> GcKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.done = done
        member.planned = planned
        member.frees = frees
        return member

    def label(self, dry_run: bool) -> str:
        return self.planned if dry_run else self.done


KINDS: Final = tuple(GcKind)
"""Every kind of action, in the order gc takes them: trash file removed, trash file
restored, staging file removed, OCI upload session whose file is gone dropped, kept
``/v2`` manifests dropped (those whose disk their image no longer holds, and children
pushed by digest no index took within the grace), reference count repaired, blob row
(and file) that no tag names removed, blob file that no row names removed."""


@dataclass(frozen=True, slots=True)
class GcAction:
    """One thing gc did (or, with ``dry_run``, would do)."""

    kind: GcKind
    target: str
    """A digest, or the name of a file in the staging or trash area."""
    bytes: int
    detail: str = ""


@dataclass
class GcReport:
    """What a gc run did."""

    dry_run: bool
    grace_seconds: float
    actions: list[GcAction] = field(default_factory=list)
    skipped_live_staging: int = 0
    """Staging files of uploads still running (locked): never touched."""
    skipped_young: int = 0
    """Staging, trash and orphan files younger than the grace period."""
    problems: list[str] = field(default_factory=list)
    """What gc could not do; a non-empty list means a non-zero exit."""
    duration_seconds: float = 0.0
    events_pruned: int = 0
    """Change events older than the retention dropped from the outbox (docs/events.md)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def totals(self) -> dict[str, dict[str, int]]:
        """Count and bytes per kind of action."""
        result = {kind.value: {"count": 0, "bytes": 0} for kind in GcKind}
        for action in self.actions:
            result[action.kind.value]["count"] += 1
            result[action.kind.value]["bytes"] += action.bytes
        return result

    @property
    def bytes_freed(self) -> int:
        return sum(a.bytes for a in self.actions if a.kind.frees)


async def collect_garbage(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    *,
    grace: float = 3600.0,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> GcReport:
    """Run one garbage collection; with ``dry_run``, report what it would do and change nothing.

    Args:
        catalog: the catalog over ``blobs``.
        blobs: the blob store to clean.
        grace: only files last modified at least this many seconds ago are touched.
        dry_run: change nothing.
        progress: told how many entries each step has handled (``trash``, ``staging``,
            ``upload sessions``, ``refcounts``, ``orphans``; items).
    """
    started = time.monotonic()
    report = GcReport(dry_run=dry_run, grace_seconds=grace)
    oci = OciStore(catalog.engine, catalog.blobs)  # the OCI slice's sessions and pushes
    run = _Run(catalog, oci, blobs, time.time() - grace, report, progress)
    for step in (_trash, _staging, _upload_sessions, _pushed_manifests, _refcounts, _orphans):
        await step(run)
    report.duration_seconds = time.monotonic() - started
    return report


async def collect_garbage_and_totals(
    catalog: Catalog,
    blobs: MaintenanceBlobStore,
    *,
    grace: float,
    dry_run: bool,
    progress: Progress,
    event_retention: timedelta = timedelta(days=7),
    totals: bool = True,
) -> tuple[GcReport, StorageTotals | None]:
    """``collect_garbage``, recorded for the servers' ``/metrics`` unless a dry run, then,
    with ``totals``, the catalog's storage totals: what tag history still holds once the
    run is done (``cloudimg gc``'s human report names it; its JSON report does not, and
    spares the catalog that scan). Change events older than ``event_retention`` go too."""
    report = await collect_garbage(catalog, blobs, grace=grace, dry_run=dry_run, progress=progress)
    if not dry_run:
        report.events_pruned = await catalog.events.prune(datetime.now(UTC) - event_retention)
        await catalog.maintenance.record_gc_run(
            ok=report.ok,
            bytes_freed=report.bytes_freed,
            duration_seconds=report.duration_seconds,
        )
    return report, (await catalog.reads.storage_totals() if totals else None)


@dataclass(frozen=True, slots=True)
class _Run:
    """What every step of one gc run works with."""

    catalog: Catalog
    oci: OciStore
    blobs: MaintenanceBlobStore
    cutoff: float
    """Files last modified after this (seconds since the epoch) are left alone."""
    report: GcReport
    progress: Progress | None

    def counted(self, items: Sequence[T], task: str) -> Iterator[T]:
        """``items``, counting each one handled as ``task`` (the step's body runs between
        two counts)."""
        meter = ProgressMeter(self.progress, len(items), task, "items")
        for item in items:
            yield item
            meter.add()
        meter.finish()

    def old_enough(self, entry: StoredFile) -> bool:
        if entry.mtime <= self.cutoff:
            return True
        self.report.skipped_young += 1
        return False


async def _trash(run: _Run) -> None:
    report = run.report
    for entry in run.counted(await run.blobs.list_trash(), "trash"):
        # A trash file the catalog still needs goes back whatever its age (rename keeps
        # the blob's mtime, so age says nothing about when the delete crashed).
        old = entry.mtime <= run.cutoff
        try:
            if entry.digest is None:  # not a name we give; only we write here
                if old and not report.dry_run:
                    await run.blobs.purge(entry.key)
                outcome = "removed" if old else "kept"
            else:
                outcome = await run.catalog.maintenance.settle_trash(
                    entry.key, entry.digest, remove=old, dry_run=report.dry_run
                )
        except (CloudimgError, OSError) as exc:
            report.problems.append(f"trash file {entry.name}: {exc}")
            continue
        if outcome == "restored":
            detail = "the catalog still has this blob and its file was missing"
            report.actions.append(GcAction(GcKind.RESTORED, entry.digest or "", entry.size, detail))
        elif outcome == "removed":
            report.actions.append(GcAction(GcKind.TRASH, entry.name, entry.size))
        elif not old:
            report.skipped_young += 1


async def _staging(run: _Run) -> None:
    report = run.report
    for entry in run.counted(await run.blobs.list_staging(), "staging"):
        try:
            outcome = await run.blobs.remove_stale_staging(
                entry.key, run.cutoff, dry_run=report.dry_run
            )
        except OSError as exc:
            report.problems.append(f"staging file {entry.name}: {exc}")
            continue
        if outcome == "removed":
            report.actions.append(GcAction(GcKind.STAGING, entry.name, entry.size))
        elif outcome == "in-use":
            report.skipped_live_staging += 1
        elif outcome == "young":
            report.skipped_young += 1


async def _upload_sessions(run: _Run) -> None:
    """OCI upload sessions idle past the grace whose file the staging step removed (or
    that lost it otherwise); a session whose file stays (in use, young) keeps its row."""
    present = await run.blobs.staged_sessions()
    stale = await run.oci.stale_uploads(datetime.fromtimestamp(run.cutoff, UTC))
    for session in run.counted(stale, "upload sessions"):
        if session in present:
            continue
        if not run.report.dry_run:
            await run.oci.drop_upload(session)
        run.report.actions.append(GcAction(GcKind.UPLOAD_SESSION, session, 0))


async def _pushed_manifests(run: _Run) -> None:
    """Kept ``/v2`` manifests nothing holds any more: tag writes drop them as they go, a
    push that raced a write may leave one; children no index took within the grace."""
    if run.report.dry_run:
        return
    since = datetime.fromtimestamp(run.cutoff, UTC)
    released, pending = await run.oci.sweep_pushed_manifests(since)
    if released or pending:
        detail = f"{released} layer/config reference(s) released, {pending} pending child(ren)"
        run.report.actions.append(GcAction(GcKind.PUSHED_MANIFEST, "", 0, detail))


async def _refcounts(run: _Run) -> None:
    report = run.report
    snapshot = await run.catalog.maintenance.snapshot()
    for record in run.counted(list(snapshot.blobs.values()), "refcounts"):
        references = record.references  # tags plus retained history entries
        if references == record.refcount and references > 0:
            continue
        if report.dry_run:
            was, now, size, removed = record.refcount, references, record.size, references == 0
        else:
            try:
                repair = await run.catalog.maintenance.repair_refcount(record.digest)
            except CloudimgError as exc:
                report.problems.append(f"blob {record.digest}: refcount repair failed: {exc}")
                continue
            if repair is None:  # set right by someone else meanwhile
                continue
            was, now, size, removed = repair.was, repair.now, repair.size, repair.removed
        if removed:
            detail = f"refcount {was} and no tag or history entry holds it: row and file removed"
            report.actions.append(GcAction(GcKind.UNREFERENCED_ROW, record.digest, size, detail))
        else:
            detail = f"refcount was {was}, {now} tag(s) or retained history entries name it"
            report.actions.append(GcAction(GcKind.REFCOUNT, record.digest, 0, detail))


async def _orphans(run: _Run) -> None:
    report = run.report
    files = [f for f in await run.blobs.list_blobs() if f.digest is not None]
    # Read the catalog after listing the files: a file committed before the listing has
    # its row in this view; anything else is checked again under the lock.
    known = (await run.catalog.maintenance.snapshot()).blobs
    for entry in run.counted(files, "orphans"):
        digest = entry.digest
        if digest is None or digest in known or not run.old_enough(entry):
            continue
        if report.dry_run:
            freed: int | None = entry.size
        else:
            try:
                freed = await run.catalog.maintenance.reclaim_orphan_file(digest)
            except (CloudimgError, OSError) as exc:
                report.problems.append(f"blob file {digest}: {exc}")
                continue
        if freed is not None:
            detail = "no blob row names this file"
            report.actions.append(GcAction(GcKind.ORPHAN_BLOB, digest, freed, detail))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """The grace period in ``text``, in seconds: a number, or one with ``s``, ``m``, ``h`` or ``d``.

    Raises:
        ValueError: when ``text`` is not such a duration.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (seconds, or e.g. 30s, 10m, 2h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
