"""Endpoints of a tag's history: read it, retag (roll back) without re-upload, immutability.

They sit under the tag's path next to ``/meta``:

- ``GET  …/{tag}/history``: the entries, newest first;
- ``POST …/{tag}/retag``: a JSON body ``{"digest": "blake3:…"|"sha256:…", "meta": {…}}``
  points the tag at bytes the registry holds (``meta`` optional: the metadata the tag
  last had with those bytes); the sha256 of a finished ``/v2`` upload to the image
  commits that upload instead, as an upload (a push's commit,
  :mod:`cloudimg.core.tags`); answered as an upload is;
- ``PUT`` / ``DELETE …/{tag}/immutable``: make the tag immutable, release it.

Writes honour ``If-Match`` / ``If-None-Match: *`` (:mod:`cloudimg.api.conditional`),
record the write token's name and are the registry core's (:mod:`cloudimg.core.tags`).
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, SkipValidation

from cloudimg.api.auth import audit_write
from cloudimg.api.body import body_of, drain
from cloudimg.api.conditional import write_options
from cloudimg.api.openapi import CREATED_HEADERS, RetagOperation, error_responses
from cloudimg.api.policy import SCOPE_OPT, grants_of
from cloudimg.api.reg.uploads import created
from cloudimg.catalog import Catalog, HistoryEntry
from cloudimg.config import Settings
from cloudimg.core import RegistryCore
from cloudimg.digest import Digest, parse_digest
from cloudimg.errors import InvalidArgumentError, PayloadTooLargeError, PermissionDeniedError
from cloudimg.meta import parse_meta
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name

__all__ = ["RETAG_MAX_BYTES", "TagHistoryController"]

RETAG_MAX_BYTES = 128 * 1024
"""A retag body: a digest and metadata of at most 64 KiB, with room for JSON framing."""

Envelope = dict[str, Any]
Names = tuple[str, str, str]
Core = SkipValidation[RegistryCore]


def _names(repo: str, image: str, tag: str) -> Names:
    return validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)


def _entry_view(entry: HistoryEntry) -> Envelope:
    return {
        "action": entry.action,
        "digest": f"blake3:{entry.digest}",
        "size": entry.size,
        "meta": entry.meta,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "retained": entry.retained,
    }


def _retag_request(raw: bytes) -> tuple[Digest, dict[str, str] | None]:
    """The digest and optional metadata of a retag body.

    Raises:
        InvalidArgumentError: anything but ``{"digest": "<digest>"[, "meta": {…}]}``.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidArgumentError(
            'the body must be JSON: {"digest": "blake3:<hex>", "meta": {...}}'
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("digest"), str):
        raise InvalidArgumentError('the body must be a JSON object with a "digest" string')
    unknown = sorted(set(body) - {"digest", "meta"})
    if unknown:
        raise InvalidArgumentError("unknown fields in the body", {"fields": unknown[:20]})
    try:
        digest = parse_digest(body["digest"])
    except ValueError as exc:
        raise InvalidArgumentError(str(exc), {"digest": body["digest"][:200]}) from None
    meta = body.get("meta")
    if meta is None:
        return digest, None
    # One set of metadata rules: the upload's (a flat object of strings, at most 64 KiB).
    return digest, parse_meta(json.dumps(meta, ensure_ascii=False).encode("utf-8", "replace"))


async def _small_body(request: Request[Any, Any, Any], settings: Settings) -> bytes:
    """The whole body of a retag, read as every body is (``--read-body-timeout-secs``).

    Raises:
        PayloadTooLargeError: past ``RETAG_MAX_BYTES`` (the rest is drained).
    """
    body = body_of(request.receive, settings.read_body_timeout_secs)
    raw = bytearray()
    async for chunk in body:
        raw += chunk
        if len(raw) > RETAG_MAX_BYTES:
            await drain(body)
            raise PayloadTooLargeError(
                f"a retag body is at most {RETAG_MAX_BYTES} bytes", {"limit": RETAG_MAX_BYTES}
            )
    return bytes(raw)


class TagHistoryController(Controller):
    """History, retag and immutability of a tag (see the module docstring)."""

    @get(
        "/{repo:str}/{image:str}/{tag:str}/history",
        operation_id="GetTagHistory",
        summary="The changes of a tag, newest first (also of a deleted tag)",
        responses=error_responses(400, 404),
    )
    async def get_history(
        self,
        catalog: NamedDependency[Catalog],
        repo: FromPath[str],
        image: FromPath[str],
        tag: FromPath[str],
    ) -> Envelope:
        entries = await catalog.tags.tag_history(*_names(repo, image, tag))
        return {"success": True, "data": [_entry_view(entry) for entry in entries]}

    @post(
        "/{repo:str}/{image:str}/{tag:str}/retag",
        operation_id="RetagImage",
        operation_class=RetagOperation,
        summary='Point the tag at stored bytes by digest, without sending them: {"digest": '
        '"blake3:<hex>"|"sha256:<hex>", "meta": {...}} (rollback: a digest from the history; '
        "a push: the sha256 of a finished /v2 upload to the image, inspected as an upload)",
        status_code=201,
        response_headers=CREATED_HEADERS,
        responses=error_responses(400, 403, 404, 409, 412, 413, 422, 507),
    )
    async def retag(
        self,
        request: Request[Any, Any, Any],
        core: NamedDependency[Core],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
        api_base: NamedDependency[str],
        repo: FromPath[str],
        image: FromPath[str],
        tag: FromPath[str],
    ) -> Response[Envelope]:
        raw = await _small_body(request, settings)  # first: a refusal then leaves none unread
        names = _names(repo, image, tag)
        digest, meta = _retag_request(raw)
        options = await write_options(request, catalog, names, early=False)
        # The sha256 of a finished /v2 upload to this image: a push's commit, its bytes
        # and metadata in one write, recorded as an upload (cloudimg.core.tags).
        # Its commit wakes the containerDisk hashing, as every tag write does (catalog hooks).
        # With scopes the source must be pullable: a name of another team's bytes is no
        # way around its scope (docs/security.md).
        grants = grants_of(request)
        readable = None if grants.unlimited else lambda r, i: grants.allows("pull", r, i)
        path = f"{repo}/{image}"
        try:
            retagged = await core.tags.retag(names, digest, meta, options, readable)
        except PermissionDeniedError:
            audit_write(request, "push", path, refused=f"may not pull the source {digest}")
            raise
        what = "committed upload" if retagged.pushed else "retag"
        audit_write(request, "push", path, f"{what} of {digest} to tag {tag}")
        return created(api_base, repo, image, retagged.ref.digest, retagged.ref.sha256)

    # One function behind both routes, named so it sorts where ``release_immutable`` did:
    # Litestar orders a controller's handlers (and the OpenAPI document) by it.
    async def immutability(
        self,
        request: Request[Any, Any, Any],
        repo: FromPath[str],
        image: FromPath[str],
        tag: FromPath[str],
        core: NamedDependency[Core],
        catalog: NamedDependency[Catalog],
    ) -> Envelope:
        """Both immutability routes: ``PUT`` makes the tag immutable, ``DELETE`` releases it."""
        names = _names(repo, image, tag)
        immutable = request.method == "PUT"
        options = await write_options(request, catalog, names, early=False)
        changed = await core.tags.set_immutable(names, immutable, options)
        what = f"tag {tag} made immutable" if immutable else f"tag {tag} released"
        audit_write(request, "admin", f"{repo}/{image}", what)
        return {"success": True, "data": {"immutable": immutable, "changed": changed}}

    set_immutable = put(
        "/{repo:str}/{image:str}/{tag:str}/immutable",
        operation_id="SetTagImmutable",
        summary="Make the tag immutable: no overwrite, retag or delete until released",
        status_code=200,
        opt={SCOPE_OPT: "admin"},
        responses=error_responses(400, 403, 404, 412),
    )(immutability)
    release_immutable = delete(
        "/{repo:str}/{image:str}/{tag:str}/immutable",
        operation_id="ReleaseTagImmutable",
        summary="Release the tag's immutability (refused while an operator's rule holds it)",
        status_code=200,
        opt={SCOPE_OPT: "admin"},
        responses=error_responses(400, 403, 404, 409, 412),
    )(immutability)
