"""Writes that send no image: delete a tag, point a tag at stored bytes (retag),
make a tag immutable or release it."""

from __future__ import annotations

from dataclasses import dataclass

from cloudimg.client.browse import describe, history
from cloudimg.client.errors import ClientError
from cloudimg.client.reference import ImageRef
from cloudimg.client.session import Session

__all__ = ["HeldByHistory", "delete_tag", "held_by_history", "retag", "set_immutable"]


@dataclass(frozen=True, slots=True)
class HeldByHistory:
    """What a tag's history retains: distinct digests and the bytes they add up to."""

    digests: int
    size: int


def delete_tag(session: Session, ref: ImageRef, *, purge_history: bool = False) -> None:
    """``DELETE`` the tag (its history and retained bytes stay unless ``purge_history``)."""
    params = {"purge": "history"} if purge_history else {}
    session.request("DELETE", ref.path, write=True, params=params)


def held_by_history(session: Session, ref: ImageRef) -> HeldByHistory | None:
    """The digests the tag's history retains (they download by digest reference and gc
    leaves them); None when the history cannot be read or holds nothing."""
    try:
        entries = history(session, ref)
    except ClientError:
        return None
    sizes: dict[str, int] = {}
    for entry in entries:
        digest, size = entry.get("digest"), entry.get("size")
        if entry.get("retained") and isinstance(digest, str) and isinstance(size, int):
            sizes[digest] = size
    return HeldByHistory(len(sizes), sum(sizes.values())) if sizes else None


def set_immutable(session: Session, ref: ImageRef, immutable: bool) -> bool:
    """Make the tag immutable (``PUT …/immutable``) or release it (``DELETE``); whether
    that changed anything (False: it already was so)."""
    method = "PUT" if immutable else "DELETE"
    response = session.request(method, f"{ref.path}/immutable", write=True)
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        data = None
    return not isinstance(data, dict) or bool(data.get("changed", True))


def retag(session: Session, source: ImageRef, target: ImageRef) -> tuple[str, str]:
    """Point ``target`` (a tag) at the bytes ``source`` names, sending no bytes.

    A tag as ``source`` gives its metadata too (the new tag is the same image); for a
    digest the server takes the metadata the target last had with those bytes.
    Returns the digest named and the digest-pinned URL of the target.
    """
    body: dict[str, object]
    if source.digest is not None:
        body = {"digest": str(source.digest)}
    else:
        details = describe(session, source)
        if not details.get("digest"):
            raise ClientError(f"{source}: the server named no digest")
        body = {"digest": details["digest"], "meta": details.get("meta") or {}}
    response = session.request("POST", f"{target.path}/retag", write=True, json=body)
    return str(body["digest"]), session.absolute(response.headers.get("Location", ""))
