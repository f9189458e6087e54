"""The OCI Distribution face under ``/v2``: blob uploads (sessions and mounts).

The handlers translate HTTP to the steps of :class:`cloudimg.oci.sessions.UploadSessions`
(the session's life) and its results to the spec's answers: where the upload stands
(``Location``, ``Range``), or where the finished blob is.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.params import SkipValidation

from cloudimg.api.body import body_of, declared_length, drain
from cloudimg.api.observer import TRANSFER_OPT
from cloudimg.config import Settings
from cloudimg.oci.errors import OciError, oci_names, parse_oci_digest
from cloudimg.oci.http.pulls import API_VERSION_HEADER
from cloudimg.oci.sessions import ChunkRange, UploadSessions, upload_location
from cloudimg.oci.store import UploadSession

__all__ = ["Chunk", "OciUploadController", "Sessions", "chunk_of"]

Sessions = SkipValidation[UploadSessions]
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


def _created(repo: str, image: str, sha256_hex: str) -> Response[None]:
    headers = {
        "Location": f"/v2/{repo}/{image}/blobs/sha256:{sha256_hex}",
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
        self.body: AsyncIterator[bytes] = body_of(request.receive, settings.read_body_timeout_secs)
        self.declared = declared_length(request)
        self.digest = request.query_params.get("digest")

    def range(self) -> ChunkRange | None:
        return _content_range(self._request)

    async def refused(self, exc: OciError) -> None:
        """A 416 left the rest of the chunk unread: read (and drop) it so the client
        sees the answer."""
        if exc.status == 416:
            await drain(self.body)


def chunk_of(request: Request[Any, Any, Any], settings: Settings) -> Chunk:
    """The ``chunk`` dependency of the upload handlers."""
    return Chunk(request, settings)


class OciUploadController(Controller):
    """``/v2`` blob uploads: start (or mount), chunks, status, finish, cancel."""

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
        sessions: Sessions,
        chunk: Chunk,
        repo: str,
        image: str,
    ) -> Response[None]:
        names = oci_names(repo, image)
        params = request.query_params
        mount, source = params.get("mount"), params.get("from")
        if mount is not None:
            hex_digest = parse_oci_digest(mount)
            if await sessions.mountable(hex_digest, source):
                return _created(*names, hex_digest)
        session = await sessions.start(*names)
        if chunk.digest is None:
            await drain(chunk.body)
            return _progress(*names, session, 0, 202)
        found = await sessions.session(*names, session)
        return await _complete(sessions, found, chunk, None)

    @patch(
        _SESSION_PATH,
        include_in_schema=False,
        request_max_body_size=None,
        opt={TRANSFER_OPT: "upload"},
    )
    async def upload_chunk(
        self, sessions: Sessions, chunk: Chunk, repo: str, image: str, session: str
    ) -> Response[None]:
        names = oci_names(repo, image)
        found = await sessions.session(*names, session)
        try:
            size = await sessions.chunk(found, chunk.body, chunk.declared, chunk.range())
        except OciError as exc:
            await chunk.refused(exc)
            raise
        return _progress(*names, session, size, 202)

    @get(_SESSION_PATH, include_in_schema=False)
    async def upload_status(
        self, sessions: Sessions, repo: str, image: str, session: str
    ) -> Response[None]:
        names = oci_names(repo, image)
        found = await sessions.session(*names, session)
        return _progress(*names, session, found.size, 204)

    @put(
        _SESSION_PATH,
        include_in_schema=False,
        request_max_body_size=None,
        status_code=201,
        opt={TRANSFER_OPT: "upload"},
    )
    async def finish_upload(
        self, sessions: Sessions, chunk: Chunk, repo: str, image: str, session: str
    ) -> Response[None]:
        names = oci_names(repo, image)
        if chunk.digest is None:
            raise OciError(400, "DIGEST_INVALID", "PUT needs ?digest=sha256:<hex>")
        parse_oci_digest(chunk.digest)
        found = await sessions.session(*names, session)
        return await _complete(sessions, found, chunk, chunk.range())

    @delete(_SESSION_PATH, include_in_schema=False, status_code=204)
    async def cancel_upload(self, sessions: Sessions, repo: str, image: str, session: str) -> None:
        names = oci_names(repo, image)
        await sessions.cancel(await sessions.session(*names, session))


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
