"""The OCI Distribution (spec v1.1) face of the registry under ``/v2``: pulls.

Repository ``<repo>/<image>`` and tag are the ``/reg`` names, under the same rules
(anything else OCI allows is refused with ``NAME_INVALID``/``TAG_INVALID``). A tag pulls
as a KubeVirt containerDisk generated from its blob (:mod:`cloudimg.oci.containerdisk`):
the manifest and config from the digests the catalog keeps, the layer framed around the
stored bytes as they are read. Blobs and manifests are sent through
:func:`cloudimg.api.download.prepare_representation`: ranges and conditional requests
as ``/reg`` answers them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, route
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response.base import ASGIResponse

from cloudimg.api.download import Representation, prepare_representation
from cloudimg.api.observer import TRANSFER_OPT
from cloudimg.api.policy import grants_of
from cloudimg.blobstore import BlobReader, BlobStore
from cloudimg.catalog import BlobRef
from cloudimg.digest import Digest
from cloudimg.errors import NotFoundError
from cloudimg.oci.containerdisk import MANIFEST_MEDIA_TYPE, ContainerDisk, LayerReader
from cloudimg.oci.errors import OciError, oci_names, oci_tag, parse_oci_digest
from cloudimg.oci.http.face import API_VERSION_HEADER, MANIFEST_PATH, Face, OciFace

__all__ = ["MemoryReader", "OciPullController"]

_MAX_PAGE = 10_000


class MemoryReader:
    """A :class:`BlobReader` of bytes in memory (a manifest, a config)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    def fileno(self) -> int | None:
        return None

    def read_nowait(self, size: int, offset: int) -> bytes | None:
        return self._data[offset : offset + size]

    def read(self, size: int, offset: int) -> bytes:
        return self._data[offset : offset + size]

    def close(self) -> None:
        pass


def _page_size(request: Request[Any, Any, Any]) -> tuple[int, str | None]:
    """The ``n`` and ``last`` query parameters."""
    params = request.query_params
    n_text = params.get("n")
    try:
        n = _MAX_PAGE if n_text is None else int(n_text)
    except ValueError:
        n = -1
    if not 0 <= n <= _MAX_PAGE:
        raise OciError(400, "UNSUPPORTED", f"query parameter 'n' takes 0 to {_MAX_PAGE}")
    return n, params.get("last")


def _next_link(
    request: Request[Any, Any, Any], n: int, page: list[str], more: bool
) -> dict[str, str]:
    """The ``Link`` header of the next page, when there is one."""
    if not more or not page:
        return {}
    query = urlencode({"n": n, "last": page[-1]})
    return {"Link": f'<{request.url.path}?{query}>; rel="next"'}


class OciPullController(Controller):
    """``/v2``: version check, catalog, tags, manifests and blobs (pull side)."""

    path = "/v2"

    @get("/", include_in_schema=False)
    async def version_check(self) -> Response[dict[str, Any]]:
        return Response({}, headers=API_VERSION_HEADER)

    @get("/_catalog", include_in_schema=False)
    async def list_repositories(
        self, request: Request[Any, Any, Any], face: NamedDependency[Face]
    ) -> Response[dict[str, Any]]:
        # Old Docker registry semantics: every <repo>/<image>, sorted, paginated by n/last.
        n, last = _page_size(request)
        paths = await face.store.list_image_paths(n + 1, last)
        page = paths[:n]
        # Only what the caller may pull (--policy-file); the link goes on after the
        # last name read, listed or not, so paging still reaches the end.
        shown = [path for path in page if grants_of(request).lists(path)]
        return Response(
            {"repositories": shown}, headers=_next_link(request, n, page, len(paths) > n)
        )

    @get("/{repo:str}/{image:str}/tags/list", include_in_schema=False)
    async def list_tags(
        self,
        request: Request[Any, Any, Any],
        face: NamedDependency[Face],
        repo: FromPath[str],
        image: FromPath[str],
    ) -> Response[dict[str, Any]]:
        names = oci_names(repo, image)
        try:
            tags = sorted(await face.catalog.reads.list_tags(*names))
        except NotFoundError:
            raise OciError(
                404, "NAME_UNKNOWN", "no such repository", {"name": f"{repo}/{image}"}
            ) from None
        n, last = _page_size(request)
        after = [tag for tag in tags if last is None or tag > last]
        page = after[:n]
        body = {"name": f"{repo}/{image}", "tags": page}
        return Response(body, headers=_next_link(request, n, page, len(after) > n))

    @route(MANIFEST_PATH, http_method=["GET", "HEAD"], include_in_schema=False)
    async def get_manifest(
        self,
        request: Request[Any, Any, Any],
        face: NamedDependency[Face],
        repo: FromPath[str],
        image: FromPath[str],
        reference: FromPath[str],
    ) -> ASGIResponse:
        catalog, oci, names = face.catalog, face.store, oci_names(repo, image)
        by_digest = ":" in reference
        try:
            if by_digest:
                hex_digest = parse_oci_digest(reference)
                pushed = await oci.pushed_manifest(*names, digest=hex_digest)
                if pushed is not None:
                    ref = await catalog.reads.resolve(*names, Digest("blake3", pushed.blob))
                    return await _send_bytes(request, ref, pushed.body, pushed.media_type, True)
                ref = await oci.resolve_oci(*names, "manifest", hex_digest)
            else:
                tag = oci_tag(reference)
                ref = await catalog.reads.resolve(*names, tag)
                # A container image or index pushed to this tag is served as pushed; any
                # other tag (a /reg write, a retag, a disk artifact) pulls as the
                # generated containerDisk of its disk, which KubeVirt and CDI boot.
                pushed = await oci.pushed_manifest(*names, blob=ref.digest, tag=tag)
                if pushed is not None and pushed.is_container_image:
                    return await _send_bytes(request, ref, pushed.body, pushed.media_type, False)
            disk = await face.disks.of(ref)
        except NotFoundError as exc:
            raise OciError(
                404, "MANIFEST_UNKNOWN", exc.message, {"reference": reference[:200]}
            ) from None
        return await _send_bytes(request, ref, disk.manifest, MANIFEST_MEDIA_TYPE, by_digest)

    @route(
        "/{repo:str}/{image:str}/blobs/{digest:str}",
        http_method=["GET", "HEAD"],
        include_in_schema=False,
        opt={TRANSFER_OPT: "download"},
    )
    async def get_blob(
        self,
        request: Request[Any, Any, Any],
        face: NamedDependency[Face],
        repo: FromPath[str],
        image: FromPath[str],
        digest: FromPath[str],
    ) -> ASGIResponse:
        catalog, oci, blobs = face.catalog, face.store, face.blobs
        names, hex_digest = oci_names(repo, image), parse_oci_digest(digest)
        try:
            return await _send_layer(request, face, names, hex_digest)
        except NotFoundError:
            pass
        kept = await oci.kept_blob(*names, hex_digest)
        if kept is not None:  # a pushed layer or config, kept as it was pushed
            try:
                return await prepare_representation(
                    request,
                    _representation(kept, hex_digest, kept.size),
                    _opener(blobs, kept.digest),
                    # Kept by a push's catalog rows alone: nothing looked at the object yet.
                    redirect=face.redirects.of(kept.digest, seen=False),
                )
            except NotFoundError:  # its bytes are gone (fsck reports the blob)
                raise _blob_unknown(digest) from None
        try:
            ref = await oci.resolve_oci(*names, "config", hex_digest)
            disk = await face.disks.of(ref)
        except NotFoundError:
            pass
        else:
            return await _send_bytes(request, ref, disk.config, "application/octet-stream", True)
        pushed = await oci.pushed_manifest(*names, config=hex_digest)
        if pushed is not None:
            ref = await catalog.reads.resolve(*names, Digest("blake3", pushed.blob))
            return await _send_bytes(request, ref, pushed.config, "application/octet-stream", True)
        finished = await _finished_upload(request, face, names, hex_digest)
        if finished is not None:
            return finished
        try:
            # A disk pushed as an artifact layer is the stored blob itself.
            ref = await catalog.reads.resolve(*names, Digest("sha256", hex_digest), present=True)
        except NotFoundError:
            raise _blob_unknown(digest) from None
        blob_reader = _opener(blobs, ref.digest)
        return await prepare_representation(
            request,
            _representation(ref, ref.sha256, ref.size),
            blob_reader,
            redirect=face.redirects.of(ref.digest, seen=True),
        )


def _blob_unknown(digest: str) -> OciError:
    return OciError(404, "BLOB_UNKNOWN", "no such blob in this repository", {"digest": digest})


def _representation(
    ref: BlobRef, sha256_hex: str, size: int, content_type: str = "application/octet-stream"
) -> Representation:
    return Representation(
        size=size,
        etag=f'"sha256:{sha256_hex}"',
        last_modified=ref.last_modified,
        sha256=sha256_hex,
        immutable=True,
        content_type=content_type,
        headers={"Docker-Content-Digest": f"sha256:{sha256_hex}"},
    )


def _opener(blobs: BlobStore, digest: str) -> Callable[[], Awaitable[BlobReader | None]]:
    async def open_blob() -> BlobReader | None:
        return await blobs.open(digest)

    return open_blob


async def _finished_upload(
    request: Request[Any, Any, Any], face: OciFace, names: tuple[str, str], hex_digest: str
) -> ASGIResponse | None:
    """A blob uploaded over ``/v2`` to ``names`` that no manifest took yet (clients check
    it is there). Only under the name it was uploaded to: a name a reader may pull must
    not answer with bytes pushed to another (docs/security.md)."""
    blobs = face.blobs
    found = await face.store.finished_upload(hex_digest, names)
    if found is None or found.blake3 is None:
        return None
    staged = await blobs.claim_staging(found.id, found.blake3, hex_digest, found.size)
    if staged is None:
        return None
    try:
        reader = await blobs.open_staged(staged)
    finally:
        if staged.lease is not None:
            staged.lease.release()  # the reader's descriptor keeps the bytes
    ref = BlobRef(found.blake3, hex_digest, found.size, found.updated)

    async def open_reader() -> BlobReader | None:
        return reader

    return await prepare_representation(
        request, _representation(ref, hex_digest, found.size), open_reader
    )


async def _send_layer(
    request: Request[Any, Any, Any], face: OciFace, names: tuple[str, str], hex_digest: str
) -> ASGIResponse:
    blobs = face.blobs
    ref = await face.store.resolve_oci(*names, "layer", hex_digest)
    size = ContainerDisk.of(hex_digest, ref.size).layer_size
    # Never redirected: the layer is computed (tar headers around the blob), no object
    # holds its bytes.

    async def open_layer() -> BlobReader | None:
        disk = await blobs.open(ref.digest)
        return None if disk is None else LayerReader(disk)

    return await prepare_representation(request, _representation(ref, hex_digest, size), open_layer)


async def _send_bytes(
    request: Request[Any, Any, Any], ref: BlobRef, data: bytes, content_type: str, immutable: bool
) -> ASGIResponse:
    sha = hashlib.sha256(data).hexdigest()
    # By tag, the bytes behind the name may change: not cacheable for a year.
    rep = replace(_representation(ref, sha, len(data), content_type), immutable=immutable)

    async def open_memory() -> BlobReader | None:
        return MemoryReader(data)

    return await prepare_representation(request, rep, open_memory)
