"""What a push checks before it sends a byte of the image: what the server can already
tell (the tag is immutable, the write token is refused) and what the image's first MiB
already decides (the server's inspection, run here on the same bytes).

A ``/v2`` push cannot be judged by the server before its manifest (or the final retag)
says the blob is a disk, so without these checks an image the server will refuse, or a
tag it will not overwrite, would cost the whole upload first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from cloudimg.client.errors import RefusedError
from cloudimg.client.reference import ImageRef
from cloudimg.client.session import Session
from cloudimg.errors import ImageRefusedError
from cloudimg.images import KNOWN_FORMATS, ImageInspector, InspectionPolicy
from cloudimg.images.inspector import HEAD_BYTES

__all__ = ["check_before_push"]

_SAFETY_ONLY: Final = InspectionPolicy(2**63, KNOWN_FORMATS)
"""The safety rules alone: the server's own limits (formats, virtual size) are its to
apply, and this client does not know them."""


def check_before_push(session: Session, path: Path, ref: ImageRef, declared: str | None) -> None:
    """Raise ``RefusedError`` (exit 4) for a push the server is known to refuse."""
    _refuse_unsafe(path, ref, declared)
    _refuse_immutable(session, ref)
    _refuse_bad_token(session, ref)


def _refuse_unsafe(path: Path, ref: ImageRef, declared: str | None) -> None:
    """The server's inspection on the first MiB (all of a smaller file)."""
    inspector = ImageInspector(_SAFETY_ONLY, declared)
    with path.open("rb") as file:
        head = file.read(HEAD_BYTES + 1)
    try:
        inspector.feed(head[:HEAD_BYTES])
        if len(head) <= HEAD_BYTES:
            inspector.finish(len(head))
        elif inspector.refusal is not None:
            raise inspector.refusal
    except ImageRefusedError as exc:
        rule = (exc.context or {}).get("rule", "?")
        raise RefusedError(f"{ref}: not sent, the server would refuse it: {exc.message} "
                           f"(rule {rule})") from None  # fmt: skip


def _refuse_immutable(session: Session, ref: ImageRef) -> None:
    """The tag's ``/meta`` says whether it may be overwritten (absent: a new tag)."""
    response = session.raw("GET", f"{ref.path}/meta", absolute=False)
    if response.status_code == 200 and response.json().get("immutable"):
        raise RefusedError(
            f"{ref}: not sent, the tag is immutable and the server would refuse it (409); "
            "release it first (cloudimg immutable --release) or push another tag"
        )


def _refuse_bad_token(session: Session, ref: ImageRef) -> None:
    """A write the server must authorize and that changes nothing: an upload session
    opened and cancelled. A refused token fails here, before the image is read."""
    opened = session.checked(
        session.raw("POST", f"/v2/{ref.repo}/{ref.image}/blobs/uploads/", write=True)
    )
    location = opened.headers.get("Location")
    if location:
        session.raw("DELETE", location, write=True)
