"""A containerDisk in another OCI registry: its manifest (an index's ``linux/amd64``
child), the layer that holds the disk, downloaded and unpacked as the server unpacks a
push (:mod:`cloudimg.containerdisk_layer`, the rules both share).

The registry's anonymous (or ``CLOUDIMG_OCI_USER``/``CLOUDIMG_OCI_PASSWORD``) bearer
token is fetched as its ``WWW-Authenticate`` challenge says. Upstream changed when the
manifest's digest is not the one the tag's metadata recorded (``upstream_digest``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloudimg.client.errors import RefusedError, UsageError, VerificationError
from cloudimg.client.feeds.checksums import Checksum
from cloudimg.client.feeds.config import OciSource
from cloudimg.client.feeds.plan import Candidate, Current, Unchanged, recorded_for, upstream_meta
from cloudimg.client.feeds.upstream import Upstream
from cloudimg.containerdisk_layer import (
    ACCEPTED_MANIFEST_TYPES,
    INDEX_MEDIA_TYPES,
    ManifestRefused,
    chosen_child,
    disk_layer_of,
)
from cloudimg.containerdisk_layer import unpack_disk as unpack_from

__all__ = ["resolve_oci", "unpack_layer"]

_ACCEPT = ", ".join((*ACCEPTED_MANIFEST_TYPES, *INDEX_MEDIA_TYPES))
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_MAX_VIRTUAL = 1 << 50
"""The client knows no server limit: the server's inspection refuses what it must."""


@dataclass(frozen=True, slots=True)
class _Image:
    base: str
    """``http(s)://host[:port]/v2/<name>``"""
    reference: str

    @classmethod
    def parse(cls, source: OciSource) -> _Image:
        text = source.image
        host, slash, rest = text.partition("/")
        if not slash or not rest:
            raise UsageError(f"oci image {text!r} is not HOST/NAME:TAG")
        name, at, digest = rest.partition("@")
        if not at:
            name, colon, tag = rest.rpartition(":")
            if not colon or "/" in tag:
                name, tag = rest, "latest"
        scheme = "http" if source.insecure else "https"
        return cls(f"{scheme}://{host}/v2/{name}", digest if at else tag)


def resolve_oci(source: OciSource, upstream: Upstream, current: Current | None) -> (
    Candidate | Unchanged
):  # fmt: skip
    image = _Image.parse(source)
    headers = _authorized(upstream, image)
    body, content_type, digest = _manifest(upstream, image, image.reference, headers)
    recorded = recorded_for(current, source.image)
    if recorded.get("upstream_digest") == digest:
        return Unchanged(f"{source.image} is still {digest}")
    try:
        child = chosen_child(body, content_type)
        if child is not None:
            body, content_type, _ = _manifest(upstream, image, f"sha256:{child[0]}", headers)
        layer = disk_layer_of(body, content_type)
    except ManifestRefused as exc:
        raise RefusedError(f"{source.image}: {exc.message}") from None
    checksum = Checksum("sha256", layer.sha256)
    meta = upstream_meta(source.image, checksum, None, None, None)
    meta["upstream_digest"] = digest
    packing = None if layer.packing == "disk" else layer.packing
    url = f"{image.base}/blobs/sha256:{layer.sha256}"
    return Candidate(url, checksum, meta, headers, packing)


def unpack_layer(layer: Path, packing: str) -> Path:
    """The disk of the containerDisk layer at ``layer``, in a file beside it.

    Raises:
        RefusedError: the layer is not a containerDisk's (the server's rules).
    """
    disk = layer.with_suffix(".disk")
    try:
        with layer.open("rb", buffering=0) as raw, disk.open("wb") as out:
            unpack_from(raw, packing, out.write, max_virtual_size=_MAX_VIRTUAL)  # type: ignore[arg-type]
    except ManifestRefused as exc:
        disk.unlink(missing_ok=True)
        layer.unlink()  # it will not become a containerDisk's by waiting
        raise RefusedError(f"{layer.name}: {exc.message}") from None
    return disk


def _manifest(
    upstream: Upstream, image: _Image, reference: str, headers: dict[str, str]
) -> tuple[bytes, str | None, str]:
    """A manifest's body, media type and digest (checked when asked for by digest)."""
    url = f"{image.base}/manifests/{reference}"
    fetched = upstream.get(url, headers={**headers, "Accept": _ACCEPT})
    assert fetched is not None, "an unconditional read"
    digest = "sha256:" + hashlib.sha256(fetched.content).hexdigest()
    if reference.startswith("sha256:") and reference != digest:
        raise VerificationError(f"{url} is {digest}, not the manifest asked for")
    content_type = fetched.content_type
    return fetched.content, content_type, digest


def _authorized(upstream: Upstream, image: _Image) -> dict[str, str]:
    """The headers reads of ``image`` need: none, Basic, or a bearer token."""
    probe = upstream.raw("GET", image.base.rsplit("/v2/", 1)[0] + "/v2/")
    user, password = os.environ.get("CLOUDIMG_OCI_USER"), os.environ.get("CLOUDIMG_OCI_PASSWORD")
    basic = httpx.BasicAuth(user, password or "") if user else None
    if probe.status_code != 401:
        return {}
    challenge = probe.headers.get("WWW-Authenticate", "")
    scheme = challenge.partition(" ")[0].lower()
    if scheme == "basic":
        if basic is None:
            raise RefusedError(f"{image.base} wants credentials: set CLOUDIMG_OCI_USER/PASSWORD")
        return {"Authorization": _basic_header(user or "", password or "")}
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", None)
    if scheme != "bearer" or realm is None:
        raise RefusedError(f"{image.base}: an authentication challenge cloudimg cannot answer")
    name = image.base.split("/v2/", 1)[1]
    params["scope"] = f"repository:{name}:pull"
    answer = upstream.raw("GET", realm, params=params, auth=basic)
    if answer.status_code != 200:
        raise RefusedError(f"{realm} gave no token ({answer.status_code})")
    token = answer.json().get("token") or answer.json().get("access_token")
    return {"Authorization": f"Bearer {token}"}


def _basic_header(user: str, password: str) -> str:
    request = httpx.Request("GET", "http://x")
    flow = httpx.BasicAuth(user, password).auth_flow(request)
    return next(flow).headers["Authorization"]
