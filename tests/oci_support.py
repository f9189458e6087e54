"""Helpers of the OCI tests: the spec's error shape, manifests, layers, upload flows."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import httpx


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
