"""Hooks of the catalog's tag writes: what a slice beside the catalog runs in a tag
write's transaction, and what it is told once the write committed.

The catalog knows no slice. One that keeps rows tied to what an image holds (the OCI
slice's kept pushes, ``cloudimg.oci.store``) registers its callbacks here when the
registry is opened; every tag write runs them in its own transaction, so their rows
change with the tag, under its locks, or not at all. The reference counts stay the
catalog's: a hook says which references its rows held, and the catalog releases them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["ImageChanged", "TagHooks", "TagPointed", "TagWritten"]

TagPointed = Callable[[AsyncSession, str, str, str], Awaitable[None]]
"""A tag is being created or moved by a write: ``(session, repo, image, tag)``."""

ImageChanged = Callable[[AsyncSession, str, str], Awaitable[list[str]]]
"""What an image holds may have changed (a tag written, deleted or its history purged):
``(session, repo, image)``; the blake3 of each blob reference the hook's rows held and
let go, which the catalog releases in the same transaction."""

TagWritten = Callable[[], None]
"""A tag write that may name new bytes committed (an upload's commit, a retag)."""


class TagHooks(NamedTuple):
    """The callbacks registered with one catalog, run in the order they were added (each
    catalog makes its own lists: ``TagHooks([], [], [])``)."""

    tag_pointed: list[TagPointed]
    image_changed: list[ImageChanged]
    tag_written: list[TagWritten]
