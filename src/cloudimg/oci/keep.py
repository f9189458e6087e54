"""A manifest ``PUT`` by tag over ``/v2``: commit the disk, keep what was pushed.

The tag names the disk (:mod:`cloudimg.oci.push` says which layer holds it): an
artifact's layer is committed as it is, the disk in a containerDisk's tar is unpacked
into a new blob; either way through the inspection and commit of ``/reg`` uploads.
Then what was pushed is kept as it was pushed (the manifest, or the index and all its
children, their configs and the layers that are not the disk itself), so a pull by tag
or by any pushed digest returns exactly those bytes. Each kept layer and config is a
blob in the blob store holding one reference (``cloudimg.oci.store``); the kept rows
go, and those references with them, in the tag write that lets the image stop holding
the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from cloudimg.blobstore import BlobReader, BlobStore, StagedBlob
from cloudimg.catalog import Catalog, WriteOptions
from cloudimg.config import Settings
from cloudimg.core import commit_staged
from cloudimg.digest import Digest
from cloudimg.errors import PermissionDeniedError
from cloudimg.images import Inspection, InspectionPolicy, inspect_reader
from cloudimg.oci.push import (
    DiskLayer,
    ManifestRefused,
    chosen_child,
    disk_layer_of,
    manifest_json,
    unpack_disk,
)
from cloudimg.oci.store import KeptPart, OciStore, PushedManifest, UploadSession

__all__ = ["EMPTY_CONFIG", "KeepContext", "Parts", "Reach", "put_tagged_manifest"]

EMPTY_CONFIG = hashlib.sha256(b"{}").hexdigest()
_MAX_CONFIG = 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Child:
    digest: str
    body: bytes
    media_type: str
    layer: DiskLayer


Pullable = Callable[[str], Awaitable[bool]]
"""Whether the pusher may pull a name that holds the stored blob of this sha256."""


@dataclass(frozen=True, slots=True)
class Reach:
    """The blobs a manifest pushed to ``names`` (repo, image) may name.

    With scopes (``pullable`` given): the finished uploads to ``names`` and the stored
    blobs ``pullable`` accepts (held by a name the pusher may pull), so a pusher cannot
    name another team's bytes by their digest. Without (None): every finished upload
    and every stored blob, as before scopes.
    """

    names: tuple[str, str]
    pullable: Pullable | None = None

    async def upload(self, store: OciStore, sha256_hex: str) -> UploadSession | None:
        """A finished upload of these bytes the push may take."""
        names = None if self.pullable is None else self.names
        return await store.finished_upload(sha256_hex, names)

    async def stored(self, store: OciStore, sha256_hex: str) -> str | None:
        """The blake3 of a stored blob of these bytes the push may name."""
        ref = await store.sha256_stored(sha256_hex)
        if ref is None or (self.pullable is not None and not await self.pullable(sha256_hex)):
            return None
        return ref.digest

    async def usable(self, store: OciStore, sha256_hex: str) -> bool:
        """Whether the push may name these bytes (an upload or a stored blob)."""
        found = await self.upload(store, sha256_hex)
        return found is not None or await self.stored(store, sha256_hex) is not None

    def refused(self, sha256_hex: str, what: str) -> Exception:
        """What a push naming bytes it may not use gets: ``MANIFEST_BLOB_UNKNOWN``, or
        with scopes a 403 that says the same whether the bytes exist or not (so it
        tells nobody which digests another team stores)."""
        digest = f"sha256:{sha256_hex}"
        if self.pullable is None:
            return ManifestRefused(
                "MANIFEST_BLOB_UNKNOWN", f"the {what} blob was not uploaded", {"digest": digest}
            )
        repo, image = self.names
        return PermissionDeniedError(
            f"the {what} blob {digest} was not uploaded to {repo}/{image}, and no name these "
            "credentials may pull holds it",
            {"action": "pull", "digest": digest},
        )


class Parts:
    """The pushed blobs a manifest ``PUT`` uses: finished uploads (each claimed once and
    locked until :meth:`done`) or blobs stored already (a mount, a re-push), within the
    push's ``reach``."""

    def __init__(self, store: OciStore, blobs: BlobStore, reach: Reach) -> None:
        self._store = store
        self._blobs = blobs
        self._reach = reach
        self._claimed: dict[str, StagedBlob] = {}
        self._sessions: dict[str, str] = {}

    async def part(self, sha256_hex: str) -> KeptPart | None:
        """The upload or stored blob with this sha256; None when there is neither."""
        if sha256_hex in self._claimed:
            return self._claimed[sha256_hex]
        found = await self._reach.upload(self._store, sha256_hex)
        if found is not None and found.blake3 is not None:
            staged = await self._blobs.claim_staging(found.id, found.blake3, sha256_hex, found.size)
            if staged is not None:
                self._claimed[sha256_hex] = staged
                self._sessions[sha256_hex] = found.id
                return staged
        return await self._reach.stored(self._store, sha256_hex)

    async def needed(self, sha256_hex: str, what: str) -> KeptPart:
        part = await self.part(sha256_hex)
        if part is None:
            raise self._reach.refused(sha256_hex, what)
        return part

    async def reader(self, part: KeptPart) -> BlobReader:
        if isinstance(part, StagedBlob):
            return await self._blobs.open_staged(part)
        reader = await self._blobs.open(part)
        if reader is None:
            raise ManifestRefused("MANIFEST_BLOB_UNKNOWN", "a pushed blob is gone; push it again")
        return reader

    async def done(self) -> None:
        """The uploads claimed are used up, kept or not (a refused push starts again)."""
        for sha256_hex, staged in self._claimed.items():
            await self._blobs.discard(staged)  # placed ones are gone already
            # Only the session claimed: other finished uploads of the same bytes (a client
            # that pushed a blob twice) keep their rows, so gc reclaims their files after
            # the grace instead of finding staging files that no row names.
            await self._store.drop_upload(self._sessions[sha256_hex])


@dataclass(frozen=True, slots=True)
class KeepContext:
    """What keeping a push works over: the catalog (the tag's commit), the OCI store (the
    uploads, the kept rows), the blob store, the server's limits and what inspection
    accepts (``policy``: settled once, when the slice is built, as the core's is)."""

    catalog: Catalog
    store: OciStore
    blobs: BlobStore
    settings: Settings
    policy: InspectionPolicy


async def put_tagged_manifest(
    ctx: KeepContext,
    names: tuple[str, str, str],
    body: bytes,
    content_type: str | None,
    options: WriteOptions,
    pullable: Pullable | None = None,
) -> None:
    """Commit the disk ``body`` describes under the tag ``names`` and keep the push.

    ``pullable``: with scopes, which stored blobs the pusher may name (:class:`Reach`);
    a blob outside its reach refuses the push (``PermissionDeniedError``) before
    anything is stored.

    ``ManifestRefused`` for what is not a VM disk, ``ImageRefusedError`` for a disk that
    fails inspection (the tag's, or that of any child of an index: each is served by
    digest to the nodes of its platform), and the domain errors of a tag write.
    """
    store, blobs = ctx.store, ctx.blobs
    repo, image, _tag = names
    index = chosen_child(body, content_type)
    children: list[_Child] = []
    chosen = ""
    if index is None:
        disk_layer = disk_layer_of(body, content_type)
    else:
        chosen, every = index
        children = [await _child(store, repo, image, digest) for digest in every]
        disk_layer = next(child.layer for child in children if child.digest == chosen)
    media_type = str(_media_type(body, content_type))  # valid JSON by now
    parts = Parts(store, blobs, Reach((repo, image), pullable))
    try:
        # Every part is found before the tag moves: a push refused for a missing blob
        # changes nothing.
        sha = hashlib.sha256(body).hexdigest()
        if index is None:
            plan = [await _kept(parts, sha, media_type, body, disk_layer, "top")]
        else:
            plan = [PushedManifest(sha, media_type, body, "", "", b"", "top")]
            for child in children:
                plan.append(
                    await _kept(
                        parts,
                        child.digest,
                        child.media_type,
                        child.body,
                        child.layer,
                        "child",
                        is_disk=child.digest == chosen,
                    )
                )
        if index is not None:
            await _inspect_children(blobs, parts, ctx, children, disk_layer)
        disk = await _commit_disk(ctx, names, disk_layer, parts, options)
        tag = names[2]  # the top manifest (or index) answers a pull of this tag
        kept = [replace(part, blob=disk, tag=tag if part.role == "top" else None) for part in plan]
        await store.keep_pushed(repo, image, kept)
    finally:
        await parts.done()


def _media_type(body: bytes, content_type: str | None) -> object:
    return manifest_json(body).get("mediaType") or content_type or ""


async def _child(store: OciStore, repo: str, image: str, digest: str) -> _Child:
    """An index's child: pushed by digest before it, or kept from an earlier push."""
    body = await store.pending_manifest(repo, image, digest)
    if body is None:
        kept = await store.pushed_manifest(repo, image, digest=digest)
        body = None if kept is None else kept.body
    if body is None:
        raise ManifestRefused(
            "MANIFEST_BLOB_UNKNOWN",
            "push the index's children by digest first",
            {"digest": f"sha256:{digest}"},
        )
    return _Child(digest, body, str(_media_type(body, None)), disk_layer_of(body, None))


async def _kept(
    parts: Parts,
    digest: str,
    media_type: str,
    body: bytes,
    layer: DiskLayer,
    role: str,
    *,
    is_disk: bool = True,
) -> PushedManifest:
    """A manifest to keep (its disk filled in once committed), with its config and,
    unless it is the tag's disk itself (``is_disk`` and an artifact), its layer."""
    if layer.config_size > _MAX_CONFIG:
        raise ManifestRefused("MANIFEST_INVALID", f"the config is larger than {_MAX_CONFIG} bytes")
    config_part = await parts.part(layer.config_sha256)
    if config_part is None and layer.config_sha256 != EMPTY_CONFIG:
        await parts.needed(layer.config_sha256, "config")
    inline = b"{}" if config_part is None else b""
    layer_part: KeptPart | None = await parts.needed(layer.sha256, "layer")
    if is_disk and layer.packing == "disk":
        layer_part = None  # the tag's disk: held by the tag, not by the manifest
    return PushedManifest(
        digest, media_type, body, "", layer.config_sha256, inline, role, layer_part, config_part
    )


async def _inspect_children(
    blobs: BlobStore, parts: Parts, ctx: KeepContext, children: list[_Child], disk: DiskLayer
) -> None:
    """Every child's disk passes the inspection the tag's disk does (``ImageRefusedError``):
    the index serves each by digest, and a node of that platform runs it (an arm64 node's
    CDI converts the arm64 one). The tag's disk (``disk``) is inspected as it is
    committed; a containerDisk child's is unpacked into a staging file to be inspected,
    then dropped (its layer is what is kept)."""
    seen = {(disk.sha256, disk.packing)}
    for child in children:
        layer = child.layer
        if (layer.sha256, layer.packing) in seen:
            continue
        seen.add((layer.sha256, layer.packing))
        reader = await parts.reader(await parts.needed(layer.sha256, "layer"))
        if layer.packing == "disk":
            try:
                await _inspect(reader, ctx.policy)
            finally:
                reader.close()
            continue
        staged = await _unpack(blobs, reader, layer.packing, ctx.settings)
        try:
            await _inspect_staged(blobs, staged, ctx.policy)
        finally:
            await blobs.discard(staged)


async def _commit_disk(
    ctx: KeepContext,
    names: tuple[str, str, str],
    layer: DiskLayer,
    parts: Parts,
    options: WriteOptions,
) -> str:
    """Point the tag at the disk ``layer`` holds (inspected as ``/reg`` uploads are);
    the disk's blake3."""
    catalog, blobs, settings = ctx.catalog, ctx.blobs, ctx.settings
    source = await parts.needed(layer.sha256, "layer")
    if layer.packing == "disk" and isinstance(source, str):
        # Stored already (a mount, a re-push): name it, as retag does, once inspected.
        if not await ctx.store.is_inspected(source):
            reader = await parts.reader(source)
            try:
                inspection = await _inspect(reader, ctx.policy)
            finally:
                reader.close()
            await catalog.maintenance.record_inspection(source, inspection)
        await catalog.tags.retag(*names, Digest("blake3", source), {}, options)
        return source
    if layer.packing == "disk":
        assert isinstance(source, StagedBlob)
        staged = source
    else:
        staged = await _unpack(blobs, await parts.reader(source), layer.packing, settings)
    try:
        inspection = await _inspect_staged(blobs, staged, ctx.policy)
        await commit_staged(
            catalog, blobs, names, staged, {}, options=options, inspection=inspection
        )
    finally:
        # Committed or refused, the disk's upload is used up (commit_staged drops the
        # staging file either way): a client pushes the blob again.
        await blobs.discard(staged)
    return staged.blake3


class _Stopped(Exception):
    """The manifest ``PUT`` ended while its layer was being unpacked."""


async def _unpack(
    blobs: BlobStore, reader: BlobReader, packing: str, settings: Settings
) -> StagedBlob:
    """Unpack the disk of a containerDisk's layer into a new staging file, off the event
    loop, within the server's limits (:func:`cloudimg.oci.push.unpack_disk`); ``reader``
    is closed."""
    try:
        writer = await blobs.open_staging()
    except BaseException:
        reader.close()
        raise
    loop = asyncio.get_running_loop()
    stopped = False

    async def write_on_loop(piece: bytes) -> None:
        if stopped:  # the request is over: no byte goes to a writer being aborted
            raise _Stopped
        await writer.write(piece)

    def write(piece: bytes) -> None:
        asyncio.run_coroutine_threadsafe(write_on_loop(piece), loop).result()

    try:
        await asyncio.to_thread(
            unpack_disk,
            reader,
            packing,
            write,
            max_virtual_size=settings.max_virtual_size,
            max_image_size=settings.max_image_size,
        )
        return await writer.finish()
    except BaseException:
        stopped = True
        await writer.abort()
        raise
    finally:
        reader.close()


async def _inspect_staged(
    blobs: BlobStore, staged: StagedBlob, policy: InspectionPolicy
) -> Inspection:
    reader = await blobs.open_staged(staged)
    try:
        return await _inspect(reader, policy)
    finally:
        reader.close()


async def _inspect(reader: BlobReader, policy: InspectionPolicy) -> Inspection:
    """The pushed disk passes the same inspection as a ``/reg`` upload (ImageRefusedError)."""
    return await asyncio.to_thread(inspect_reader, reader, policy)
