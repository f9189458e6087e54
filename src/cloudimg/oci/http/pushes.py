"""The OCI Distribution face under ``/v2``: pushes (blob uploads, manifests).

Blob uploads (sessions and mounts): the handlers translate HTTP to the steps of
:class:`cloudimg.oci.sessions.UploadSessions` (the session's life) and its results to
the spec's answers: where the upload stands (``Location``, ``Range``), or where the
finished blob is.

A manifest ``PUT`` by tag makes the tag name the disk (:mod:`cloudimg.oci.push` says
which layer is the disk): the disk layer of an artifact is committed as it is, the disk
in a containerDisk's tar is unpacked into a new blob; either way the bytes pass the
image inspection of ``/reg`` uploads and go through :func:`cloudimg.core.commit_staged`,
and the push is kept as it was pushed (:mod:`cloudimg.oci.keep`). A manifest ``PUT`` by
digest is an index's child, kept until the index's tag takes it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath

from cloudimg.api.auth import actor_of, audit_write
from cloudimg.api.body import body_of, declared_length, drain
from cloudimg.api.observer import TRANSFER_OPT
from cloudimg.api.policy import SCOPE_OPT, Grants, grants_of
from cloudimg.catalog import WriteOptions
from cloudimg.config import Settings
from cloudimg.digest import Digest
from cloudimg.oci.errors import OciError, oci_names, oci_tag, parse_oci_digest
from cloudimg.oci.http.face import API_VERSION_HEADER, MANIFEST_PATH, Face, OciFace
from cloudimg.oci.keep import EMPTY_CONFIG, Pullable, Reach, put_tagged_manifest
from cloudimg.oci.push import ManifestRefused, disk_layer_of, manifest_json
from cloudimg.oci.sessions import ChunkRange, UploadSessions, upload_location
from cloudimg.oci.store import PushedManifest, UploadSession

__all__ = ["Chunk", "OciPushController", "chunk_of"]

_MAX_MANIFEST = 4 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"(?:bytes )?([0-9]+)-([0-9]+)(?:/.*)?")
_SESSION_PATH = "/{repo:str}/{image:str}/blobs/uploads/{session:str}"


def _progress(repo: str, image: str, session: str, size: int, status: int) -> Response[None]:
    headers = {
        "Location": upload_location(repo, image, session),
        "Docker-Upload-UUID": session,
        # What the registry holds: bytes 0 to size-1 (a Range header, as the spec has it).
        "Range": f"0-{max(size - 1, 0)}",
        **API_VERSION_HEADER,
    }
    return Response(None, status_code=status, headers=headers)


def _created(repo: str, image: str, sha256_hex: str, kind: str = "blobs") -> Response[None]:
    """201 naming the pushed blob (or, ``kind`` "manifests", the pushed manifest)."""
    headers = {
        "Location": f"/v2/{repo}/{image}/{kind}/sha256:{sha256_hex}",
        "Docker-Content-Digest": f"sha256:{sha256_hex}",
    }
    return Response(None, status_code=201, headers=headers)


def _content_range(request: Request[Any, Any, Any]) -> ChunkRange | None:
    """The bytes a chunk says it holds (``Content-Range: <first>-<last>``, inclusive), if
    it says."""
    text = request.headers.get("content-range")
    if text is None:
        return None
    match = _CONTENT_RANGE.fullmatch(text.strip())
    if match is None:
        raise OciError(400, "BLOB_UPLOAD_INVALID", "Content-Range is <first>-<last>")
    return int(match[1]), int(match[2])


class Chunk:
    """A request's chunk: its body as it arrives, its length, the digest it states and
    its ``Content-Range`` (read when asked: a monolithic ``POST`` has none)."""

    def __init__(self, request: Request[Any, Any, Any], settings: Settings) -> None:
        self._request = request
        self.params = request.query_params
        self.body: AsyncIterator[bytes] = body_of(request.receive, settings.read_body_timeout_secs)
        self.declared = declared_length(request)
        self.digest = self.params.get("digest")

    def range(self) -> ChunkRange | None:
        return _content_range(self._request)

    async def refused(self, exc: OciError) -> None:
        """A 416, or a quota's refusal (403), left the rest of the chunk unread: read (and
        drop) it so the client sees the answer."""
        if exc.status in (403, 416):
            await drain(self.body)


def chunk_of(request: Request[Any, Any, Any], settings: NamedDependency[Settings]) -> Chunk:
    """The ``chunk`` dependency of the upload handlers."""
    return Chunk(request, settings)


class OciPushController(Controller):
    """``/v2`` pushes: blob uploads (start or mount, chunks, status, finish, cancel) and
    manifests."""

    path = "/v2"

    @post(
        "/{repo:str}/{image:str}/blobs/uploads",
        include_in_schema=False,
        request_max_body_size=None,
        opt={TRANSFER_OPT: "upload"},
    )
    async def start_upload(
        self,
        request: Request[Any, Any, Any],
        face: NamedDependency[Face],
        chunk: NamedDependency[Chunk],
        repo: FromPath[str],
        image: FromPath[str],
    ) -> Response[None]:
        names = oci_names(repo, image)
        params = chunk.params
        mount, source = params.get("mount"), params.get("from")
        # With scopes, only a blob of a repository the caller may pull mounts; else the
        # client uploads it (202), as the spec allows (docs/oci.md).
        grants = grants_of(request)
        if mount is not None and grants.lists(source or ""):
            hex_digest = parse_oci_digest(mount)
            if await _mountable(face, grants, hex_digest, source or ""):
                return _created(*names, hex_digest)
        session = await face.sessions.start(*names)
        if chunk.digest is None:
            await drain(chunk.body)
            return _progress(*names, session, 0, 202)
        found = await face.sessions.session(*names, session)
        return await _complete(face.sessions, found, chunk, None)

    @patch(
        _SESSION_PATH,
        include_in_schema=False,
        request_max_body_size=None,
        opt={TRANSFER_OPT: "upload"},
    )
    async def upload_chunk(
        self,
        face: NamedDependency[Face],
        chunk: NamedDependency[Chunk],
        repo: FromPath[str],
        image: FromPath[str],
        session: FromPath[str],
    ) -> Response[None]:
        names = oci_names(repo, image)
        found = await face.sessions.session(*names, session)
        try:
            size = await face.sessions.chunk(found, chunk.body, chunk.declared, chunk.range())
        except OciError as exc:
            await chunk.refused(exc)
            raise
        return _progress(*names, session, size, 202)

    @get(_SESSION_PATH, include_in_schema=False, opt={SCOPE_OPT: "push"})
    async def upload_status(
        self,
        face: NamedDependency[Face],
        repo: FromPath[str],
        image: FromPath[str],
        session: FromPath[str],
    ) -> Response[None]:
        names = oci_names(repo, image)
        found = await face.sessions.session(*names, session)
        return _progress(*names, session, found.size, 204)

    @put(
        _SESSION_PATH,
        include_in_schema=False,
        request_max_body_size=None,
        status_code=201,
        opt={TRANSFER_OPT: "upload"},
    )
    async def finish_upload(
        self,
        face: NamedDependency[Face],
        chunk: NamedDependency[Chunk],
        repo: FromPath[str],
        image: FromPath[str],
        session: FromPath[str],
    ) -> Response[None]:
        names = oci_names(repo, image)
        if chunk.digest is None:
            raise OciError(400, "DIGEST_INVALID", "PUT needs ?digest=sha256:<hex>")
        parse_oci_digest(chunk.digest)
        found = await face.sessions.session(*names, session)
        return await _complete(face.sessions, found, chunk, chunk.range())

    @delete(_SESSION_PATH, include_in_schema=False, status_code=204)
    async def cancel_upload(
        self,
        face: NamedDependency[Face],
        repo: FromPath[str],
        image: FromPath[str],
        session: FromPath[str],
    ) -> None:
        names = oci_names(repo, image)
        await face.sessions.cancel(await face.sessions.session(*names, session))

    @put(MANIFEST_PATH, include_in_schema=False, status_code=201)
    async def put_manifest(
        self,
        request: Request[Any, Any, Any],
        face: NamedDependency[Face],
        repo: FromPath[str],
        image: FromPath[str],
        reference: FromPath[str],
    ) -> Response[None]:
        names = oci_names(repo, image)
        reach = Reach(names, _pullable(face, grants_of(request)))
        if ":" in reference:
            return await _put_child(request, face, reach, reference)
        tag = oci_tag(reference)
        body = await _small_body(request, face.settings, _MAX_MANIFEST, "MANIFEST_INVALID")
        options = WriteOptions(actor=actor_of(request))
        content_type = request.headers.get("content-type")
        try:
            await put_tagged_manifest(
                face.keeping, (*names, tag), body, content_type, options, reach.pullable
            )
        except ManifestRefused as exc:
            raise OciError(400, exc.spec_code, exc.message, exc.context) from None
        sha = hashlib.sha256(body).hexdigest()
        audit_write(request, "push", f"{repo}/{image}", f"manifest sha256:{sha} tagged {tag}")
        return _created(repo, image, sha, "manifests")


async def _complete(
    sessions: UploadSessions, found: UploadSession, chunk: Chunk, content_range: ChunkRange | None
) -> Response[None]:
    """The last chunk and the digest check (``PUT``, a monolithic ``POST``): 201."""
    assert chunk.digest is not None
    try:
        await sessions.complete(found, chunk.body, chunk.declared, content_range, chunk.digest)
    except OciError as exc:
        await chunk.refused(exc)
        raise
    return _created(found.repo, found.image, parse_oci_digest(chunk.digest))


def _pullable(face: OciFace, grants: Grants) -> Pullable | None:
    """With scopes: whether the pusher may pull a name that holds a stored blob (a
    manifest may name only such blobs and its own uploads); None without scopes."""
    if grants.unlimited:
        return None

    async def pullable(sha256_hex: str) -> bool:
        holders = await face.catalog.reads.names_holding(Digest("sha256", sha256_hex))
        return any(grants.allows("pull", repo, image) for repo, image in holders)

    return pullable


async def _mountable(face: OciFace, grants: Grants, sha256_hex: str, source: str) -> bool:
    """Whether a mount of these bytes from ``source`` (``repo/image``) takes place.

    Without scopes the bytes mount from anywhere the registry holds them (names do not
    own bytes). With scopes (the caller may pull ``source``), only a stored blob that
    ``source`` holds mounts: what a manifest of the caller may then name.
    """
    if grants.unlimited:
        return await face.sessions.mountable(sha256_hex, source)
    if await face.store.sha256_stored(sha256_hex) is None:
        return False
    repo, _, image = source.partition("/")
    return (repo, image) in await face.catalog.reads.names_holding(Digest("sha256", sha256_hex))


async def _put_child(
    request: Request[Any, Any, Any], face: OciFace, reach: Reach, reference: str
) -> Response[None]:
    """A manifest pushed by digest: an index's child, kept until the index's tag takes it.

    It must describe a VM disk whose blobs were uploaded (within the push's ``reach``);
    nothing is committed yet (no tag would hold it), and gc's grace reclaims its uploads
    if no index follows.
    """
    oci, hex_digest, names = face.store, parse_oci_digest(reference), reach.names
    body = await _small_body(request, face.settings, _MAX_MANIFEST, "MANIFEST_INVALID")
    if hashlib.sha256(body).hexdigest() != hex_digest:
        raise OciError(400, "DIGEST_INVALID", "the manifest does not have the digest of its URL")
    try:
        layer = disk_layer_of(body, request.headers.get("content-type"))
        for needed, what in ((layer.sha256, "layer"), (layer.config_sha256, "config")):
            if needed != EMPTY_CONFIG and not await reach.usable(oci, needed):
                raise reach.refused(needed, what)
    except ManifestRefused as exc:
        raise OciError(400, exc.spec_code, exc.message, exc.context) from None
    media_type = manifest_json(body).get("mediaType") or request.headers.get("content-type", "")
    pending = PushedManifest(
        hex_digest, str(media_type), body, "", layer.config_sha256, b"", "pending"
    )
    await oci.add_pending_manifest(*names, pending)
    audit_write(request, "push", "/".join(names), f"manifest sha256:{hex_digest} (by digest)")
    return _created(*names, hex_digest, "manifests")


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
