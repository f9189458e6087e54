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

import asyncio
import hashlib
import json
import secrets
from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.params import SkipValidation

from cloudimg.api.auth import actor_of
from cloudimg.api.body import body_of, declared_length, drain
from cloudimg.api.observer import TRANSFER_OPT
from cloudimg.api.oci import API_VERSION_HEADER, oci_names, oci_tag, parse_oci_digest
from cloudimg.api.oci_errors import OciError
from cloudimg.blobstore import BlobStore, StagedBlob, StagingWriter
from cloudimg.catalog import Catalog, PushedManifest, UploadSession, WriteOptions
from cloudimg.config import Settings
from cloudimg.digest import Digest
from cloudimg.errors import NotFoundError
from cloudimg.images import inspect_reader
from cloudimg.ingest import commit_staged
from cloudimg.oci.digests import ContainerDisks
from cloudimg.oci.push import (
    DiskLayer,
    ManifestRefused,
    chosen_child,
    disk_layer_of,
    unpack_disk,
)

__all__ = ["OciPushController"]

Blobs = SkipValidation[BlobStore]
Disks = SkipValidation[ContainerDisks]
_MAX_MANIFEST = 4 * 1024 * 1024
_MAX_CONFIG = 1024 * 1024
_EMPTY_CONFIG = hashlib.sha256(b"{}").hexdigest()


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


def _content_range(request: Request[Any, Any, Any]) -> int | None:
    """Where a chunk says it starts (``Content-Range: <first>-<last>``), if it says."""
    text = request.headers.get("content-range")
    if text is None:
        return None
    first, dash, last = text.strip().removeprefix("bytes ").partition("-")
    if not dash or not first.isdigit() or not last.split("/")[0].isdigit():
        raise OciError(400, "BLOB_UPLOAD_INVALID", "Content-Range is <first>-<last>")
    return int(first)


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
        self, request: Request[Any, Any, Any], found: UploadSession, start: int | None
    ) -> tuple[StagingWriter, int]:
        """Resume the session's file, check the chunk's offset, stream the body in; the
        writer is returned locked, its bytes not yet durable (see :meth:`pause`)."""
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
        try:
            if start is not None and start != offset:
                await self.blobs.pause_staging(found.id, writer, _unchanged)
                # Read (and drop) the refused chunk so the client sees the answer.
                await drain(body_of(request.receive, self.settings.read_body_timeout_secs))
                raise OciError(
                    416,
                    "BLOB_UPLOAD_INVALID",
                    "the chunk does not start where the upload stands",
                    {"offset": offset, "start": start},
                    {
                        "Range": f"0-{max(offset - 1, 0)}",
                        "Location": _location(found.repo, found.image, found.id),
                    },
                )
            async for chunk in body_of(request.receive, self.settings.read_body_timeout_secs):
                if limit is not None and writer.size + len(chunk) > limit:
                    raise OciError(
                        413, "SIZE_INVALID", f"the blob is larger than the limit of {limit} bytes"
                    )
                await writer.write(chunk)
        except OciError as exc:
            if exc.status != 416:  # a 416 let the file go already, unchanged
                await self.blobs.pause_staging(found.id, writer, _no_record)
            raise
        except BaseException:
            # Bytes past the recorded offset are cut off by the next resume.
            await self.blobs.pause_staging(found.id, writer, _no_record)
            raise
        return writer, offset

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
    async def delete_blob(self, repo: str, image: str, digest: str) -> None:
        oci_names(repo, image)
        parse_oci_digest(digest)
        raise OciError(
            405, "UNSUPPORTED", "blobs go with the last tag that holds them: delete the tag"
        )

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
        content_type = request.headers.get("content-type")
        if ":" in reference:
            return await _put_child(request, catalog, settings, names, reference)
        tag = oci_tag(reference)
        body = await _small_body(request, settings, _MAX_MANIFEST, "MANIFEST_INVALID")
        pushed_digest = hashlib.sha256(body).hexdigest()
        try:
            child = chosen_child(body, content_type)
            if child is not None:
                # An index: the tag names the disk of its linux/amd64 (or only) child.
                child_body = await catalog.pending_manifest(*names, child)
                if child_body is None:
                    raise ManifestRefused(
                        "MANIFEST_BLOB_UNKNOWN",
                        "push the index's children by digest first",
                        {"digest": f"sha256:{child}"},
                    )
                body, content_type = child_body, None
            layer = disk_layer_of(body, content_type)
            config = await _config_bytes(catalog, blobs, layer)
            options = WriteOptions(actor=actor_of(request))
            stored = await catalog.sha256_stored(layer.sha256) if layer.packing == "disk" else None
            if stored is not None:
                # The disk is stored already (a mount, a re-push): name it, as retag does.
                await catalog.retag(*names, tag, Digest("sha256", layer.sha256), {}, options)
                disk_blake3 = stored.digest
            else:
                staged = await _disk_of(catalog, blobs, layer)
                disk_blake3 = staged.blake3
                try:
                    inspection = await _inspect(blobs, staged, settings)
                    await commit_staged(
                        catalog, blobs, (*names, tag), staged, {}, options, inspection
                    )
                finally:
                    await blobs.discard(staged)
                await catalog.drop_finished_uploads(layer.sha256)
        except ManifestRefused as exc:
            raise OciError(400, exc.spec_code, exc.message, exc.context) from None
        digest = hashlib.sha256(body).hexdigest()
        media_type = json.loads(body).get("mediaType") or request.headers.get("content-type", "")
        if layer.packing == "disk" and digest == pushed_digest:
            # The artifact's one layer is the stored disk: what was pushed pulls back as it
            # was. A containerDisk's pushed tar is not kept (the disk was unpacked from it):
            # its tag pulls as the generated containerDisk of the disk.
            await catalog.add_pushed_manifest(
                *names,
                PushedManifest(
                    digest, str(media_type), body, disk_blake3, layer.config_sha256, config
                ),
            )
        disks.wake()
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
        repo: str,
        image: str,
        reference: str,
    ) -> None:
        names = oci_names(repo, image)
        if ":" in reference:
            raise OciError(
                405,
                "UNSUPPORTED",
                "delete by tag: a digest may be held by several tags and by history",
            )
        try:
            await catalog.delete_tag(
                *names, oci_tag(reference), WriteOptions(actor=actor_of(request))
            )
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
            if needed != _EMPTY_CONFIG and not uploaded and not await catalog.sha256_stored(needed):
                raise ManifestRefused(
                    "MANIFEST_BLOB_UNKNOWN",
                    "a blob was not uploaded",
                    {"digest": f"sha256:{needed}"},
                )
    except ManifestRefused as exc:
        raise OciError(400, exc.spec_code, exc.message, exc.context) from None
    media_type = json.loads(body).get("mediaType") or request.headers.get("content-type", "")
    pending = PushedManifest(hex_digest, str(media_type), body, "", layer.config_sha256, b"")
    await catalog.add_pushed_manifest(*names, pending)
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


async def _config_bytes(catalog: Catalog, blobs: BlobStore, layer: DiskLayer) -> bytes:
    if layer.config_sha256 == _EMPTY_CONFIG:
        return b"{}"
    if layer.config_size > _MAX_CONFIG:
        raise ManifestRefused("MANIFEST_INVALID", f"the config is larger than {_MAX_CONFIG} bytes")
    staged = await _claim(catalog, blobs, layer.config_sha256)
    if staged is None:
        raise ManifestRefused(
            "MANIFEST_BLOB_UNKNOWN",
            "the config blob was not uploaded",
            {"digest": f"sha256:{layer.config_sha256}"},
        )
    try:
        reader = await blobs.open_staged(staged)
        try:
            return await asyncio.to_thread(reader.read, staged.size, 0)
        finally:
            reader.close()
    finally:
        if staged.lease is not None:
            staged.lease.release()


async def _claim(catalog: Catalog, blobs: BlobStore, sha256_hex: str) -> StagedBlob | None:
    found = await catalog.finished_upload(sha256_hex)
    if found is None or found.blake3 is None:
        return None
    return await blobs.claim_staging(found.id, found.blake3, sha256_hex, found.size)


async def _disk_of(catalog: Catalog, blobs: BlobStore, layer: DiskLayer) -> StagedBlob:
    """The disk's bytes, staged: the pushed layer itself, or the disk unpacked from it."""
    staged = await _claim(catalog, blobs, layer.sha256)
    if staged is None:
        raise ManifestRefused(
            "MANIFEST_BLOB_UNKNOWN",
            "the layer blob was not uploaded",
            {"digest": f"sha256:{layer.sha256}"},
        )
    if layer.packing == "disk":
        return staged
    try:
        return await _unpack(blobs, staged, layer.packing)
    finally:
        if staged.lease is not None:
            staged.lease.release()  # the pushed tar stays in staging until gc's grace


async def _unpack(blobs: BlobStore, layer: StagedBlob, packing: str) -> StagedBlob:
    reader = await blobs.open_staged(layer)
    writer = await blobs.open_staging()
    loop = asyncio.get_running_loop()

    def write(piece: bytes) -> None:
        asyncio.run_coroutine_threadsafe(writer.write(piece), loop).result()

    try:
        await asyncio.to_thread(unpack_disk, reader, packing, write)
        return await writer.finish()
    except BaseException:
        await writer.abort()
        raise
    finally:
        reader.close()


async def _inspect(blobs: BlobStore, staged: StagedBlob, settings: Settings) -> Any:
    """The pushed disk passes the same inspection as a ``/reg`` upload (ImageRefusedError)."""
    reader = await blobs.open_staged(staged)
    try:
        return await asyncio.to_thread(inspect_reader, reader, settings.inspection_policy)
    finally:
        reader.close()
