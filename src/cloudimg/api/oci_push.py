"""The OCI Distribution face under ``/v2``: pushes (blob upload sessions, manifests).

A blob upload is a session (``POST``, ``PATCH`` chunks at their offsets, ``PUT`` with
the digest; ``GET`` says the offset, ``DELETE`` cancels): the catalog records each
session and its durable length, the bytes grow in a staging file on the data volume,
so a push resumes after a restart and on another replica. A finished upload has its
sha256 verified against the digest the client stated and waits, unseen by ``/reg``,
until a manifest takes it; ``cloudimg gc`` removes sessions (finished or not) left
alone longer than its grace.

A manifest ``PUT`` by tag makes the tag name the disk (:mod:`cloudimg.oci.push` says
which layer is the disk): the disk layer of an artifact is committed as it is, the disk
in a containerDisk's tar is unpacked into a new blob; either way the bytes pass the
image inspection of ``/reg`` uploads and go through :func:`cloudimg.ingest.commit_staged`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.params import SkipValidation

from cloudimg.api.auth import actor_of
from cloudimg.api.body import body_of, declared_length, drain
from cloudimg.api.observer import TRANSFER_OPT
from cloudimg.api.oci import API_VERSION_HEADER, oci_names, oci_tag, parse_oci_digest
from cloudimg.api.oci_deletes import delete_blob, delete_manifest_digest
from cloudimg.api.oci_errors import OciError
from cloudimg.api.oci_kept import EMPTY_CONFIG, put_tagged_manifest
from cloudimg.blobstore import BlobStore, StagingWriter
from cloudimg.catalog import Catalog, PushedManifest, UploadSession, WriteOptions
from cloudimg.config import Settings
from cloudimg.errors import NotFoundError
from cloudimg.oci.digests import ContainerDisks
from cloudimg.oci.push import ManifestRefused, disk_layer_of, manifest_json

__all__ = ["OciPushController"]

Blobs = SkipValidation[BlobStore]
Disks = SkipValidation[ContainerDisks]
_MAX_MANIFEST = 4 * 1024 * 1024
_MAX_CONFIG = 1024 * 1024
_EMPTY_CONFIG = hashlib.sha256(b"{}").hexdigest()
_CONTENT_RANGE = re.compile(r"(?:bytes )?([0-9]+)-([0-9]+)(?:/.*)?")


def _location(repo: str, image: str, session: str) -> str:
    return f"/v2/{repo}/{image}/blobs/uploads/{session}"


def _progress(repo: str, image: str, session: str, size: int, status: int) -> Response[None]:
    headers = {
        "Location": _location(repo, image, session),
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


def _unknown_upload(session: str) -> OciError:
    return OciError(404, "BLOB_UPLOAD_UNKNOWN", "no such upload session", {"session": session[:64]})


def _content_range(request: Request[Any, Any, Any]) -> tuple[int, int] | None:
    """The bytes a chunk says it holds (``Content-Range: <first>-<last>``, inclusive), if
    it says."""
    text = request.headers.get("content-range")
    if text is None:
        return None
    match = _CONTENT_RANGE.fullmatch(text.strip())
    if match is None:
        raise OciError(400, "BLOB_UPLOAD_INVALID", "Content-Range is <first>-<last>")
    return int(match[1]), int(match[2])


class _Sessions:
    """The steps of a session shared by PATCH, PUT and the monolithic POST."""

    def __init__(self, catalog: Catalog, blobs: BlobStore, settings: Settings) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.settings = settings

    async def session(self, repo: str, image: str, session: str) -> UploadSession:
        found = await self.catalog.get_upload(session) if len(session) == 32 else None
        if found is None or (found.repo, found.image) != (repo, image) or found.finished:
            raise _unknown_upload(session)
        return found

    async def append(
        self,
        request: Request[Any, Any, Any],
        found: UploadSession,
        content_range: tuple[int, int] | None,
    ) -> tuple[StagingWriter, int]:
        """Resume the session's file, check the chunk's range, stream the body in; the
        writer is returned locked, its bytes not yet durable (see :meth:`pause`).

        A chunk that does not start where the session stands, or whose body is not as
        long as its ``Content-Range`` says, is refused with 416 and leaves the session
        as it was.
        """
        declared = declared_length(request)
        limit = self.settings.max_image_size
        free = await self.blobs.free_space()
        if declared is not None and free is not None and declared > free:
            raise OciError(507, "SIZE_INVALID", "the data volume has no room for this chunk")

        async def recorded() -> int | None:
            now = await self.catalog.get_upload(found.id)
            return None if now is None or now.finished else now.size

        writer = await self.blobs.resume_staging(found.id, recorded)
        if writer is None:
            await self.catalog.drop_upload(found.id)
            raise _unknown_upload(found.id)
        offset = writer.size
        expected: int | None = None
        body = body_of(request.receive, self.settings.read_body_timeout_secs)
        try:
            if content_range is not None:
                first, last = content_range
                expected = last - first + 1
                if first != offset:
                    await self.blobs.pause_staging(found.id, writer, _unchanged)
                    await self._range_refused(
                        body,
                        found,
                        offset,
                        "the chunk does not start where the upload stands",
                        {"offset": offset, "start": first},
                    )
                if expected < 1 or (declared is not None and declared != expected):
                    await self.blobs.pause_staging(found.id, writer, _unchanged)
                    await self._range_refused(
                        body,
                        found,
                        offset,
                        "the chunk's body is not the bytes its Content-Range names",
                        {"range": f"{first}-{last}", "length": declared},
                    )
            async for chunk in body:
                if expected is not None and writer.size - offset + len(chunk) > expected:
                    raise _RangeOverrun(writer.size - offset + len(chunk))
                if limit is not None and writer.size + len(chunk) > limit:
                    raise OciError(
                        413, "SIZE_INVALID", f"the blob is larger than the limit of {limit} bytes"
                    )
                await writer.write(chunk)
            if expected is not None and writer.size - offset != expected:
                raise _RangeOverrun(writer.size - offset)
        except _RangeOverrun as exc:
            # Bytes past the recorded offset are cut off by the next resume.
            await self.blobs.pause_staging(found.id, writer, _no_record)
            assert content_range is not None
            await self._range_refused(
                body,
                found,
                offset,
                "the chunk's body is not the bytes its Content-Range names",
                {"range": "-".join(map(str, content_range)), "received": exc.received},
            )
        except OciError as exc:
            if exc.status != 416:  # a 416 let the file go already, unchanged
                await self.blobs.pause_staging(found.id, writer, _no_record)
            raise
        except BaseException:
            # Bytes past the recorded offset are cut off by the next resume.
            await self.blobs.pause_staging(found.id, writer, _no_record)
            raise
        return writer, offset

    async def _range_refused(
        self,
        body: AsyncIterator[bytes],
        found: UploadSession,
        offset: int,
        message: str,
        detail: dict[str, Any],
    ) -> NoReturn:
        """416 with where the upload stands, once the session's file was let go."""
        # Read (and drop) the rest of the refused chunk so the client sees the answer.
        await drain(body)
        raise OciError(
            416,
            "BLOB_UPLOAD_INVALID",
            message,
            detail,
            {
                "Range": f"0-{max(offset - 1, 0)}",
                "Location": _location(found.repo, found.image, found.id),
            },
        )

    async def pause(self, found: UploadSession, writer: StagingWriter, offset: int) -> int:
        size = 0

        async def record(durable: int) -> bool:
            nonlocal size
            size = durable
            return await self.catalog.advance_upload(found.id, offset, durable)

        if not await self.blobs.pause_staging(found.id, writer, record):
            raise _unknown_upload(found.id)
        return size

    async def finish(
        self, found: UploadSession, writer: StagingWriter, offset: int, digest: str
    ) -> None:
        """Verify the whole upload against ``digest`` and mark it finished."""
        expected = parse_oci_digest(digest)
        staged = await writer.finish()
        try:
            if staged.sha256 != expected:
                await self.catalog.drop_upload(found.id)
                raise OciError(
                    400,
                    "DIGEST_INVALID",
                    "the uploaded bytes do not match the digest",
                    {"expected": f"sha256:{expected}", "actual": f"sha256:{staged.sha256}"},
                )
            finished = await self.catalog.finish_upload(
                found.id, offset, staged.blake3, staged.sha256, staged.size
            )
            if not finished:
                raise _unknown_upload(found.id)
        except BaseException:
            await self.blobs.discard(staged)
            raise
        if staged.lease is not None:
            staged.lease.release()  # kept in staging for the manifest that takes it


class _RangeOverrun(Exception):
    """A chunk's body turned out longer (or shorter) than its ``Content-Range``."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received
        """The bytes of the body received when it was found out."""


async def _no_record(_size: int) -> bool:
    """A chunk that failed half-way: its bytes are not recorded (nor the hash state kept)."""
    return False


async def _unchanged(_size: int) -> bool:
    """Nothing was written: the recorded length stands and the hash state may be kept."""
    return True


class OciPushController(Controller):
    """``/v2`` writes: blob uploads, mounts, manifests, deletes."""

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
        catalog: Catalog,
        blobs: Blobs,
        settings: Settings,
        repo: str,
        image: str,
    ) -> Response[None]:
        names = oci_names(repo, image)
        params = request.query_params
        mount, source = params.get("mount"), params.get("from")
        if mount is not None:
            hex_digest = parse_oci_digest(mount)
            if await _mountable(catalog, hex_digest, source):
                return _created(*names, hex_digest)
        session = secrets.token_hex(16)
        await catalog.create_upload(session, *names)
        digest = params.get("digest")
        if digest is None:
            await drain(body_of(request.receive, settings.read_body_timeout_secs))
            return _progress(*names, session, 0, 202)
        steps = _Sessions(catalog, blobs, settings)
        found = await steps.session(*names, session)
        writer, offset = await steps.append(request, found, None)
        await steps.finish(found, writer, offset, digest)
        return _created(*names, parse_oci_digest(digest))

    @patch(
        "/{repo:str}/{image:str}/blobs/uploads/{session:str}",
        include_in_schema=False,
        request_max_body_size=None,
        opt={TRANSFER_OPT: "upload"},
    )
    async def upload_chunk(
        self,
        request: Request[Any, Any, Any],
        catalog: Catalog,
        blobs: Blobs,
        settings: Settings,
        repo: str,
        image: str,
        session: str,
    ) -> Response[None]:
        names = oci_names(repo, image)
        steps = _Sessions(catalog, blobs, settings)
        found = await steps.session(*names, session)
        writer, offset = await steps.append(request, found, _content_range(request))
        size = await steps.pause(found, writer, offset)
        return _progress(*names, session, size, 202)

    @get("/{repo:str}/{image:str}/blobs/uploads/{session:str}", include_in_schema=False)
    async def upload_status(
        self,
        catalog: Catalog,
        blobs: Blobs,
        settings: Settings,
        repo: str,
        image: str,
        session: str,
    ) -> Response[None]:
        names = oci_names(repo, image)
        found = await _Sessions(catalog, blobs, settings).session(*names, session)
        return _progress(*names, session, found.size, 204)

    @put(
        "/{repo:str}/{image:str}/blobs/uploads/{session:str}",
        include_in_schema=False,
        request_max_body_size=None,
        status_code=201,
        opt={TRANSFER_OPT: "upload"},
    )
    async def finish_upload(
        self,
        request: Request[Any, Any, Any],
        catalog: Catalog,
        blobs: Blobs,
        settings: Settings,
        repo: str,
        image: str,
        session: str,
    ) -> Response[None]:
        names = oci_names(repo, image)
        digest = request.query_params.get("digest")
        if digest is None:
            raise OciError(400, "DIGEST_INVALID", "PUT needs ?digest=sha256:<hex>")
        parse_oci_digest(digest)
        steps = _Sessions(catalog, blobs, settings)
        found = await steps.session(*names, session)
        writer, offset = await steps.append(request, found, _content_range(request))
        await steps.finish(found, writer, offset, digest)
        return _created(*names, parse_oci_digest(digest))

    @delete(
        "/{repo:str}/{image:str}/blobs/uploads/{session:str}",
        include_in_schema=False,
        status_code=204,
    )
    async def cancel_upload(
        self,
        catalog: Catalog,
        blobs: Blobs,
        settings: Settings,
        repo: str,
        image: str,
        session: str,
    ) -> None:
        names = oci_names(repo, image)
        found = await _Sessions(catalog, blobs, settings).session(*names, session)
        await catalog.drop_upload(found.id)
        await blobs.drop_session(found.id)

    @delete("/{repo:str}/{image:str}/blobs/{digest:str}", include_in_schema=False, status_code=202)
    async def delete_blob(
        self, catalog: Catalog, blobs: Blobs, repo: str, image: str, digest: str
    ) -> None:
        await delete_blob(catalog, blobs, oci_names(repo, image), parse_oci_digest(digest))

    @put(
        "/{repo:str}/{image:str}/manifests/{reference:str}",
        include_in_schema=False,
        status_code=201,
    )
    async def put_manifest(
        self,
        request: Request[Any, Any, Any],
        catalog: Catalog,
        blobs: Blobs,
        settings: Settings,
        disks: Disks,
        repo: str,
        image: str,
        reference: str,
    ) -> Response[None]:
        names = oci_names(repo, image)
        if ":" in reference:
            return await _put_child(request, catalog, settings, names, reference)
        tag = oci_tag(reference)
        body = await _small_body(request, settings, _MAX_MANIFEST, "MANIFEST_INVALID")
        try:
            await put_tagged_manifest(request, catalog, blobs, settings, (*names, tag), body)
        except ManifestRefused as exc:
            raise OciError(400, exc.spec_code, exc.message, exc.context) from None
        disks.wake()
        pushed_digest = hashlib.sha256(body).hexdigest()
        headers = {
            "Location": f"/v2/{repo}/{image}/manifests/sha256:{pushed_digest}",
            "Docker-Content-Digest": f"sha256:{pushed_digest}",
        }
        return Response(None, status_code=201, headers=headers)

    @delete(
        "/{repo:str}/{image:str}/manifests/{reference:str}",
        include_in_schema=False,
        status_code=202,
    )
    async def delete_manifest(
        self,
        request: Request[Any, Any, Any],
        catalog: Catalog,
        disks: Disks,
        repo: str,
        image: str,
        reference: str,
    ) -> None:
        names = oci_names(repo, image)
        options = WriteOptions(actor=actor_of(request))
        if ":" in reference:
            hex_digest = parse_oci_digest(reference)
            await delete_manifest_digest(catalog, disks, names, hex_digest, options)
            return
        try:
            await catalog.delete_tag(*names, oci_tag(reference), options)
        except NotFoundError:
            raise OciError(404, "MANIFEST_UNKNOWN", "no such tag", {"tag": reference}) from None


async def _put_child(
    request: Request[Any, Any, Any],
    catalog: Catalog,
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
            uploaded = await catalog.finished_upload(needed) is not None
            if needed != EMPTY_CONFIG and not uploaded and not await catalog.sha256_stored(needed):
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
    await catalog.add_pending_manifest(*names, pending)
    headers = {
        "Location": f"/v2/{names[0]}/{names[1]}/manifests/sha256:{hex_digest}",
        "Docker-Content-Digest": f"sha256:{hex_digest}",
    }
    return Response(None, status_code=201, headers=headers)


async def _mountable(catalog: Catalog, sha256_hex: str, source: str | None) -> bool:
    """Whether the registry holds these bytes already (every writer may read every image)."""
    del source  # a blob is mountable from anywhere: names do not own bytes here
    if await catalog.finished_upload(sha256_hex) is not None:
        return True
    return await catalog.sha256_stored(sha256_hex) is not None


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
