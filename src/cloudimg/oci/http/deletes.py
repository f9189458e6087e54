"""``DELETE`` of a manifest by digest and of a blob over ``/v2``, kept safe by the
catalog's reference counting.

- A manifest by digest: every tag of the repository whose pull returns that manifest,
  or that it was pushed to over ``/v2`` and that still names its disk, is deleted as
  ``DELETE /reg/...`` deletes it (recorded in its history, whose retained
  entries keep the bytes, and with them the manifest, pullable by digest until
  retention lets them go: no other tag's or image's bytes are touched), all in one
  catalog transaction: an immutable tag among them refuses the whole delete, and
  every tag stays.
- A blob: only what no manifest of the repository refers to can go: a finished upload
  no manifest took. A blob a manifest refers to is refused with the reason (delete the
  manifest or tag first); the bytes go with the last reference.
"""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Controller, Request, delete
from litestar.di import NamedDependency
from litestar.params import FromPath

from cloudimg.api.auth import actor_of, audit_write
from cloudimg.catalog import Catalog, TagInfo, WriteOptions
from cloudimg.digest import Digest
from cloudimg.errors import NotFoundError
from cloudimg.oci.digests import ContainerDisks
from cloudimg.oci.errors import OciError, oci_names, oci_tag, parse_oci_digest
from cloudimg.oci.http.face import MANIFEST_PATH, Face, OciFace
from cloudimg.oci.store import OciStore

__all__ = ["OciDeleteController"]


class OciDeleteController(Controller):
    """``/v2`` deletes: a manifest (by tag or digest), a blob."""

    path = "/v2"

    @delete("/{repo:str}/{image:str}/blobs/{digest:str}", include_in_schema=False, status_code=202)
    async def delete_blob(
        self,
        request: Request[Any, Any, Any],
        face: NamedDependency[Face],
        repo: FromPath[str],
        image: FromPath[str],
        digest: FromPath[str],
    ) -> None:
        await _delete_blob(face, oci_names(repo, image), parse_oci_digest(digest))
        audit_write(request, "delete", f"{repo}/{image}", f"blob {digest}")

    @delete(MANIFEST_PATH, include_in_schema=False, status_code=202)
    async def delete_manifest(
        self,
        request: Request[Any, Any, Any],
        face: NamedDependency[Face],
        repo: FromPath[str],
        image: FromPath[str],
        reference: FromPath[str],
    ) -> None:
        names = oci_names(repo, image)
        options = WriteOptions(actor=actor_of(request))
        if ":" in reference:
            hex_digest = parse_oci_digest(reference)
            await _delete_manifest_digest(face, names, hex_digest, options)
        else:
            try:
                await face.catalog.tags.delete_tag(*names, oci_tag(reference), options)
            except NotFoundError:
                raise OciError(404, "MANIFEST_UNKNOWN", "no such tag", {"tag": reference}) from None
        audit_write(request, "delete", f"{repo}/{image}", f"manifest {reference}")


async def _manifests_of(
    catalog: Catalog, oci: OciStore, disks: ContainerDisks, tag: TagInfo
) -> set[str]:
    """The sha256 of the manifest a pull of ``tag`` returns, and of the one pushed to it
    over ``/v2`` (a disk artifact pulls by tag as its generated containerDisk)."""
    found: set[str] = set()
    pushed = await oci.pushed_manifest(tag.repo, tag.image, blob=tag.digest, tag=tag.tag)
    if pushed is not None:
        found.add(pushed.digest)
        if pushed.is_container_image:
            return found
    stored = await oci.oci_digests(tag.digest)
    if stored is not None:
        return found | {stored[2]}
    ref = await catalog.reads.resolve(tag.repo, tag.image, tag.tag)
    return found | {hashlib.sha256((await disks.of(ref)).manifest).hexdigest()}


async def _delete_manifest_digest(
    face: OciFace, names: tuple[str, str], sha256_hex: str, options: WriteOptions
) -> None:
    """Delete the tags of ``names`` that pull as manifest ``sha256_hex`` or were pushed so."""
    catalog, oci, disks = face.catalog, face.store, face.disks
    try:
        tags = await catalog.reads.list_tag_infos(*names)
    except NotFoundError:
        tags = []
    matching = [
        tag.tag for tag in tags if sha256_hex in await _manifests_of(catalog, oci, disks, tag)
    ]
    if matching and await catalog.tags.delete_tags(*names, matching, options):
        return
    context = {"digest": f"sha256:{sha256_hex}"}
    if await _pullable(oci, names, sha256_hex):
        raise OciError(
            405,
            "UNSUPPORTED",
            "no tag names this manifest: tag history retains it (see --keep-history)"
            " and lets it go with its bytes",
            context,
        )
    raise OciError(404, "MANIFEST_UNKNOWN", "no such manifest in this repository", context)


async def _pullable(oci: OciStore, names: tuple[str, str], sha256_hex: str) -> bool:
    if await oci.pushed_manifest(*names, digest=sha256_hex) is not None:
        return True
    try:
        await oci.resolve_oci(*names, "manifest", sha256_hex)
    except NotFoundError:
        return False
    return True


async def _delete_blob(face: OciFace, names: tuple[str, str], sha256_hex: str) -> None:
    """Drop a finished upload of ``names`` no manifest took; refuse a blob in use."""
    reason = await _referred(face.catalog, face.store, names, sha256_hex)
    if reason is not None:
        raise OciError(
            405,
            "UNSUPPORTED",
            f"{reason} of this repository refers to the blob: delete the manifest (or its"
            " tags) first; the bytes go with the last reference",
            {"digest": f"sha256:{sha256_hex}"},
        )
    dropped = await face.sessions.drop_finished(*names, sha256_hex)
    if not dropped:
        raise OciError(
            404,
            "BLOB_UNKNOWN",
            "no such blob in this repository",
            {"digest": f"sha256:{sha256_hex}"},
        )


async def _referred(
    catalog: Catalog, oci: OciStore, names: tuple[str, str], sha256_hex: str
) -> str | None:
    """What refers to the blob in ``names``, if anything does."""
    if await oci.kept_blob(*names, sha256_hex) is not None:
        return "a pushed manifest"
    if await oci.pushed_manifest(*names, config=sha256_hex) is not None:
        return "a pushed manifest"
    for kind in ("layer", "config"):
        try:
            await oci.resolve_oci(*names, kind, sha256_hex)
            return "a tag's containerDisk manifest"
        except NotFoundError:
            pass
    try:
        await catalog.reads.resolve(*names, Digest("sha256", sha256_hex))
    except NotFoundError:
        return None
    return "a tag (or its retained history) holding the disk"
