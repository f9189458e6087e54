"""Helpers of the OCI tests: the spec's error shape, manifests, layers, upload flows."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import httpx

DISK_TYPE = "application/vnd.cloudimg.disk.v1+qcow2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


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
