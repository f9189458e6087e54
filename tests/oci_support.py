"""Helpers of the OCI tests: the spec's error shape, manifests, layers, upload flows."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Sequence
from typing import Any

import httpx
import zstandard

DISK_TYPE = "application/vnd.cloudimg.disk.v1+qcow2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
LAYER_TYPES = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
"""The media type of a containerDisk layer of each packing."""


def assert_oci_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """``response`` is a ``/v2`` error in the spec's shape with ``status`` and ``code``."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"errors"}, body
    (entry,) = body["errors"]
    assert entry["code"] == code, body
    assert isinstance(entry["message"], str)
    assert entry["message"]
    return dict(entry)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_of(http: httpx.Client, name: str, reference: str) -> tuple[dict[str, Any], str]:
    """The manifest of ``name:reference`` and its ``Docker-Content-Digest``."""
    response = http.get(f"/v2/{name}/manifests/{reference}")
    assert response.status_code == 200, response.text
    assert response.headers["docker-content-digest"] == sha256_digest(response.content)
    return response.json(), response.headers["docker-content-digest"]


def assert_pulls_as_containerdisk(http: httpx.Client, name: str, tag: str, disk: bytes) -> None:
    """A pull of ``name:tag`` is a bootable containerDisk: an image manifest whose config is
    an image config and whose one layer holds exactly ``disk`` under ``disk/``."""
    manifest, _ = manifest_of(http, name, tag)
    assert manifest["mediaType"] == OCI_MANIFEST, manifest
    config = http.get(f"/v2/{name}/blobs/{manifest['config']['digest']}")
    assert config.status_code == 200
    assert {"architecture", "os", "rootfs"} <= set(config.json()), config.text
    (layer,) = manifest["layers"]
    got = http.get(f"/v2/{name}/blobs/{layer['digest']}")
    assert got.status_code == 200
    assert disk_in_layer(got.content)[0] == disk


def disk_in_layer(layer: bytes) -> tuple[bytes, tarfile.TarInfo]:
    """The bytes of ``disk/disk.img`` in a containerDisk layer (plain or compressed tar)."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as archive:
        names = archive.getnames()
        assert names == ["disk", "disk/disk.img"], names
        info = archive.getmember("disk/disk.img")
        extracted = archive.extractfile(info)
        assert extracted is not None
        return extracted.read(), info


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def start_upload(http: httpx.Client, name: str) -> str:
    response = http.post(f"/v2/{name}/blobs/uploads/")
    assert response.status_code == 202, response.text
    assert response.headers["range"] == "0-0"
    return str(response.headers["location"])


def push_blob(http: httpx.Client, name: str, data: bytes, chunk: int = 64 * 1024) -> str:
    location = start_upload(http, name)
    offset = 0
    while offset < len(data):
        piece = data[offset : offset + chunk]
        response = http.patch(
            location,
            content=piece,
            headers={
                "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert response.status_code == 202, response.text
        offset += len(piece)
        assert response.headers["range"] == f"0-{offset - 1}"
        location = response.headers["location"]
    digest = sha256_digest(data)
    done = http.put(location, params={"digest": digest})
    assert done.status_code == 201, done.text
    assert done.headers["docker-content-digest"] == digest
    return digest


def artifact_manifest(disk: bytes, layer_type: str = DISK_TYPE) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.cloudimg.disk.v1",
            "config": {"mediaType": EMPTY_TYPE, "digest": sha256_digest(EMPTY), "size": 2},
            "layers": [
                {
                    "mediaType": layer_type,
                    "digest": sha256_digest(disk),
                    "size": len(disk),
                    "annotations": {"org.opencontainers.image.title": "disk.qcow2"},
                }
            ],
        }
    ).encode()


def put_manifest(http: httpx.Client, name: str, tag: str, body: bytes) -> httpx.Response:
    return http.put(
        f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )


def tar_layer(disk: bytes, member: str = "disk/disk.qcow2") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo(member)
        info.size = len(disk)
        archive.addfile(info, io.BytesIO(disk))
    return out.getvalue()


def tar_entry(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    """An entry of :func:`tar_of`: ``name`` of tar type ``kind`` (``tarfile.REGTYPE``,
    ``DIRTYPE``, ``SYMTYPE``, ``LNKTYPE``, ``CHRTYPE``, ``FIFOTYPE``...); a regular file
    holds ``data``, a link points at ``link``. The name is written as given."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_of(entries: Sequence[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar of ``entries`` (see :func:`tar_entry`), in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def packed(tar: bytes, packing: str) -> bytes:
    """``tar`` as a layer of ``packing`` (``tar``, ``gzip`` or ``zstd``; see LAYER_TYPES)."""
    if packing == "gzip":
        return gzip.compress(tar, mtime=0)
    if packing == "zstd":
        return zstandard.ZstdCompressor().compress(tar)
    assert packing == "tar", packing
    return tar


def zeros_layer(entries: Sequence[tuple[str, int] | tarfile.TarInfo], packing: str) -> bytes:
    """A decompression bomb: a gzip or zstd tar layer of regular files ``(name, size)``
    (or entries as a ``TarInfo`` says) that hold nothing but zero bytes, gigabytes of
    them in a few megabytes.

    Built piece by piece, never whole in memory. gzip: the tar's headers are compressed
    as they come, and each run of zeros as copies of one compressed 16 MiB block of
    zeros (after a full flush deflate restarts with no history, so every such block
    compresses to the same bytes), with the CRC and length over all of it: what
    ``gzip -9`` makes of that tar, at once rather than after minutes of compressing.
    """
    block = 16 * 1024 * 1024
    zeros = bytes(block)
    pieces: list[bytes] = []
    if packing == "zstd":
        compressor: Any = zstandard.ZstdCompressor(level=3).compressobj()
    else:
        assert packing == "gzip", packing
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, framed below
        flush = zlib.Z_FULL_FLUSH
        pieces.append(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header, mtime 0
        crc, length = 0, 0
        compressed_block = compressor.compress(zeros) + compressor.flush(flush)
        again = compressor.compress(zeros) + compressor.flush(flush)
        assert again == compressed_block, "deflate restarts alike after a full flush"
    tar_end = 0
    for entry in entries:
        if isinstance(entry, tarfile.TarInfo):
            info, size = entry, entry.size
        else:
            info, size = tarfile.TarInfo(entry[0]), entry[1]
            info.size = size
        header = info.tobuf(tarfile.GNU_FORMAT)
        padded = size + (-size % tarfile.BLOCKSIZE)
        tar_end += len(header) + padded
        if packing == "zstd":
            pieces.append(compressor.compress(header))
            for start in range(0, padded, block):
                pieces.append(compressor.compress(zeros[: min(block, padded - start)]))
            continue
        pieces.append(compressor.compress(header) + compressor.flush(flush))
        crc, length = zlib.crc32(header, crc), length + len(header)
        for start in range(0, padded, block):
            run = min(block, padded - start)
            crc, length = zlib.crc32(zeros[:run], crc), length + run
            if run == block:
                pieces.append(compressed_block)
            else:
                pieces.append(compressor.compress(zeros[:run]) + compressor.flush(flush))
    # Two zero blocks end the archive; a record is 20 blocks.
    end = 2 * tarfile.BLOCKSIZE
    end += -(tar_end + end) % tarfile.RECORDSIZE
    if packing == "zstd":
        return b"".join([*pieces, compressor.compress(bytes(end)), compressor.flush()])
    crc, length = zlib.crc32(bytes(end), crc), length + end
    pieces.append(compressor.compress(bytes(end)) + compressor.flush())
    pieces.append(struct.pack("<II", crc, length & 0xFFFFFFFF))
    return b"".join(pieces)


def container_manifest(layer: bytes, layer_type: str, config: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": layer_type, "digest": sha256_digest(layer), "size": len(layer)}
            ],
        }
    ).encode()


def index_manifest(children: dict[str, tuple[str, str]]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": 100,
                    "platform": {"os": os_name, "architecture": arch},
                }
                for digest, (os_name, arch) in children.items()
            ],
        }
    ).encode()
