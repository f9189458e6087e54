"""The OCI Distribution face under ``/v2``: manifest pushes.

A manifest ``PUT`` by tag makes the tag name the disk (:mod:`cloudimg.oci.push` says
which layer is the disk): the disk layer of an artifact is committed as it is, the disk
in a containerDisk's tar is unpacked into a new blob; either way the bytes pass the
image inspection of ``/reg`` uploads and go through :func:`cloudimg.ingest.commit_staged`,
and the push is kept as it was pushed (:mod:`cloudimg.oci.keep`). A manifest ``PUT`` by
digest is an index's child, kept until the index's tag takes it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Controller, Request, Response, put
from litestar.params import SkipValidation

from cloudimg.api.auth import actor_of
from cloudimg.api.body import body_of, drain
from cloudimg.catalog import WriteOptions
from cloudimg.config import Settings
from cloudimg.oci.errors import OciError, oci_names, oci_tag, parse_oci_digest
from cloudimg.oci.http.pulls import Oci
from cloudimg.oci.keep import EMPTY_CONFIG, KeepContext, put_tagged_manifest
from cloudimg.oci.push import ManifestRefused, disk_layer_of, manifest_json
from cloudimg.oci.store import PushedManifest

__all__ = ["Keeping", "OciManifestController"]

Keeping = SkipValidation[KeepContext]
_MAX_MANIFEST = 4 * 1024 * 1024


def _pushed(repo: str, image: str, hex_digest: str) -> Response[None]:
    headers = {
        "Location": f"/v2/{repo}/{image}/manifests/sha256:{hex_digest}",
        "Docker-Content-Digest": f"sha256:{hex_digest}",
    }
    return Response(None, status_code=201, headers=headers)


class OciManifestController(Controller):
    """``/v2`` manifest pushes, by tag and by digest."""

    path = "/v2"

    @put(
        "/{repo:str}/{image:str}/manifests/{reference:str}",
        include_in_schema=False,
        status_code=201,
    )
    async def put_manifest(
        self,
        request: Request[Any, Any, Any],
        keeping: Keeping,
        repo: str,
        image: str,
        reference: str,
    ) -> Response[None]:
        names = oci_names(repo, image)
        if ":" in reference:
            return await _put_child(request, keeping.store, keeping.settings, names, reference)
        tag = oci_tag(reference)
        body = await _small_body(request, keeping.settings, _MAX_MANIFEST, "MANIFEST_INVALID")
        options = WriteOptions(actor=actor_of(request))
        content_type = request.headers.get("content-type")
        try:
            await put_tagged_manifest(keeping, (*names, tag), body, content_type, options)
        except ManifestRefused as exc:
            raise OciError(400, exc.spec_code, exc.message, exc.context) from None
        return _pushed(repo, image, hashlib.sha256(body).hexdigest())


async def _put_child(
    request: Request[Any, Any, Any],
    oci: Oci,
    settings: Settings,
    names: tuple[str, str],
    reference: str,
) -> Response[None]:
    """A manifest pushed by digest: an index's child, kept until the index's tag takes it.

    It must describe a VM disk whose blobs were uploaded; nothing is committed yet (no
    tag would hold it), and gc's grace reclaims its uploads if no index follows.
    """
    hex_digest = parse_oci_digest(reference)
    body = await _small_body(request, settings, _MAX_MANIFEST, "MANIFEST_INVALID")
    if hashlib.sha256(body).hexdigest() != hex_digest:
        raise OciError(400, "DIGEST_INVALID", "the manifest does not have the digest of its URL")
    try:
        layer = disk_layer_of(body, request.headers.get("content-type"))
        for needed in (layer.sha256, layer.config_sha256):
            uploaded = await oci.finished_upload(needed) is not None
            if needed != EMPTY_CONFIG and not uploaded and not await oci.sha256_stored(needed):
                raise ManifestRefused(
                    "MANIFEST_BLOB_UNKNOWN",
                    "a blob was not uploaded",
                    {"digest": f"sha256:{needed}"},
                )
    except ManifestRefused as exc:
        raise OciError(400, exc.spec_code, exc.message, exc.context) from None
    media_type = manifest_json(body).get("mediaType") or request.headers.get("content-type", "")
    pending = PushedManifest(
        hex_digest, str(media_type), body, "", layer.config_sha256, b"", "pending"
    )
    await oci.add_pending_manifest(*names, pending)
    return _pushed(*names, hex_digest)


async def _small_body(
    request: Request[Any, Any, Any], settings: Settings, limit: int, code: str
) -> bytes:
    body = bytearray()
    async for chunk in body_of(request.receive, settings.read_body_timeout_secs):
        body += chunk
        if len(body) > limit:
            await drain(body_of(request.receive, settings.read_body_timeout_secs))
            raise OciError(413, code, f"larger than {limit} bytes")
    return bytes(body)
