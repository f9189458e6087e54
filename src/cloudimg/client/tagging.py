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

    Returns the digest named and the digest-pinned URL of the target.
    """
    digest = (
        str(source.digest) if source.digest is not None else describe(session, source)["digest"]
    )
    if not digest:
        raise ClientError(f"{source}: the server named no digest")
    response = session.request("POST", f"{target.path}/retag", write=True, json={"digest": digest})
    return digest, session.absolute(response.headers.get("Location", ""))
