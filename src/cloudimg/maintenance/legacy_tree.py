"""The old server's tree, read as untrusted input: its entries, their files and metadata.

The old layout is ``<repo>/<image>/<tag>/image.bin`` with the tag's metadata in
``meta.json`` beside it. ``walk`` finds the directories that look like entries (the
rest is skipped with the reason); ``meta.json`` and ``image.bin`` are opened only when
they are regular files, never through a symbolic link and never in a way that blocks
(a FIFO: ``open_regular``), and ``meta.json`` is held to an upload's limit and parser
(``cloudimg.meta``), so nothing outside the tree becomes a tag's metadata or bytes.
What ``cloudimg.maintenance.import_legacy`` does with the entries is decided there.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from cloudimg.errors import InvalidArgumentError, NotFoundError
from cloudimg.meta import MAX_META_BYTES, parse_meta
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name

__all__ = [
    "IMAGE_FILE",
    "META_FILE",
    "Candidate",
    "Skipped",
    "blake3_of",
    "image_sizes",
    "link_count",
    "open_image",
    "open_regular",
    "read_meta",
    "remove_entry",
    "walk",
]

IMAGE_FILE = "image.bin"
META_FILE = "meta.json"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# When the old tree is the data root itself (an in-place migration), these are ours.
_STORE_NAMES = {"blobs", "staging", "trash", "quarantine"}
# gc's record of a release before 0008 (kept in the catalog since) and its temporary files.
_OLD_GC_RECORD = "gc-last-run.json"


_Skip = Callable[[Path, str], None]


@dataclass(frozen=True, slots=True)
class Skipped:
    """What of the old tree is not an entry, and why."""

    rel: str
    reason: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """A directory that looks like an entry: ``repo/image/tag``, its names valid."""

    rel: str
    """Relative to the old data root, e.g. ``repo/image/tag``."""
    directory: Path
    names: tuple[str, str, str]


def image_sizes(candidates: list[Candidate]) -> list[int]:
    """The size of each candidate's ``image.bin`` (0 when it cannot be looked at)."""
    sizes = []
    for candidate in candidates:
        try:
            sizes.append((candidate.directory / IMAGE_FILE).stat().st_size)
        except OSError:
            sizes.append(0)
    return sizes


def walk(source: Path, data_root: Path | None) -> tuple[list[Candidate], list[Skipped]]:
    """Entries that look like ``repo/image/tag`` directories, and the rest, skipped.

    Raises:
        NotFoundError: ``source`` is not a directory.
    """
    if not source.is_dir():
        raise NotFoundError(f"{source} is not a directory")
    in_place = data_root is not None and source.resolve() == data_root.resolve()
    own = data_root.resolve() if data_root is not None else None
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []

    def skip(path: Path, reason: str) -> None:
        skipped.append(Skipped(str(path.relative_to(source)), reason))

    for repo_dir in sorted(source.iterdir()):
        name = repo_dir.name
        if repo_dir.resolve() == own or (
            in_place
            and (name in _STORE_NAMES or name.startswith(("catalog.sqlite3", _OLD_GC_RECORD)))
        ):
            continue
        if not _is_dir(repo_dir, skip) or not _valid(repo_dir, validate_repo_name, skip):
            continue
        for image_dir in sorted(repo_dir.iterdir()):
            if not _is_dir(image_dir, skip) or not _valid(image_dir, validate_image_name, skip):
                continue
            for tag_dir in sorted(image_dir.iterdir()):
                if not _is_dir(tag_dir, skip) or not _valid(tag_dir, validate_tag_name, skip):
                    continue
                names = (repo_dir.name, image_dir.name, tag_dir.name)
                candidates.append(Candidate(str(tag_dir.relative_to(source)), tag_dir, names))
    return candidates, skipped


def _is_dir(path: Path, skip: _Skip) -> bool:
    if path.is_dir() and not path.is_symlink():
        return True
    skip(path, "not a directory (the old layout is <repo>/<image>/<tag>/image.bin)")
    return False


def _valid(path: Path, validate: Callable[[str], str], skip: _Skip) -> bool:
    try:
        validate(path.name)
    except InvalidArgumentError as exc:
        skip(path, exc.message)
        return False
    return True


class _NotRegularFileError(InvalidArgumentError):
    """A file of the entry is a link, a FIFO, a device, a socket or a directory."""


def open_regular(path: Path) -> int:
    """A descriptor of ``path`` for reading, when it is a regular file of its own.

    Nothing else is opened: a symbolic link is not followed (it could name any file
    of the host), and a FIFO, a device or a socket is refused from ``lstat`` before
    any open (opening one can block forever or act on a device). The open itself does
    not follow a link nor block, and ``fstat`` checks what was opened, so a file
    swapped for something else in between is refused too.

    Raises:
        FileNotFoundError: no such file.
        _NotRegularFileError: not a regular file (the message says what it is).
    """
    _check_regular(path, os.lstat(path).st_mode)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a link since the lstat
            raise _NotRegularFileError(_not_regular(path, stat.S_IFLNK)) from None
        raise
    try:
        _check_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)  # a regular file: reads never wait for a writer
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise _NotRegularFileError(_not_regular(path, stat.S_IFMT(mode)))


def _not_regular(path: Path, kind: int) -> str:
    what = {
        stat.S_IFLNK: "a symbolic link (not followed: it may name a file outside the tree)",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFDIR: "a directory",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }.get(kind, "not a regular file")
    return f"{path.name} is {what}; only a regular file is imported"


def read_meta(path: Path) -> dict[str, str]:
    """The entry's metadata, held to the rules of an upload's (``cloudimg.meta``).

    Reads at most ``MAX_META_BYTES`` + 1 bytes of a regular file (``open_regular``).

    Raises:
        InvalidArgumentError: no ``meta.json``, not a regular file, too large, or not
            what an upload accepts as metadata (the message says which).
    """
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise InvalidArgumentError(f"no {META_FILE}") from None
    try:
        raw = _read_at_most(fd, MAX_META_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_META_BYTES:
        raise InvalidArgumentError(
            f"{META_FILE} is larger than {MAX_META_BYTES} bytes, the limit of an upload's metadata"
        )
    try:
        return parse_meta(raw, META_FILE)
    except InvalidArgumentError as exc:
        reason = exc.message if exc.message.startswith(META_FILE) else f"{META_FILE}: {exc.message}"
        keys = (exc.context or {}).get("keys")
        if keys:
            reason += " (" + ", ".join(repr(key) for key in keys) + ")"
        raise InvalidArgumentError(reason) from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def blake3_of(path: Path) -> str:
    """The blake3 of the regular file ``path`` (``open_regular``), read in one mapping."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    fd = open_regular(path)
    try:
        if os.fstat(fd).st_size:
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                hasher.update(mapped)
    finally:
        os.close(fd)
    return hasher.hexdigest()


def remove_entry(directory: Path) -> None:
    """Drop an imported entry from the old tree, and its parents once they are empty."""
    (directory / IMAGE_FILE).unlink(missing_ok=True)
    (directory / META_FILE).unlink(missing_ok=True)
    for parent in (directory, directory.parent, directory.parent.parent):
        with contextlib.suppress(OSError):
            parent.rmdir()


def link_count(path: Path) -> int:
    """How many names the regular file ``path`` has (0: not a regular file of its own)."""
    status = os.lstat(path)
    return status.st_nlink if stat.S_ISREG(status.st_mode) else 0


def open_image(path: Path) -> BinaryIO:
    """The regular file ``path`` (``open_regular``) open for reading."""
    return os.fdopen(open_regular(path), "rb")
