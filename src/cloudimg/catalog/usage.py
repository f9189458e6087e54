"""What a repository uses, as its quota counts it, and the check a tag write runs on it.

A repository's use (``RepoUse``) is the sum of the sizes of the distinct blobs its tags
and its retained tag history entries reference, and the number of its tags. A blob
shared with another repository counts in each (what "my repository uses N GiB"
means to its users); a blob named by two tags of the repository counts once. Kept
``/v2`` layers and configs (a containerDisk's tar layer) are not counted: the quota is
over the images the repository holds (docs/quotas.md).

The rule (which quota applies, what it allows) is the registry core's
(``cloudimg.core.quotas``); it registers a :class:`QuotaGuard` with the tag writes
(``catalog.tags.guard_quotas``). Every tag write to a repository the guard covers then
locks the repository's row (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
IMMEDIATE`` serialises every writer already), measures the use before and after the
change in the same transaction and lets the guard refuse it, so two writers of one
repository, on two replicas too, cannot both pass the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Select, func, select, union
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from cloudimg.catalog.models import Blob, Image, Repository, Tag, TagHistory
from cloudimg.catalog.transaction import CatalogBase

__all__ = ["QuotaGuard", "RepoUse", "RepositoryUsage", "measure_use"]


@dataclass(frozen=True, slots=True)
class RepoUse:
    """A repository's use: bytes of the distinct blobs its tags and retained history
    reference, and its tags."""

    bytes: int = 0
    tags: int = 0


class QuotaGuard(Protocol):
    """The quota rule a tag write checks (the registry core's ``QuotaGate``)."""

    def covers(self, repo: str) -> bool:
        """Whether a quota applies to ``repo`` (only then is it locked and measured)."""
        ...

    def check(self, repo: str, before: RepoUse, after: RepoUse) -> None:
        """Refuse (raise ``QuotaExceededError``) a change of ``repo``'s use from ``before``
        to ``after``, both measured under the repository's lock."""
        ...


def _references(repo: str | None) -> Any:
    """(repository, digest) of every tag and retained history entry (of ``repo`` only)."""
    by_tag = (
        select(Repository.name.label("repo"), Tag.digest.label("digest"))
        .join(Image, Image.repository_id == Repository.id)
        .join(Tag, Tag.image_id == Image.id)
    )
    by_history = select(
        TagHistory.repository.label("repo"), TagHistory.digest.label("digest")
    ).where(TagHistory.retained.is_(True))
    if repo is not None:
        by_tag = by_tag.where(Repository.name == repo)
        by_history = by_history.where(TagHistory.repository == repo)
    # UNION (not UNION ALL): a digest two tags (or a tag and its history) name counts once.
    return union(by_tag, by_history).subquery()


def _statements(repo: str) -> tuple[Select[Any], Select[Any]]:
    refs = _references(repo)
    size = select(func.coalesce(func.sum(Blob.size), 0)).join(refs, refs.c.digest == Blob.digest)
    tags = (
        select(func.count(Tag.id))
        .join(Image, Image.id == Tag.image_id)
        .join(Repository, Repository.id == Image.repository_id)
        .where(Repository.name == repo)
    )
    return size, tags


async def measure_use(session: AsyncSession, repo: str) -> RepoUse:
    """``repo``'s use as ``session``'s transaction sees it (its own changes included)."""
    size, tags = _statements(repo)
    return RepoUse(int(await session.scalar(size) or 0), int(await session.scalar(tags) or 0))


def _measure(session: Session, repo: str) -> RepoUse:
    size, tags = _statements(repo)
    return RepoUse(int(session.scalar(size) or 0), int(session.scalar(tags) or 0))


def _every(session: Session) -> dict[str, RepoUse]:
    refs = _references(None)
    sizes = session.execute(
        select(refs.c.repo, func.sum(Blob.size))
        .join(Blob, Blob.digest == refs.c.digest)
        .group_by(refs.c.repo)
    )
    counts = session.execute(
        select(Repository.name, func.count(Tag.id))
        .join(Image, Image.repository_id == Repository.id)
        .join(Tag, Tag.image_id == Image.id)
        .group_by(Repository.name)
    )
    used = {str(repo): int(total or 0) for repo, total in sizes}
    tags = {str(repo): int(count) for repo, count in counts}
    return {repo: RepoUse(used.get(repo, 0), tags.get(repo, 0)) for repo in used.keys() | tags}


class RepositoryUsage(CatalogBase):
    """Repositories' use as quotas count it (``cloudimg du``, the storage page, the
    checks before an upload's bytes are read)."""

    async def of(self, repo: str) -> RepoUse:
        """``repo``'s use now (zero for a repository that holds nothing)."""
        return await self._query(lambda session: _measure(session, repo))

    async def every(self) -> dict[str, RepoUse]:
        """The use of every repository that holds something, from one consistent view.

        A repository whose last tag was deleted but whose retained history still holds
        bytes is listed, with no tags."""
        return await self._query(_every)
