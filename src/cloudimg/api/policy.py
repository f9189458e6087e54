"""Scopes: which credential may do what to which ``repo/image`` (``--policy-file``).

The policy file (YAML, or JSON, which PyYAML reads as YAML) names credentials and gives
each a list of scopes::

    tokens:                 # names of the write token file (``name token`` lines)
      ci-team-a:
        - names: ["team-a/*"]
          actions: [pull, push, delete]
    users:                  # user names of the read credentials file (pull only)
      student:
        - names: ["course-*/*"]
          actions: [pull]

A scope's ``names`` are globs over ``repo/image`` with exactly one ``/``: the part before
it is matched against the repository, the part after it against the image, each with
:func:`fnmatch.fnmatchcase` (``*`` any characters, ``?`` one, ``[...]`` a set). So ``*``
never crosses the ``/``: ``team-a/*`` is every image of ``team-a``, ``*`` alone is not a
valid glob, and ``*/*`` is everything. A credential the policy does not name (an unnamed
token among them) has no scope at all: it may authenticate but its every write and
scoped read is refused (fail closed). Actions are independent: ``push`` does not imply
``pull``.

An ``oidc`` section lists trusted OIDC issuers and maps their tokens' claims to scopes
(:mod:`cloudimg.api.oidc_config`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from cloudimg.api.oidc_config import OidcIssuer, parse_issuers
from cloudimg.yaml_files import yaml_document

__all__ = [
    "ACTIONS",
    "EVERYTHING",
    "SCOPE_OPT",
    "Grants",
    "Policy",
    "Scope",
    "actions_of",
    "credential_label",
    "grants_of",
    "parse_policy",
    "set_grants",
]

ACTIONS = ("pull", "push", "delete", "admin")
_GLOB_PART = re.compile(r"[a-z0-9._*?\[\]!-]{1,128}")
_SECTIONS = {"tokens": "token", "users": "user"}
_GRANTS = "cloudimg.grants"
"""Key in the request's scope state: the :class:`Grants` of its credential (policy only)."""
SCOPE_OPT = "cloudimg.scope"
"""A route handler's ``opt`` key naming the action it needs when its method does not say."""
_METHOD_ACTIONS = {"GET": "pull", "HEAD": "pull", "POST": "push", "PUT": "push", "DELETE": "delete"}


@dataclass(frozen=True, slots=True)
class Scope:
    """Actions on the names one ``repo/image`` glob matches."""

    repo: str
    image: str
    actions: frozenset[str]

    def covers(self, action: str, repo: str, image: str | None) -> bool:
        """Whether ``action`` on ``repo/image`` is granted (``image`` None: any image of repo)."""
        if action not in self.actions or not fnmatchcase(repo, self.repo):
            return False
        return image is None or fnmatchcase(image, self.image)


@dataclass(frozen=True, slots=True)
class Grants:
    """What one request's credential may do: its scopes, or everything (no policy)."""

    scopes: tuple[Scope, ...] = ()
    unlimited: bool = False
    credential: str = field(default="")
    """How logs name the credential (``token ci``, ``user alice``): never the secret."""

    def allows(self, action: str, repo: str, image: str) -> bool:
        """Whether ``action`` on ``repo/image`` is granted."""
        return self.unlimited or any(s.covers(action, repo, image) for s in self.scopes)

    def lists_repo(self, repo: str) -> bool:
        """Whether a listing shows ``repo``: some pull scope matches it (for some image)."""
        return self.unlimited or any(s.covers("pull", repo, None) for s in self.scopes)

    def lists(self, path: str) -> bool:
        """Whether a listing shows ``repo/image`` (one string, as ``/v2`` and queries name it)."""
        repo, _, image = path.partition("/")
        return self.allows("pull", repo, image)


EVERYTHING = Grants(unlimited=True)
"""No policy, or an open read: today's meaning."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The scopes of named credentials, by kind (``token`` or ``user``)."""

    scopes: Mapping[tuple[str, str], tuple[Scope, ...]]
    issuers: tuple[OidcIssuer, ...] = ()
    """The OIDC issuers whose tokens are accepted (the ``oidc`` section)."""

    def grants(self, kind: str, name: str | None) -> Grants:
        """The grants of a credential; none for a name (or an unnamed token) not listed."""
        found = self.scopes.get((kind, name)) if name else None
        return Grants(found or (), credential=credential_label(kind, name))


def credential_label(kind: str, name: str | None) -> str:
    """How the audit lines name a credential (``token ci``, ``user alice``, ``unnamed
    token``): its kind and name, never its secret."""
    return f"{kind} {name}" if name else f"unnamed {kind}"


def parse_policy(text: str) -> Policy:
    """Read a policy file's text (see the module docstring).

    Raises:
        ValueError: naming the first thing that is wrong (never quoting more than a name).
    """
    data = yaml_document(text)
    if not isinstance(data, dict):
        raise ValueError("it is not a mapping of 'tokens', 'users' and 'oidc'")
    unknown = sorted(str(key) for key in data if key not in (*_SECTIONS, "oidc"))
    if unknown:
        raise ValueError(
            f"unknown key {unknown[0][:64]!r} (the keys are 'tokens', 'users' and 'oidc')"
        )
    scopes: dict[tuple[str, str], tuple[Scope, ...]] = {}
    for section, kind in _SECTIONS.items():
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise ValueError(f"'{section}' is not a mapping of names to scope lists")
        for name, listed in entries.items():
            where = f"{section}.{str(name)[:128]}"
            found = _scopes(where, listed)
            if kind == "user" and any(s.actions - {"pull"} for s in found):
                raise ValueError(f"{where}: read credentials may only pull")
            scopes[(kind, str(name))] = found
    return Policy(scopes, parse_issuers(data.get("oidc"), _scopes))


def _scopes(where: str, listed: Any) -> tuple[Scope, ...]:
    if not isinstance(listed, list):
        raise ValueError(f"{where}: not a list of scopes")
    found: list[Scope] = []
    for number, entry in enumerate(listed, start=1):
        at = f"{where} scope {number}"
        if not isinstance(entry, dict) or set(entry) != {"names", "actions"}:
            raise ValueError(f"{at}: a scope is a mapping of 'names' and 'actions'")
        actions = _strings(at, "actions", entry["actions"])
        bad = [action for action in actions if action not in ACTIONS]
        if bad:
            raise ValueError(f"{at}: unknown action {bad[0][:32]!r} ({', '.join(ACTIONS)})")
        for glob in _strings(at, "names", entry["names"]):
            repo, slash, image = glob.partition("/")
            if not slash or not _GLOB_PART.fullmatch(repo) or not _GLOB_PART.fullmatch(image):
                raise ValueError(
                    f"{at}: {glob[:128]!r} is not a repo/image glob (one '/', each side "
                    "a-z, 0-9, '._-' and the wildcards *?[]!)"
                )
            found.append(Scope(repo, image, frozenset(actions)))
    return tuple(found)


def _strings(at: str, key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{at}: '{key}' is a non-empty list of strings")
    return list(value)


def grants_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Grants:
    """What the request's credential may do (everything without a policy or on open reads)."""
    grants = (connection.scope.get("state") or {}).get(_GRANTS)
    return grants if isinstance(grants, Grants) else EVERYTHING


def actions_of(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler, method: str
) -> tuple[str, ...]:
    """The actions a route needs on its name: the handler's ``SCOPE_OPT``, else by method
    (a read pulls, ``POST``/``PUT``/``PATCH`` push, ``DELETE`` deletes; purging a tag's
    history is ``admin`` too)."""
    declared = handler.opt.get(SCOPE_OPT)
    action = declared if isinstance(declared, str) else _METHOD_ACTIONS.get(method, "push")
    if action == "delete" and connection.query_params.get("purge") == "history":
        return ("delete", "admin")
    return (action,)


def set_grants(connection: ASGIConnection[Any, Any, Any, Any], grants: Grants) -> None:
    """Keep the grants the guard found for the handlers that filter listings."""
    connection.scope.setdefault("state", {})[_GRANTS] = grants
