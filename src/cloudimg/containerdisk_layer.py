"""What a pushed manifest means for cloudimg: which layer is the disk, and how to get it.

A leaf over bytes and files (no blob store, no HTTP): the OCI slice reads a pushed
layer through it (:mod:`cloudimg.oci.push`), and the client's ``cloudimg sync`` a
containerDisk it pulled from another registry (:mod:`cloudimg.client.feeds.oci_source`).

Two kinds of push are taken (docs/oci.md lists the media types):

- a **disk artifact** (as oras pushes it): one layer whose media type is not a tar, the
  disk file itself; its bytes become the image's blob as they are (no copy);
- a **containerDisk**: one tar layer (plain, gzip or zstd) holding one regular file
  directly under ``disk/``; that file is unpacked into a new blob.

Anything else (several layers, no disk in the tar, an index) is not a VM disk and is
refused, so cloudimg does not turn into a general container registry by accident.

Unpacking is bounded whatever the layer holds: the decompressors never hand over more
than they are asked for (a gzip or zstd bomb costs no memory), and a layer that unpacks
to more than a disk within ``--max-virtual-size`` can take is refused as soon as that is
known, under the rule ``virtual-size-too-large`` (see :func:`disk_size_limit`).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import zstandard

from cloudimg.errors import ImageRefusedError, InvalidArgumentError, PayloadTooLargeError

__all__ = [
    "ACCEPTED_MANIFEST_TYPES",
    "INDEX_MEDIA_TYPES",
    "DiskLayer",
    "ManifestRefused",
    "chosen_child",
    "disk_layer_of",
    "disk_size_limit",
    "manifest_json",
    "unpack_disk",
]

INDEX_MEDIA_TYPES: Final = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
"""An image index (a manifest list): a manifest of manifests, one per platform."""
ACCEPTED_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_TAR_TYPES: dict[str, Literal["tar", "gzip", "zstd"]] = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}
_INDEX_TYPES = INDEX_MEDIA_TYPES
_CHUNK: Final = 1024 * 1024
_FORMAT_ROOM: Final = 64 * 1024 * 1024
"""Room, besides 1/32 of ``--max-virtual-size``, for a format's own tables in a disk file."""
_HEADER_ROOM: Final = 4 * _CHUNK
"""Tar headers (PAX records, GNU long names) tarfile may read beyond a member's data; it
holds each in memory, so a header that claims gigabytes is refused at this size."""
_MAX_ENTRIES: Final = 1000
"""A containerDisk's layer holds ``disk/`` and the disk; tarfile keeps every entry it read."""
_ZSTD_WINDOW: Final = 1 << 27
"""The largest zstd window accepted (128 MiB, libzstd's default limit): the decoder's memory."""
_SHOWN: Final = 200


class ManifestRefused(InvalidArgumentError):
    """The manifest is valid OCI but not a VM disk cloudimg can serve (``code``: the spec's)."""

    def __init__(self, code: str, message: str, context: dict[str, Any] | None = None) -> None:
        super().__init__(message, context)
        self.spec_code = code


@dataclass(frozen=True, slots=True)
class DiskLayer:
    """The layer of a pushed manifest that holds the disk, and its config."""

    sha256: str
    size: int
    packing: Literal["disk", "tar", "gzip", "zstd"]
    """``disk``: the layer is the disk file; else a tar (compressed so) holding it."""
    config_sha256: str
    config_size: int
    media_type: str


def _descriptor(value: Any, what: str) -> tuple[str, int, str]:
    if not isinstance(value, dict):
        raise ManifestRefused("MANIFEST_INVALID", f"the {what} is not a descriptor")
    digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise ManifestRefused("MANIFEST_INVALID", f"the {what} has no sha256 digest")
    if not isinstance(size, int) or size < 0 or not isinstance(media_type, str):
        raise ManifestRefused("MANIFEST_INVALID", f"the {what} has no size or media type")
    return digest.removeprefix("sha256:"), size, media_type


def manifest_json(body: bytes) -> Any:
    """The JSON of a pushed manifest or index; ``ManifestRefused`` when it is none.

    As ``/reg`` parses its JSON (``parse_meta``): deep nesting (``[[[[...`` or
    ``{"a":{"a":...``) exhausts the parser's stack, and is refused like any other
    malformed body rather than failing the request.
    """
    try:
        return json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ManifestRefused("MANIFEST_INVALID", "the manifest is not JSON") from None
    except RecursionError:
        raise ManifestRefused(
            "MANIFEST_INVALID", "the manifest nests too deeply to be an OCI manifest"
        ) from None


def disk_layer_of(body: bytes, content_type: str | None) -> DiskLayer:
    """Which layer of the manifest ``body`` is the disk; ``ManifestRefused`` otherwise."""
    manifest = manifest_json(body)
    if not isinstance(manifest, dict):
        raise ManifestRefused("MANIFEST_INVALID", "the manifest is not a JSON object")
    media_type = manifest.get("mediaType") or content_type
    if media_type in _INDEX_TYPES:
        raise ManifestRefused("MANIFEST_INVALID", "an image index is not an image manifest")
    if media_type not in ACCEPTED_MANIFEST_TYPES or manifest.get("schemaVersion") != 2:
        raise ManifestRefused(
            "MANIFEST_INVALID",
            "an OCI image manifest or a Docker schema 2 manifest is expected",
            {"mediaType": str(media_type)[:200]},
        )
    config_sha, config_size, _config_type = _descriptor(manifest.get("config"), "config")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1:
        raise ManifestRefused(
            "MANIFEST_INVALID",
            "a VM disk image has exactly one layer (the disk, or a tar holding disk/)",
            {"layers": len(layers) if isinstance(layers, list) else None},
        )
    sha, size, layer_type = _descriptor(layers[0], "layer")
    packing = _TAR_TYPES.get(layer_type)
    if packing is None and ("tar" in layer_type or "rootfs" in layer_type):
        raise ManifestRefused(
            "MANIFEST_INVALID", "unknown tar layer type", {"mediaType": layer_type[:200]}
        )
    return DiskLayer(sha, size, packing or "disk", config_sha, config_size, layer_type)


def chosen_child(body: bytes, content_type: str | None) -> tuple[str, list[str]] | None:
    """For an image index: the sha256 of the child ``/reg`` serves (the ``linux/amd64``
    one, else the only one) and those of every child, in order; None when ``body`` is
    no index. ``ManifestRefused`` when it is not JSON, or has several children and none
    is linux/amd64."""
    index = manifest_json(body)
    if not isinstance(index, dict) or (index.get("mediaType") or content_type) not in _INDEX_TYPES:
        return None
    children = index.get("manifests")
    if not isinstance(children, list) or not children:
        raise ManifestRefused("MANIFEST_INVALID", "the index lists no manifests")
    digests = [_descriptor(child, "index entry")[0] for child in children]
    if len(children) == 1:
        return digests[0], digests
    for child, digest in zip(children, digests, strict=True):
        platform = child.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return digest, list(dict.fromkeys(digests))
    raise ManifestRefused(
        "MANIFEST_INVALID", "the index has several children and none is linux/amd64"
    )


def disk_size_limit(max_virtual_size: int) -> int:
    """The most bytes the disk in a containerDisk's layer may unpack to.

    ``max_virtual_size`` plus room for a format's own tables (1/32 of it and 64 MiB: a
    fully allocated qcow2's L2 and refcount tables, a VHD footer, a VHDX log, a LUKS
    header): no disk within the limit needs a larger file (short of a qcow2 carrying
    internal snapshots), so a layer that unpacks to more breaks ``virtual-size-too-large``
    whatever its header says, and is refused before the rest is unpacked.
    """
    return max_virtual_size + max_virtual_size // 32 + _FORMAT_ROOM


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _unpacked(source: io.BufferedReader[Any], packing: str) -> _Readable:
    """The tar stream of a layer: each read returns at most what was asked for.

    ``GzipFile`` inflates with ``max_length`` (the rest of the input waits for the next
    read), checks each member's CRC and length and reads on across members; zstd's
    streaming reader does the same across frames, its window at most ``_ZSTD_WINDOW``.
    """
    if packing == "gzip":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if packing == "zstd":
        decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_WINDOW)
        return decompressor.stream_reader(source, read_size=_CHUNK, read_across_frames=True)
    return source


class _Metered:
    """The tar stream as tarfile reads it, stopped where a containerDisk cannot go:

    - past ``limit`` bytes in all (``virtual-size-too-large``), whatever the entries are;
    - past ``_HEADER_ROOM`` bytes beyond the data of the entry last read (tarfile holds a
      PAX record or GNU long name in memory: one that claims gigabytes is refused).
    """

    def __init__(self, stream: _Readable, limit: int, max_virtual_size: int) -> None:
        self._stream = stream
        self._limit = limit
        self._max_virtual_size = max_virtual_size
        self._total = 0
        self._allowed = _HEADER_ROOM

    def allow(self, data_size: int) -> None:
        """An entry was read: its data, then the next entry's headers, may follow."""
        self._allowed = self._total + data_size + _HEADER_ROOM

    def read(self, size: int = -1, /) -> bytes:
        # tarfile reads its block size at a time; never more than a chunk is unpacked.
        data = self._stream.read(_CHUNK if size < 0 else min(size, _CHUNK))
        self._total += len(data)
        if self._total > self._limit:
            raise _too_large("the layer unpacks to more than", self._limit, self._max_virtual_size)
        if self._total > self._allowed:
            raise ManifestRefused(
                "MANIFEST_INVALID",
                f"a tar header of the layer is larger than {_HEADER_ROOM} bytes",
            )
        return data

    # The rest of a file object as tarfile's types want it; a stream read never uses them.
    def tell(self) -> int:
        return self._total

    def seek(self, _offset: int, /) -> int:
        raise io.UnsupportedOperation("seek")

    def write(self, _data: bytes, /) -> int:
        raise io.UnsupportedOperation("write")

    def close(self) -> None:
        pass


def _too_large(what: str, size: int, max_virtual_size: int) -> ImageRefusedError:
    return ImageRefusedError(
        f"the image is refused: {what} {size} bytes, more than a disk within the "
        f"--max-virtual-size of {max_virtual_size} bytes takes "
        f"({disk_size_limit(max_virtual_size)} bytes at most)",
        {"rule": "virtual-size-too-large", "limit": max_virtual_size},
    )


def _shown(name: str) -> str:
    """A tar path fit for a message (tarfile keeps undecodable bytes as surrogates)."""
    return name[:_SHOWN].encode("utf-8", "backslashreplace").decode("utf-8")


def _bad_entry(member: tarfile.TarInfo, why: str) -> ManifestRefused:
    return ManifestRefused(
        "MANIFEST_INVALID",
        f"the layer is not a containerDisk's: '{_shown(member.name)}' {why}",
        {"path": _shown(member.name)},
    )


def _kind(member: tarfile.TarInfo) -> str:
    kinds = (
        (member.issym, "a symbolic link"),
        (member.islnk, "a hard link"),
        (member.ischr, "a character device"),
        (member.isblk, "a block device"),
        (member.isfifo, "a FIFO"),
        (member.isdir, "a directory"),
        (member.isreg, "a regular file"),
    )
    return next((text for test, text in kinds if test()), f"of tar type {member.type!r}")


def _path_of(member: tarfile.TarInfo) -> list[str]:
    """The components of ``member``'s path, without a leading ``./``; refuses an absolute
    path, ``..`` and empty or ``.`` components anywhere in the layer."""
    name = member.name
    if name.startswith("/"):
        raise _bad_entry(member, "is an absolute path: a layer's paths are relative")
    parts = name.split("/")
    while len(parts) > 1 and parts[0] == ".":
        del parts[0]
    if parts == ["."]:
        return []  # the layer's root directory
    if ".." in parts:
        raise _bad_entry(member, "climbs out of the layer with '..'")
    if "" in parts or "." in parts:
        raise _bad_entry(member, "is not a plain path (an empty or '.' component)")
    return parts


def _is_disk(member: tarfile.TarInfo) -> bool:
    """Whether ``member`` is a file directly under ``disk/`` (the disk). What is not
    under ``disk/`` is left alone; under it, only that one regular file may be."""
    path = _path_of(member)
    if not path or path[0] != "disk":
        return False
    if len(path) == 1:
        if member.isdir():
            return False
        raise _bad_entry(member, f"is {_kind(member)}, not a directory")
    if not member.isreg():
        raise _bad_entry(member, f"is {_kind(member)}: disk/ holds one regular file, the disk")
    if len(path) > 2:
        raise _bad_entry(member, "is not directly under disk/, where the disk is")
    return True


def unpack_disk(
    raw: io.RawIOBase,
    packing: str,
    write: Callable[[bytes], None],
    *,
    max_virtual_size: int,
    max_image_size: int | None = None,
) -> int:
    """Hand the bytes of the one regular file directly under ``disk/`` in the layer
    (read from ``raw``) to ``write``, in pieces of at most 1 MiB (blocking; run it on a
    thread); its size.

    The whole layer is read, so that nothing else under ``disk/`` goes unseen. Memory
    stays bounded whatever the layer holds; it is refused as soon as it is known to
    unpack to more than :func:`disk_size_limit` of ``max_virtual_size``.

    Raises:
        ManifestRefused: the layer is not a readable tar, or not a containerDisk's: no
            disk, an absolute path or a ``..`` component anywhere, or under ``disk/``
            anything but one regular file (a second file, a link, a device, a FIFO, a
            directory).
        ImageRefusedError: ``virtual-size-too-large``.
        PayloadTooLargeError: the disk is larger than ``max_image_size``.
    """
    limit = disk_size_limit(max_virtual_size)
    source = io.BufferedReader(raw, _CHUNK)
    stream = _Metered(_unpacked(source, packing), limit + _HEADER_ROOM, max_virtual_size)
    disk: tarfile.TarInfo | None = None
    size = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as archive:
            for count, member in enumerate(archive, 1):
                if count > _MAX_ENTRIES:
                    raise ManifestRefused(
                        "MANIFEST_INVALID",
                        f"the layer has more than {_MAX_ENTRIES} entries: a containerDisk's "
                        "holds disk/ and the disk",
                    )
                if member.size > limit:  # the size a sparse entry unpacks to, too
                    raise _too_large(
                        f"'{_shown(member.name)}' unpacks to", member.size, max_virtual_size
                    )
                stream.allow(member.size)
                if not _is_disk(member):
                    continue
                if disk is not None:
                    raise _bad_entry(
                        member, f"is a second file under disk/, after '{_shown(disk.name)}'"
                    )
                disk = member
                size = _copy(archive, member, write, max_image_size)
    except (tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise ManifestRefused(
            "MANIFEST_INVALID", f"the layer is not a readable tar: {exc}"
        ) from None
    if disk is None:
        raise ManifestRefused(
            "MANIFEST_INVALID", "the layer holds no disk: a containerDisk keeps it under disk/"
        )
    return size


def _copy(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    write: Callable[[bytes], None],
    max_image_size: int | None,
) -> int:
    """Hand ``member``'s bytes (``member.size`` of them, checked before) to ``write``."""
    if max_image_size is not None and member.size > max_image_size:
        raise PayloadTooLargeError(
            f"the disk in the layer is {member.size} bytes, larger than the limit of "
            f"{max_image_size} bytes",
            {"limit": max_image_size},
        )
    extracted = archive.extractfile(member)
    assert extracted is not None, "a regular file"
    size = 0
    while piece := extracted.read(_CHUNK):
        size += len(piece)
        write(piece)
    return size
