"""A stored disk seen as a KubeVirt containerDisk, generated without copying its bytes.

The image has one uncompressed tar layer: a ``disk/`` directory and ``disk/disk.img``
holding the blob, both owned by uid/gid 107 (the qemu user KubeVirt runs as), with no
timestamps. The layer is a frame around the blob: tar headers, the blob's bytes, padding
to 512 bytes and the end-of-archive blocks; so the stream is built from the stored blob
(:class:`LayerReader`) and nothing is stored twice. Config and manifest are canonical
JSON of the layer's sha256 and size: the same bytes always give the same manifest
digest, so DataImportCron never re-imports unchanged bytes.

The layer's sha256 needs one read of the blob; :func:`hash_layer` does it once per blob
(the catalog stores the result, see :mod:`cloudimg.oci.digests`).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from typing import Any

from cloudimg.blobstore import BlobReader

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "DISK_NAME",
    "LAYER_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "QEMU_ID",
    "ContainerDisk",
    "LayerReader",
    "canonical_json",
    "frame",
    "hash_layer",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
DISK_NAME = "disk/disk.img"
QEMU_ID = 107
"""uid and gid of the qemu user in KubeVirt's virt-launcher."""
_BLOCK = 512
_READ = 16 * 1024 * 1024


def _header(name: str, kind: bytes, mode: int, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.uid = info.gid = QEMU_ID
    info.uname = info.gname = ""
    info.mtime = 0
    # PAX: a disk of 8 GiB or more gets its size in a pax record (ustar holds 11 octal
    # digits); smaller ones get plain ustar headers. Both are deterministic.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def frame(size: int) -> tuple[bytes, bytes]:
    """The bytes before and after a disk of ``size`` bytes in its layer tar."""
    prefix = _header("disk/", tarfile.DIRTYPE, 0o755, 0) + _header(
        DISK_NAME, tarfile.REGTYPE, 0o644, size
    )
    padding = -size % _BLOCK
    return prefix, bytes(padding + 2 * _BLOCK)


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: one value, one byte sequence."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class ContainerDisk:
    """The generated image of a disk: its layer's digest and size, config and manifest."""

    layer_sha256: str
    layer_size: int

    @classmethod
    def of(cls, layer_sha256: str, disk_size: int) -> ContainerDisk:
        prefix, suffix = frame(disk_size)
        return cls(layer_sha256, len(prefix) + disk_size + len(suffix))

    @property
    def config(self) -> bytes:
        return canonical_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{self.layer_sha256}"]},
            }
        )

    @property
    def manifest(self) -> bytes:
        config = self.config
        return canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {
                    "mediaType": CONFIG_MEDIA_TYPE,
                    "digest": f"sha256:{hashlib.sha256(config).hexdigest()}",
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": LAYER_MEDIA_TYPE,
                        "digest": f"sha256:{self.layer_sha256}",
                        "size": self.layer_size,
                    }
                ],
            }
        )

    @property
    def config_sha256(self) -> str:
        return hashlib.sha256(self.config).hexdigest()

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()


class LayerReader:
    """A :class:`BlobReader` of the layer tar: the frame around an open blob's bytes."""

    def __init__(self, disk: BlobReader) -> None:
        self._disk = disk
        self._prefix, self._suffix = frame(disk.size)
        self.size = len(self._prefix) + disk.size + len(self._suffix)

    def fileno(self) -> int | None:
        return None  # the layer is not one file: no zero-copy send

    def read_nowait(self, size: int, offset: int) -> bytes | None:
        return self._assemble(size, offset, self._disk.read_nowait)

    def read(self, size: int, offset: int) -> bytes:
        data = self._assemble(size, offset, self._disk.read)
        assert data is not None
        return data

    def _assemble(self, size: int, offset: int, read_disk: Any) -> bytes | None:
        end = min(offset + size, self.size)
        disk_start = len(self._prefix)
        disk_end = disk_start + self._disk.size
        out = bytearray()
        if offset < disk_start:
            out += self._prefix[offset : min(end, disk_start)]
        first, last = max(offset, disk_start), min(end, disk_end)
        while first < last:  # a blob read returns fewer bytes only at its end
            piece = read_disk(last - first, first - disk_start)
            if piece is None:
                return None
            if not piece:
                raise OSError("the disk blob is shorter than the catalog says")
            out += piece
            first += len(piece)
        if end > disk_end:
            out += self._suffix[max(offset, disk_end) - disk_end : end - disk_end]
        return bytes(out)

    def close(self) -> None:
        self._disk.close()


def hash_layer(disk: BlobReader) -> str:
    """sha256 of the layer tar around ``disk``: one sequential read of the blob (blocking)."""
    prefix, suffix = frame(disk.size)
    sha = hashlib.sha256(prefix)
    offset = 0
    while offset < disk.size:
        piece = disk.read(min(_READ, disk.size - offset), offset)
        if not piece:
            raise OSError("the disk blob is shorter than the catalog says")
        sha.update(piece)
        offset += len(piece)
    sha.update(suffix)
    return sha.hexdigest()
