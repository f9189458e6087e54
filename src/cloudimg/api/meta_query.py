"""The conditions of a metadata query, from ``/reg/_query``'s parameters or from the
search box of the web pages (``key=value``, ``has:key`` terms), checked one way.

Both end in a ``MetaQuery`` for ``CatalogReads.query_tags``; a bad condition is a 400
that names it, before anything is read.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from cloudimg.catalog import META_INDEX_CHARS, MetaQuery
from cloudimg.errors import InvalidArgumentError
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name

__all__ = [
    "MAX_QUERY_CONDITIONS",
    "QUERY_PARAMETERS",
    "meta_query",
    "query_cursor",
    "query_term",
    "query_terms",
]

MAX_QUERY_CONDITIONS = 16
"""``meta`` and ``has`` conditions one metadata query may combine, together."""
QUERY_PARAMETERS = frozenset({"meta", "has", "repo_prefix", "image_prefix", "limit", "after"})
"""What ``GET /reg/_query`` takes; any other parameter is refused."""
_PREFIX = re.compile(r"[a-z0-9-]{0,63}")
_TERM_PARAMETERS = {"has:": "has", "repo:": "repo_prefix", "image:": "image_prefix"}


def meta_query(params: dict[str, list[str]]) -> MetaQuery:
    """The query ``params`` (``meta``, ``has``, ``repo_prefix``, ``image_prefix``, each a
    list of the values given) ask for, refused whole (400) at the first bad one."""
    equals: list[tuple[str, str]] = []
    for condition in params.get("meta", []):
        key, sep, value = condition.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(
                "query parameter 'meta' is key=value", {"meta": condition[:200]}
            )
        equals.append((_meta_text("key", key), _meta_text("value", value)))
    present = [_meta_text("key", key) for key in params.get("has", [])]
    if any(not key for key in present):
        raise InvalidArgumentError("query parameter 'has' names a key")
    if len(equals) + len(present) > MAX_QUERY_CONDITIONS:
        raise InvalidArgumentError(
            f"a query combines at most {MAX_QUERY_CONDITIONS} meta and has conditions",
            {"conditions": len(equals) + len(present)},
        )
    prefixes = [_prefix(params, name) for name in ("repo_prefix", "image_prefix")]
    return MetaQuery(tuple(equals), tuple(present), *prefixes)


def query_terms(text: str) -> dict[str, list[str]]:
    """The search box's terms as ``meta_query`` parameters: ``key=value`` (split at the
    first ``=``), ``has:key``, ``repo:prefix``, ``image:prefix``, separated by spaces;
    quotes as a shell's keep a space in a term (``"note=two words"``).

    A term that is none of these is refused: the page would otherwise answer a query
    wider than the one typed.
    """
    try:
        terms = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise InvalidArgumentError(f"the query's quotes do not close: {exc}") from exc
    params: dict[str, list[str]] = {}
    for term in terms:
        if "=" in term:
            params.setdefault("meta", []).append(term)
            continue
        start = next((s for s in _TERM_PARAMETERS if term.startswith(s)), None)
        if start is None:
            raise InvalidArgumentError(
                "a query term is key=value, has:key, repo:prefix or image:prefix",
                {"term": term[:200]},
            )
        params.setdefault(_TERM_PARAMETERS[start], []).append(term[len(start) :])
    return params


def query_term(key: str, value: Any) -> str:
    """The search box's term that finds a tag's ``key`` with ``value`` (quoted as
    ``query_terms`` reads it), or "" when the index does not hold them: a key or value
    longer than ``META_INDEX_CHARS``, or a key with ``=`` (a term splits at the first)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if "=" in key or len(key) > META_INDEX_CHARS or len(text) > META_INDEX_CHARS:
        return ""
    return shlex.quote(f"{key}={text}")


def query_cursor(after: str | None) -> tuple[str, str, str] | None:
    """The ``after`` of a metadata query: the last ``repo/image/tag`` of the previous page."""
    if after is None:
        return None
    parts = after.split("/")
    if len(parts) != 3:
        raise InvalidArgumentError(
            "query parameter 'after' is repo/image/tag (the 'next' of the previous page)",
            {"after": after[:200]},
        )
    return (
        validate_repo_name(parts[0]),
        validate_image_name(parts[1]),
        validate_tag_name(parts[2]),
    )


def _meta_text(kind: str, text: str) -> str:
    # The index holds keys and values up to this length; a longer one could match nothing.
    if len(text) > META_INDEX_CHARS:
        raise InvalidArgumentError(
            f"a metadata {kind} in a query is at most {META_INDEX_CHARS} characters",
            {kind: text[:200]},
        )
    return text


def _prefix(params: dict[str, list[str]], name: str) -> str:
    values = params.get(name, [])
    if len(values) > 1 or (values and not _PREFIX.fullmatch(values[0])):
        raise InvalidArgumentError(
            f"query parameter '{name}' is one name prefix: up to 63 of a-z, 0-9 and -",
            {name: [value[:100] for value in values[:3]]},
        )
    return str(values[0]) if values else ""
