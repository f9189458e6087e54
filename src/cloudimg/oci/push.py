"""What a pushed manifest means for cloudimg, over the blob store: the rules are
:mod:`cloudimg.containerdisk_layer`'s (a leaf the client shares); this module reads a
stored layer through them."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudimg.blobstore import BlobReader
from cloudimg.containerdisk_layer import (
    ACCEPTED_MANIFEST_TYPES,
    DiskLayer,
    ManifestRefused,
    chosen_child,
    disk_layer_of,
    disk_size_limit,
    manifest_json,
)
from cloudimg.containerdisk_layer import unpack_disk as _unpack_from

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "ACCEPTED_MANIFEST_TYPES",
    "DiskLayer",
    "ManifestRefused",
    "chosen_child",
    "disk_layer_of",
    "disk_size_limit",
    "manifest_json",
    "unpack_disk",
]

_READ: int = 4 * 1024 * 1024


class _ReaderFile(io.RawIOBase):
    """A blocking raw file over a :class:`BlobReader` (buffered for the decompressors)."""

    def __init__(self, reader: BlobReader) -> None:
        super().__init__()
        self._reader = reader
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self._reader.read(min(len(view), _READ), self._offset)
        view[: len(data)] = data
        self._offset += len(data)
        return len(data)


def unpack_disk(
    reader: BlobReader,
    packing: str,
    write: Callable[[bytes], None],
    *,
    max_virtual_size: int,
    max_image_size: int | None = None,
) -> int:
    """:func:`cloudimg.containerdisk_layer.unpack_disk` of a stored layer (blocking; run
    it on a thread): the disk's bytes to ``write``, its size; the same refusals."""
    return _unpack_from(
        _ReaderFile(reader),
        packing,
        write,
        max_virtual_size=max_virtual_size,
        max_image_size=max_image_size,
    )
