"""A stored (or staged) blob file open for reading: positional reads, zero-copy sending.

The descriptor keeps the bytes readable after the file is deleted, so a download goes
on from it even when a delete frees the blob meanwhile.
"""

from __future__ import annotations

import os

__all__ = ["FilesystemBlobReader"]

_NO_WAIT: int = getattr(os, "RWF_NOWAIT", 0)


class FilesystemBlobReader:
    """A blob file open for reading; the descriptor keeps the bytes even if it is deleted."""

    __slots__ = ("_fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def fileno(self) -> int | None:
        return self._fd if self._fd >= 0 else None

    def read_nowait(self, size: int, offset: int) -> bytes | None:
        buffer = bytearray(size)
        try:
            length = os.preadv(self._fd, [buffer], offset, _NO_WAIT)
        except OSError:  # EAGAIN: not cached; EOPNOTSUPP: a file system without RWF_NOWAIT
            return None
        return bytes(memoryview(buffer)[:length])

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
