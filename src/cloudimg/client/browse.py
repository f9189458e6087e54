"""Reads: what the server lists, a tag's ``/meta``, a digest's headers, a tag's history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloudimg.client.errors import ConnectionFailedError
from cloudimg.client.reference import ImageRef
from cloudimg.client.session import Session, repr_sha256

__all__ = [
    "describe",
    "history",
    "list_images",
    "list_repositories",
    "list_tags",
    "query_tags",
]


def list_repositories(session: Session) -> list[str]:
    return _names(session, "")


def list_images(session: Session, repo: str) -> list[dict[str, Any]]:
    """The images of ``repo`` with their tag counts, total size and last change.

    Read page by page (``?details=true``, ``after``); a server without detailed listings
    answers the names only, and those are what is shown then.
    """
    images: list[dict[str, Any]] = []
    params: dict[str, str] = {"details": "true"}
    while True:
        body = _json(session, f"/{repo}", params=params)
        page = body.get("data")
        if not isinstance(page, list):
            session.ensure_registry()
            raise ConnectionFailedError(f"GET {session.url('/' + repo)}: the answer is not a list")
        images += [item if isinstance(item, dict) else {"image": str(item)} for item in page]
        after = body.get("next")
        if not after:
            return images
        params = {"details": "true", "after": str(after)}


def list_tags(session: Session, repo: str, image: str) -> list[dict[str, Any]]:
    """Each tag of the image with what its ``/meta`` says (one request per tag)."""
    return [
        {"tag": tag, **describe(session, ImageRef(repo, image, tag=tag))}
        for tag in _names(session, f"/{repo}/{image}")
    ]


def query_tags(
    session: Session,
    meta: Sequence[tuple[str, str]],
    has: Sequence[str] = (),
    repo_prefix: str = "",
    image_prefix: str = "",
) -> list[dict[str, Any]]:
    """Every tag whose metadata has each ``meta`` key with that value and each ``has``
    key, in repositories and images with those name prefixes (``GET /reg/_query``).

    One request per page of up to 1,000 tags, each with the details of a detailed
    listing, its names and its metadata; never one ``/meta`` request per tag.
    """
    params: dict[str, Any] = {
        "meta": [f"{key}={value}" for key, value in meta],
        "has": list(has),
    }
    if repo_prefix:
        params["repo_prefix"] = repo_prefix
    if image_prefix:
        params["image_prefix"] = image_prefix
    tags: list[dict[str, Any]] = []
    while True:
        body = _json(session, "/_query", params=params)
        page = body.get("data")
        if not isinstance(page, list):
            session.ensure_registry()
            raise ConnectionFailedError(f"GET {session.url('/_query')}: the answer is not a list")
        tags += [item for item in page if isinstance(item, dict)]
        after = body.get("next")
        if not after:
            return tags
        params = {**params, "after": str(after)}


def describe(session: Session, ref: ImageRef) -> dict[str, Any]:
    """A tag's ``/meta`` view; for a digest, what the download's headers say."""
    if ref.tag is not None:
        body = _json(session, f"{ref.path}/meta")
        return {
            "reference": str(ref),
            "digest": body.get("digest"),
            "sha256": body.get("sha256"),
            "size": body.get("size"),
            "format": body.get("format"),
            "virtual_size": body.get("virtual_size"),
            "created": body.get("created"),
            "updated": body.get("updated"),
            "meta": body.get("data") or {},
            # None from a server older than the field: unknown, not "no".
            "immutable": body.get("immutable"),
            "immutable_rule": body.get("immutable_rule"),
            "url": session.url(ref.path),
        }
    headers = session.request("HEAD", ref.path).headers
    return {
        "reference": str(ref),
        "digest": headers.get("ETag", "").strip('"') or None,
        "sha256": _prefixed(repr_sha256(headers)),
        "size": int(headers.get("Content-Length", "0")),
        "created": headers.get("Last-Modified"),
        "url": session.url(ref.path),
    }


def history(session: Session, ref: ImageRef) -> list[dict[str, Any]]:
    """The tag's changes, newest first (``GET …/history``)."""
    data = _json(session, f"{ref.path}/history").get("data")
    if not isinstance(data, list):
        session.ensure_registry()
        raise ConnectionFailedError(f"GET {ref}/history: the answer is not a list")
    return data


def _names(session: Session, path: str) -> list[str]:
    data = _json(session, path).get("data")
    if not isinstance(data, list):
        session.ensure_registry()
        raise ConnectionFailedError(f"GET {session.url(path)}: the answer is not a list")
    return [str(name) for name in data]


def _json(session: Session, path: str, **kwargs: Any) -> dict[str, Any]:
    response = session.request("GET", path, **kwargs)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        session.ensure_registry()
        raise ConnectionFailedError(f"GET {session.url(path)}: the answer is not JSON")
    return body


def _prefixed(sha256: str | None) -> str | None:
    return None if sha256 is None else f"sha256:{sha256}"
