"""Quotas: per repository, a limit on the bytes it holds and on its tags (``--quota-file``).

The quota file (YAML; JSON is YAML too) lists rules, each a glob over repository names
and its limits::

    quotas:
      - repos: "course-*"     # every repository whose name matches has these limits
        bytes: 50GiB          # bytes, or 512M, 10G, 2GiB (binary units)
        tags: 200
      - repos: "*"            # the rest
        bytes: 1TiB

The **first** rule whose glob matches a repository is its quota (later rules are not
consulted: order them from the narrowest to the widest); a repository no rule matches
has none. A rule's limits hold for **each** repository it matches: every ``course-*``
repository may hold 50 GiB. A rule has ``bytes``, ``tags`` or both; a missing one is
no limit.

What a repository uses is the catalog's to measure (``cloudimg.catalog.usage``): the
distinct blobs its tags and retained history reference, and its tags. The rule is
here: :class:`QuotaGate` is registered with the catalog's tag writes, which lock the
repository and measure its use before and after every upload's commit and retag in
the write's transaction and let :meth:`QuotaGate.check` refuse it; before an upload's
bytes are stored, :meth:`QuotaGate.room` says what is left, so a body announced larger
is refused unread and one that is not is stopped once its bytes pass it.

A write is refused only when it **grows** the use past the limit: a retag to bytes the
repository references already, a metadata update, a lowered quota all pass; deletes
always do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from cloudimg.catalog import Catalog, RepoUse
from cloudimg.config import parse_size
from cloudimg.errors import QuotaExceededError
from cloudimg.units import human_bytes
from cloudimg.yaml_files import yaml_document

__all__ = [
    "NO_QUOTAS",
    "Quota",
    "QuotaGate",
    "QuotaUse",
    "Quotas",
    "Room",
    "parse_quotas",
    "quota_uses",
]

_KEYS = {"repos", "bytes", "tags"}


@dataclass(frozen=True, slots=True)
class Quota:
    """One rule of the quota file: the repositories its glob matches, and their limits."""

    repos: str
    bytes: int | None = None
    """The most bytes each matching repository may hold; None: no limit."""
    tags: int | None = None
    """The most tags each matching repository may have; None: no limit."""


@dataclass(frozen=True, slots=True)
class Quotas:
    """The rules of a quota file, in its order."""

    rules: tuple[Quota, ...] = ()

    def of(self, repo: str) -> Quota | None:
        """``repo``'s quota: the first rule whose glob matches it (None: no quota)."""
        return next((rule for rule in self.rules if fnmatchcase(repo, rule.repos)), None)


NO_QUOTAS = Quotas()


def parse_quotas(text: str) -> Quotas:
    """Read a quota file's text (see the module docstring).

    Raises:
        ValueError: naming the first thing that is wrong.
    """
    data = yaml_document(text)
    if not isinstance(data, dict) or set(data) != {"quotas"}:
        raise ValueError("it is not a mapping with the one key 'quotas'")
    listed = data["quotas"]
    if listed is None:
        return NO_QUOTAS
    if not isinstance(listed, list):
        raise ValueError("'quotas' is not a list of rules")
    return Quotas(tuple(_rule(number, entry) for number, entry in enumerate(listed, start=1)))


def _rule(number: int, entry: Any) -> Quota:
    at = f"quota {number}"
    if not isinstance(entry, dict) or "repos" not in entry or set(entry) - _KEYS:
        raise ValueError(f"{at}: a rule is a mapping of 'repos' and 'bytes' and/or 'tags'")
    repos = entry["repos"]
    if not isinstance(repos, str) or not repos or "/" in repos or len(repos) > 128:
        raise ValueError(f"{at}: 'repos' is a glob over repository names (no '/')")
    if "bytes" not in entry and "tags" not in entry:
        raise ValueError(f"{at}: a rule needs 'bytes', 'tags' or both")
    return Quota(
        repos, _limit(at, "bytes", entry.get("bytes")), _limit(at, "tags", entry.get("tags"))
    )


def _limit(at: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):  # YAML's yes/no: a bool is an int to Python
        raise ValueError(f"{at}: '{key}' is not a number")
    if isinstance(value, int) and value >= 0:
        return value
    if key == "bytes" and isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ValueError(f"{at}: 'bytes': {exc}") from None
    what = "a number of bytes like 1048576, 512M or 50GiB" if key == "bytes" else "a whole number"
    raise ValueError(f"{at}: '{key}' is not {what}")


@dataclass(frozen=True, slots=True)
class Room:
    """What a repository under a byte quota has left, measured before an upload."""

    repo: str
    quota: Quota
    used: RepoUse

    @property
    def limit(self) -> int:
        assert self.quota.bytes is not None, "a room is measured for a byte quota"
        return self.quota.bytes

    @property
    def left(self) -> int:
        return max(self.limit - self.used.bytes, 0)

    def admit(self, size: int) -> None:
        """Refuse an upload of ``size`` bytes (at least) that would not fit."""
        if size > self.left:
            raise _over_bytes(self.repo, self.quota, self.used.bytes, size)


def _over_bytes(repo: str, quota: Quota, used: int, size: int) -> QuotaExceededError:
    assert quota.bytes is not None
    return QuotaExceededError(
        f"this write would take repository {repo} past its quota of "
        f"{human_bytes(quota.bytes)} ({quota.bytes} bytes, rule {quota.repos!r}): it uses "
        f"{human_bytes(used)} ({used} bytes) and the write adds {size} bytes; "
        "nothing was stored",
        {
            "repo": repo,
            "quota": quota.repos,
            "quota_bytes": quota.bytes,
            "used_bytes": used,
            "upload_bytes": size,
        },
    )


def _over_tags(repo: str, quota: Quota, used: int) -> QuotaExceededError:
    return QuotaExceededError(
        f"this write would take repository {repo} past its quota of {quota.tags} tags "
        f"(rule {quota.repos!r}): it has {used}; nothing was stored, delete a tag first",
        {"repo": repo, "quota": quota.repos, "quota_tags": quota.tags, "used_tags": used},
    )


class QuotaGate:
    """The quotas of the current quota file (``rules``: the file's value now, reloaded
    by its owner when it changes) over the catalog's measure of use."""

    def __init__(self, catalog: Catalog, rules: Callable[[], Quotas] = lambda: NO_QUOTAS) -> None:
        self._catalog = catalog
        self._rules = rules

    def quota_of(self, repo: str) -> Quota | None:
        return self._rules().of(repo)

    def covers(self, repo: str) -> bool:
        """Whether ``repo`` has a quota (its writes are locked and measured)."""
        return self.quota_of(repo) is not None

    def check(self, repo: str, before: RepoUse, after: RepoUse) -> None:
        """Refuse a write that grows ``repo``'s use past its quota (both measured under the
        repository's lock, in the write's transaction)."""
        quota = self.quota_of(repo)
        if quota is None:
            return
        if quota.bytes is not None and after.bytes > max(quota.bytes, before.bytes):
            raise _over_bytes(repo, quota, before.bytes, after.bytes - before.bytes)
        if quota.tags is not None and after.tags > max(quota.tags, before.tags):
            raise _over_tags(repo, quota, before.tags)

    async def room(self, repo: str) -> Room | None:
        """What ``repo``'s byte quota leaves now; None when it has none."""
        quota = self.quota_of(repo)
        if quota is None or quota.bytes is None:
            return None
        return Room(repo, quota, await self._catalog.usage.of(repo))

    async def uses(self) -> list[QuotaUse]:
        """Every repository under a quota that holds something, with its use."""
        return quota_uses(self._rules(), await self._catalog.usage.every())


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """A repository's use against its quota (``cloudimg du``, the storage page)."""

    repo: str
    quota: Quota
    used: RepoUse

    @property
    def bytes_fraction(self) -> float | None:
        """Use over the byte limit (1.0: full); None without one."""
        limit = self.quota.bytes
        if limit is None:
            return None
        return 1.0 if limit == 0 else self.used.bytes / limit


def quota_uses(quotas: Quotas, uses: dict[str, RepoUse]) -> list[QuotaUse]:
    """The repositories of ``uses`` that have a quota, by name."""
    found = []
    for repo in sorted(uses):
        quota = quotas.of(repo)
        if quota is not None:
            found.append(QuotaUse(repo, quota, uses[repo]))
    return found
