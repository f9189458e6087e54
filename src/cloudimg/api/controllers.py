"""Route handlers of the registry API: parse, call the catalog, render."""

from __future__ import annotations

import os
from typing import Any

from litestar import Controller, Request, Response, delete, get, post, put, route
from litestar.datastructures import State
from litestar.params import SkipValidation
from litestar.response.base import ASGIResponse

from cloudimg.api.conditional import meta_etag_of, write_options
from cloudimg.api.download import etag_of, prepare_download, repr_digest_of
from cloudimg.api.errors import error_response
from cloudimg.api.observer import TRANSFER_OPT
from cloudimg.api.openapi import (
    BINARY_RESPONSES,
    CREATED_HEADERS,
    ImageListView,
    MetaView,
    RawUploadOperation,
    RepoListView,
    TagListView,
    UploadOperation,
    error_responses,
    listing_response,
)
from cloudimg.api.upload import Upload, receiving
from cloudimg.blobstore import BlobStore
from cloudimg.catalog import Catalog, ImageDetails, TagDetails, TagInfo
from cloudimg.config import Settings
from cloudimg.digest import Digest, Reference, parse_digest
from cloudimg.errors import (
    CloudimgError,
    InvalidArgumentError,
)
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name
from cloudimg.oci.digests import ContainerDisks

__all__ = ["HealthController", "ReadinessController", "RegistryController"]

Envelope = dict[str, Any]
Blobs = SkipValidation[BlobStore]
"""The blob store handlers are given (a protocol: no isinstance check on each request)."""


def _ok(data: Any) -> Envelope:
    return {"success": True, "data": data}


async def _upload(
    request: Request[Any, Any, Any],
    catalog: Catalog,
    blobs: BlobStore,
    settings: Settings,
    disks: ContainerDisks,
    path: tuple[str, str, str],
    *,
    raw: bool,
) -> Response[Envelope]:
    """Both upload routes: the same use case, the body read as multipart or raw."""
    repo, image, tag = path
    async with receiving(request, blobs, settings) as receiver:
        names = validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)
        options = await write_options(request, catalog, names)
        await (receiver.receive_raw() if raw else receiver.receive())
        upload = await receiver.commit(catalog, names, options)
    return _created(settings, disks, repo, image, upload)


def _created(
    settings: Settings, disks: ContainerDisks, repo: str, image: str, upload: Upload
) -> Response[Envelope]:
    """An upload's 201, whichever body form brought it."""
    disks.wake()  # hash the containerDisk layer of the new bytes now, not at a pull
    # What was stored, as RFC 9110 has a 201 say it: the digest-pinned URL of the
    # bytes, and their ETag and Repr-Digest as a download of them answers.
    headers = {
        "Location": f"{settings.api_base}/{repo}/{image}/blake3:{upload.staged.blake3}",
        "ETag": etag_of(upload.staged.blake3),
        "Repr-Digest": repr_digest_of(upload.staged.sha256),
    }
    return Response(_ok(None), status_code=201, headers=headers)


def _parse_reference(text: str) -> Reference:
    """A path segment with a colon is a digest; anything else must be a tag name."""
    if ":" not in text:
        return validate_tag_name(text)
    try:
        return parse_digest(text)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc), {"reference": text[:200]}) from None


def _meta_view(info: TagInfo, image_path: str, rule: str | None) -> MetaView:
    return {
        "success": True,
        "data": info.meta,
        "imagePath": image_path,
        "digest": f"blake3:{info.digest}",
        "sha256": f"sha256:{info.sha256}",
        "size": info.size,
        "created": info.created.isoformat(),
        "updated": info.updated.isoformat(),
        "format": info.format,
        "virtual_size": info.virtual_size,
        # Why downloads answer 403 IMAGE_BLOCKED, while an operator blocks the bytes.
        "blocked": None
        if info.blocked is None
        else {"rule": info.blocked.rule, "since": info.blocked.since.isoformat()},
        # Set through the API, or by an operator's rule (``rule``): either refuses writes.
        "immutable": info.immutable or rule is not None,
        "immutable_rule": rule,
    }


MAX_PAGE = 1000
"""Entries a detailed listing answers at most in one page (also its default)."""


def _page_size(limit: int | None) -> int:
    if limit is None:
        return MAX_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgumentError(f"query parameter 'limit' is 1 to {MAX_PAGE}", {"limit": limit})
    return limit


def _page(entries: list[Envelope], page: int, last: str | None) -> Envelope:
    """A detailed listing: ``next`` is the ``after`` of the next page (null: the last page)."""
    return {**_ok(entries), "next": last if len(entries) == page else None}


def _tag_details(row: TagDetails) -> Envelope:
    return {
        "tag": row.tag,
        "digest": f"blake3:{row.digest}",
        "sha256": f"sha256:{row.sha256}",
        "size": row.size,
        "created": row.created.isoformat(),
        "updated": row.updated.isoformat(),
        "immutable": row.immutable,
    }


def _image_details(row: ImageDetails) -> Envelope:
    return {
        "image": row.image,
        "tags": row.tags,
        "size": row.size,
        "updated": row.updated.isoformat(),
    }


class RegistryController(Controller):
    """The ``/reg`` endpoints of the old server, as views over the catalog."""

    @get(
        "/",
        operation_id="GetRepos",
        summary="List repositories",
        responses={
            **listing_response(RepoListView, "The repository names, sorted"),
            **error_responses(),
        },
    )
    async def get_repos(self, catalog: Catalog) -> Envelope:
        return _ok(await catalog.list_repositories())

    @get(
        "/{repo:str}",
        operation_id="GetImages",
        summary="List the images of a repository (details=true: with tag counts, sizes and "
        "times, paged by limit and after)",
        responses={
            **listing_response(ImageListView, "The image names, or a page of image details"),
            **error_responses(400, 404),
        },
    )
    async def get_images(
        self,
        catalog: Catalog,
        repo: str,
        details: bool = False,
        limit: int | None = None,
        after: str | None = None,
    ) -> Envelope:
        repo = validate_repo_name(repo)
        if not details:
            return _ok(await catalog.list_images(repo))
        page = _page_size(limit)
        rows = await catalog.list_image_details(repo, page, after)
        last = rows[-1].image if rows else None
        return _page([_image_details(row) for row in rows], page, last)

    @get(
        "/{repo:str}/{image:str}",
        operation_id="GetImageTags",
        summary="List the tags of an image (details=true: with digests, sizes and times, "
        "paged by limit and after)",
        responses={
            **listing_response(TagListView, "The tag names, or a page of tag details"),
            **error_responses(400, 404),
        },
    )
    async def get_image_tags(
        self,
        catalog: Catalog,
        repo: str,
        image: str,
        details: bool = False,
        limit: int | None = None,
        after: str | None = None,
    ) -> Envelope:
        names = validate_repo_name(repo), validate_image_name(image)
        if not details:
            return _ok(await catalog.list_tags(*names))
        page = _page_size(limit)
        rows = await catalog.list_tag_details(*names, page, after)
        last = rows[-1].tag if rows else None
        return _page([_tag_details(row) for row in rows], page, last)

    @route(
        "/{repo:str}/{image:str}/{tag:str}",
        http_method=["GET", "HEAD"],
        # GET keeps the old operationId; HEAD needs one of its own.
        operation_id=lambda _handler, method, _path: "GetImage" if method == "GET" else "HeadImage",
        summary="Download an image by tag or by digest (blake3:<hex> or sha256:<hex>)",
        media_type="application/octet-stream",
        responses={**BINARY_RESPONSES, **error_responses(400, 403, 404, 412, 416)},
        opt={TRANSFER_OPT: "download"},
    )
    async def get_image(
        self,
        request: Request[Any, Any, Any],
        catalog: Catalog,
        repo: str,
        image: str,
        tag: str,
    ) -> ASGIResponse:
        validate_repo_name(repo)
        validate_image_name(image)
        reference = _parse_reference(tag)
        ref, reader = await catalog.open_blob(repo, image, reference)
        return await prepare_download(request, ref, reader, immutable=isinstance(reference, Digest))

    @route(
        "/{repo:str}/{image:str}/{tag:str}/meta",
        http_method=["GET", "HEAD"],
        # GET keeps the old operationId; HEAD needs one of its own. A HEAD answer has
        # the GET's headers and no body: the HTTP server drops the body of every HEAD.
        operation_id=lambda _handler, method, _path: (
            "GetImageMeta" if method == "GET" else "HeadImageMeta"
        ),
        summary="Metadata of a tag, with its digests, size, format and virtual size",
        responses=error_responses(400, 404),
    )
    async def get_image_meta(
        self, request: Request[Any, Any, Any], catalog: Catalog, repo: str, image: str, tag: str
    ) -> Response[MetaView]:
        names = validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)
        info = await catalog.get_tag(*names)
        image_path = request.url.path.removesuffix("/meta")
        # The ETag a conditional write (If-Match) may send to catch any change of the tag.
        view = _meta_view(info, image_path, catalog.immutable_by_rule(names))
        return Response(view, headers={"ETag": meta_etag_of(info)})

    @post(
        "/{repo:str}/{image:str}/{tag:str}",
        operation_id="PostImage",
        operation_class=UploadOperation,
        summary="Upload an image (multipart parts 'meta' and 'img'); overwrites the tag "
        "(If-Match, If-None-Match: * make it conditional)",
        request_max_body_size=None,
        status_code=201,
        response_headers=CREATED_HEADERS,
        responses=error_responses(400, 408, 409, 412, 413, 422, 507),
        opt={TRANSFER_OPT: "upload"},
    )
    async def post_image(
        self,
        request: Request[Any, Any, Any],
        catalog: Catalog,
        blobs: Blobs,
        settings: Settings,
        disks: SkipValidation[ContainerDisks],
        repo: str,
        image: str,
        tag: str,
    ) -> Response[Envelope]:
        return await _upload(
            request, catalog, blobs, settings, disks, (repo, image, tag), raw=False
        )

    @put(
        "/{repo:str}/{image:str}/{tag:str}",
        operation_id="PutImage",
        operation_class=RawUploadOperation,
        summary="Upload an image: the body is the image, the metadata the Cloudimg-Meta "
        "header; overwrites the tag (If-Match, If-None-Match: * make it conditional)",
        request_max_body_size=None,
        status_code=201,
        response_headers=CREATED_HEADERS,
        responses=error_responses(400, 408, 409, 412, 413, 422, 507),
        opt={TRANSFER_OPT: "upload"},
    )
    async def put_image(
        self,
        request: Request[Any, Any, Any],
        catalog: Catalog,
        blobs: Blobs,
        settings: Settings,
        disks: SkipValidation[ContainerDisks],
        repo: str,
        image: str,
        tag: str,
    ) -> Response[Envelope]:
        return await _upload(request, catalog, blobs, settings, disks, (repo, image, tag), raw=True)

    @delete(
        "/{repo:str}/{image:str}/{tag:str}",
        operation_id="DeleteTag",
        summary="Delete a tag (its history stays unless purge=history); its blob goes when "
        "no tag or retained history entry references it",
        status_code=200,
        responses=error_responses(400, 404, 409, 412, 507),
    )
    async def delete_tag(
        self,
        request: Request[Any, Any, Any],
        catalog: Catalog,
        repo: str,
        image: str,
        tag: str,
        purge: str | None = None,
    ) -> Envelope:
        names = validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)
        if purge not in (None, "history"):
            raise InvalidArgumentError("query parameter 'purge' takes only 'history'")
        options = await write_options(request, catalog, names, early=False)
        await catalog.delete_tag(*names, options, purge_history=purge == "history")
        return _ok(None)


class HealthController(Controller):
    """Liveness, never behind a prefix."""

    path = "/healthz"

    @get("/", operation_id="ReadinessProbe", summary="Liveness probe")
    async def healthz(self, state: State) -> Envelope:
        return _ok(None)


class ReadinessController(Controller):
    """Readiness, never behind a prefix: the catalog answers and the data root takes files."""

    path = "/readyz"

    @get(
        "/",
        operation_id="GetReadiness",
        summary="Readiness probe: the catalog can begin a write and the data root is writable",
        responses=error_responses(),
    )
    async def readyz(self, catalog: Catalog, blobs: Blobs) -> Response[Any]:
        problems: dict[str, str] = {}
        try:
            await catalog.check_writable()
        except Exception as exc:  # readiness reports what is wrong, it never fails
            reason = (
                exc.context.get("reason")
                if isinstance(exc, CloudimgError) and exc.context
                else None
            )
            problems["catalog"] = str(reason or type(exc).__name__)
        free: int | None = None
        try:
            await blobs.probe_writable()
            free = await blobs.free_space()
        except OSError as exc:
            problems["data_root"] = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        if problems:
            reasons = "; ".join(f"{what}: {why}" for what, why in problems.items())
            return error_response(503, "UNAVAILABLE", f"not ready: {reasons}", problems)
        return Response(_ok({"catalog": "ok", "data_root": "ok", "free_bytes": free}))
