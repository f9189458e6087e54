"""Writes that send no image: delete a tag, point a tag at stored bytes (retag)."""

from __future__ import annotations

from cloudimg.client.browse import describe
from cloudimg.client.errors import ClientError
from cloudimg.client.reference import ImageRef
from cloudimg.client.session import Session

__all__ = ["delete_tag", "retag"]


def delete_tag(session: Session, ref: ImageRef, *, purge_history: bool = False) -> None:
    """``DELETE`` the tag (its history and retained bytes stay unless ``purge_history``)."""
    params = {"purge": "history"} if purge_history else {}
    session.request("DELETE", ref.path, write=True, params=params)


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
