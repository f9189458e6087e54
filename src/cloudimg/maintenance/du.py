"""``du``: logical bytes (what the tags add up to) against physical bytes (unique blobs),
and each repository's use against its quota (``--quota-file``, ``cloudimg.core.quotas``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudimg.catalog import Catalog, RepoUse
from cloudimg.core.quotas import NO_QUOTAS, Quotas
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["DuReport", "RepoUsage", "disk_usage"]


@dataclass(frozen=True, slots=True)
class RepoUsage:
    """Usage of one repository."""

    repo: str
    images: int
    tags: int
    logical_bytes: int
    """Sum of the sizes of its tags: what a copy of every tag would take."""
    physical_bytes: int
    """Sum of the sizes of the distinct blobs its tags name."""
    used_bytes: int = 0
    """What its quota counts: the distinct blobs its tags and retained history reference."""
    quota: str | None = None
    """The glob of the quota file's rule that is its quota; None: it has none."""
    quota_bytes: int | None = None
    quota_tags: int | None = None

    @property
    def saved_bytes(self) -> int:
        return self.logical_bytes - self.physical_bytes


@dataclass
class DuReport:
    """Usage per repository and in total."""

    repositories: list[RepoUsage] = field(default_factory=list)
    logical_bytes: int = 0
    physical_bytes: int = 0
    """Distinct blobs named by any tag (a blob shared by two repositories counts once)."""
    stored_blobs: int = 0
    stored_bytes: int = 0
    """Every blob row, including any no tag names (retained history, or gc removes them)."""
    history_only_blobs: int = 0
    history_only_bytes: int = 0
    """Blobs no tag names that retained history entries hold (``--keep-history``)."""
    oci_kept_blobs: int = 0
    oci_kept_bytes: int = 0
    """Blobs only kept ``/v2`` pushes hold: containerDisk layers, configs, index children."""

    @property
    def saved_bytes(self) -> int:
        return self.logical_bytes - self.physical_bytes


async def disk_usage(
    catalog: Catalog, progress: Progress | None = None, quotas: Quotas = NO_QUOTAS
) -> DuReport:
    """Usage from one consistent view of the catalog, with each repository's use against
    its quota of ``quotas`` (the quota use is read right after that view).

    ``progress`` is told when the catalog is read (``catalog``, the long part on a big
    registry) and how many repositories are summed (``repositories``; items).
    """
    reading = ProgressMeter(progress, 1, "catalog", "items")
    snapshot = await catalog.maintenance.snapshot()
    reading.add()
    reading.finish()
    size_of = {digest: record.size for digest, record in snapshot.blobs.items()}
    per_repo: dict[str, list[tuple[str, str]]] = {}
    for tag in snapshot.tags:
        per_repo.setdefault(tag.repo, []).append((tag.image, tag.digest))
    report = DuReport(stored_blobs=len(snapshot.blobs), stored_bytes=sum(size_of.values()))
    # A repository whose retained history alone holds bytes is listed too (no tags).
    uses = await catalog.usage.every()
    repos = sorted(per_repo.keys() | {repo for repo, use in uses.items() if use.bytes})
    meter = ProgressMeter(progress, len(repos), "repositories", "items")
    for repo in repos:
        meter.add()
        entries = per_repo.get(repo, [])
        quota = quotas.of(repo)
        report.repositories.append(
            RepoUsage(
                repo=repo,
                images=len({image for image, _ in entries}),
                tags=len(entries),
                logical_bytes=sum(size_of[digest] for _, digest in entries),
                physical_bytes=sum(size_of[d] for d in {digest for _, digest in entries}),
                used_bytes=uses.get(repo, RepoUse()).bytes,
                quota=None if quota is None else quota.repos,
                quota_bytes=None if quota is None else quota.bytes,
                quota_tags=None if quota is None else quota.tags,
            )
        )
    meter.finish()
    report.logical_bytes = sum(size_of[tag.digest] for tag in snapshot.tags)
    report.physical_bytes = sum(size_of[d] for d in {tag.digest for tag in snapshot.tags})
    held = [r for r in snapshot.blobs.values() if r.history and not r.tags]
    report.history_only_blobs = len(held)
    report.history_only_bytes = sum(record.size for record in held)
    kept = [r for r in snapshot.blobs.values() if not r.is_disk]
    report.oci_kept_blobs = len(kept)
    report.oci_kept_bytes = sum(record.size for record in kept)
    return report
