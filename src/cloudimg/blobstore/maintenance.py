"""What only maintenance asks of the file-system blob store: listings, checksums, a legacy link.

Blocking functions over the store's directories, run on a thread by
``FilesystemBlobStore`` for ``MaintenanceBlobStore`` (gc, fsck, import-legacy); the
upload and download paths never come here.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import blake3

from cloudimg.blobstore.base import StagedBlob, StoredFile
from cloudimg.blobstore.staging import _READ_BLOCK, _StagingLock

__all__ = ["TRASH_NAME", "checksum", "list_area", "list_blobs", "stage_in_place"]

TRASH_NAME = re.compile(r"([0-9a-f]{64})\.[0-9a-f]+")
"""A trashed (or quarantined) blob's name: its blake3 and a random suffix."""
_HEX2 = re.compile(r"[0-9a-f]{2}")
_HEX62 = re.compile(r"[0-9a-f]{62}")


def _stored(path: Path, digest: str | None) -> StoredFile | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return StoredFile(str(path), path.name, st.st_size, st.st_mtime, st.st_ino, digest)


def list_blobs(blobs_dir: Path) -> list[StoredFile]:
    """Everything in the blob tree; ``digest`` is None for what does not look like a blob."""
    found: list[StoredFile] = []
    if not blobs_dir.is_dir():
        return found
    for fan in sorted(blobs_dir.iterdir()):
        if not fan.is_dir() or fan.is_symlink() or not _HEX2.fullmatch(fan.name):
            entry = _stored(fan, None)
            found += [entry] if entry else []
            continue
        for path in sorted(fan.iterdir()):
            looks_like_blob = bool(_HEX62.fullmatch(path.name)) and path.is_file()
            entry = _stored(path, fan.name + path.name if looks_like_blob else None)
            found += [entry] if entry else []
    return found


def list_area(directory: Path, pattern: re.Pattern[str] | None) -> list[StoredFile]:
    """Everything in ``directory``; ``digest`` is the first group of ``pattern`` when the
    name matches it, else None."""
    found: list[StoredFile] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        match = pattern.fullmatch(path.name) if pattern else None
        entry = _stored(path, match.group(1) if match else None)
        found += [entry] if entry else []
    return found


def _hash_fd(fd: int, on_bytes: Callable[[int], None] | None = None) -> tuple[str, str, int]:
    """blake3, sha256 and size of what ``fd`` reads, in large reads."""
    b3 = blake3.blake3(max_threads=blake3.blake3.AUTO)
    sha = hashlib.sha256()
    size = 0
    buffer = bytearray(_READ_BLOCK)
    view = memoryview(buffer)
    while n := os.readv(fd, [buffer]):
        b3.update(view[:n])
        sha.update(view[:n])
        size += n
        if on_bytes is not None:
            on_bytes(n)
    return b3.hexdigest(), sha.hexdigest(), size


def checksum(path: Path, on_bytes: Callable[[int], None] | None) -> tuple[str, int] | None:
    """blake3 hex of the blob file ``path`` and its inode (its ``version``); None: missing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        digest, _sha256, _size = _hash_fd(fd, on_bytes)
        return digest, os.fstat(fd).st_ino
    finally:
        os.close(fd)


def stage_in_place(path: Path, fd: int) -> StagedBlob:
    """The staged bytes of ``path`` (a second name of a legacy file, open and locked as
    ``fd``): hashed where they are and made durable, the lock going with the blob."""
    lock = _StagingLock(fd)
    try:
        b3, sha, size = _hash_fd(fd)
        os.fsync(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        lock.release()
        raise
    return StagedBlob(blake3=b3, sha256=sha, size=size, key=str(path), lease=lock)
