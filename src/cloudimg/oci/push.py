"""What a pushed manifest means for cloudimg: which layer is the disk, and how to get it.

Two kinds of push are taken (docs/oci.md lists the media types):

- a **disk artifact** (as oras pushes it): one layer whose media type is not a tar, the
  disk file itself; its bytes become the image's blob as they are (no copy);
- a **containerDisk**: one tar layer (plain, gzip or zstd) holding a regular file under
  ``disk/``; that file is unpacked into a new blob.

Anything else (several layers, no disk in the tar, an index) is not a VM disk and is
refused, so cloudimg does not turn into a general container registry by accident.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cloudimg.blobstore import BlobReader
from cloudimg.errors import InvalidArgumentError

__all__ = [
    "ACCEPTED_MANIFEST_TYPES",
    "DiskLayer",
    "ManifestRefused",
    "chosen_child",
    "disk_layer_of",
    "unpack_disk",
]

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
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_CHUNK = 1024 * 1024


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


def disk_layer_of(body: bytes, content_type: str | None) -> DiskLayer:
    """Which layer of the manifest ``body`` is the disk; ``ManifestRefused`` otherwise."""
    try:
        manifest = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ManifestRefused("MANIFEST_INVALID", "the manifest is not JSON") from None
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
    no index. ``ManifestRefused`` when it has several children and none is linux/amd64."""
    try:
        index = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
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


class _ReaderFile:
    """A blocking file object over a :class:`BlobReader` (for tarfile and zlib)."""

    def __init__(self, reader: BlobReader) -> None:
        self._reader = reader
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self._reader.size - self._offset
        data = self._reader.read(min(size, _CHUNK * 4), self._offset)
        self._offset += len(data)
        return data


class _Decompressed:
    """A blocking file object of a gzip or zstd stream's decompressed bytes."""

    def __init__(self, source: _ReaderFile, packing: str) -> None:
        self._source = source
        self._buffer = b""
        self._done = False
        if packing == "gzip":
            self._inflate: Callable[[bytes], bytes] = zlib.decompressobj(wbits=47).decompress
        else:
            import zstandard

            self._inflate = zstandard.ZstdDecompressor().decompressobj().decompress

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            piece = self._source.read(_CHUNK)
            if not piece:
                self._done = True
                break
            self._buffer += self._inflate(piece)
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def unpack_disk(reader: BlobReader, packing: str, write: Callable[[bytes], None]) -> int:
    """Hand the bytes of the one regular file under ``disk/`` in the layer to ``write``
    (blocking; run it on a thread); its size. ``ManifestRefused`` when there is none."""
    source = _ReaderFile(reader)
    stream: Any = source if packing == "tar" else _Decompressed(source, packing)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                name = member.name.lstrip("./")
                if member.isreg() and name.startswith("disk/") and "/" not in name[5:]:
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    total = 0
                    while piece := extracted.read(_CHUNK):
                        write(piece)
                        total += len(piece)
                    return total
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise ManifestRefused(
            "MANIFEST_INVALID", f"the layer is not a readable tar: {exc}"
        ) from None
    raise ManifestRefused(
        "MANIFEST_INVALID", "the layer holds no disk: a containerDisk keeps it under disk/"
    )
