"""The ``/reg`` handlers: parse, call the catalog's reads or the registry core, render.

Reads (listings, downloads, ``/meta``) call the catalog; writes (the two uploads, a
tag's delete) call the registry core (:mod:`cloudimg.core`), the uploads through
their body forms (:mod:`cloudimg.api.reg.uploads`).
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Controller, Request, Response, delete, get, post, put, route
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, SkipValidation
from litestar.response.base import ASGIResponse

from cloudimg.api.auth import audit_write
from cloudimg.api.conditional import meta_etag_of, write_options
from cloudimg.api.download import (
    Redirects,
    prepare_download,
    prepare_representation,
    representation_of,
)
from cloudimg.api.meta_query import QUERY_PARAMETERS, meta_query, query_cursor
from cloudimg.api.observer import TRANSFER_OPT
from cloudimg.api.openapi import (
    BINARY_RESPONSES,
    CREATED_HEADERS,
    ImageListView,
    MetaView,
    RawUploadOperation,
    RepoListView,
    TagListView,
    TagQueryView,
    UploadOperation,
    error_responses,
    listing_response,
)
from cloudimg.api.policy import grants_of
from cloudimg.api.reg.uploads import created, receiving
from cloudimg.blobstore import BlobReader, BlobStore
from cloudimg.catalog import (
    Catalog,
    ImageDetails,
    MetaQuery,
    TagDetails,
    TagInfo,
)
from cloudimg.config import Settings
from cloudimg.core import RegistryCore
from cloudimg.digest import Digest, Reference, parse_digest
from cloudimg.errors import InvalidArgumentError, NotFoundError
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name

__all__ = ["RegistryController"]

Envelope = dict[str, Any]
Core = SkipValidation[RegistryCore]
"""The registry core handlers are given (no validation of it on each request)."""
Blobs = SkipValidation[BlobStore]
_TAG_PATH = "/{repo:str}/{image:str}/{tag:str}"
_UPLOAD_ROUTE: dict[str, Any] = {
    "request_max_body_size": None,
    "status_code": 201,
    "response_headers": CREATED_HEADERS,
    "responses": error_responses(400, 403, 408, 409, 412, 413, 422, 507),
    "opt": {TRANSFER_OPT: "upload"},
}
"""What both upload routes (multipart ``POST``, raw ``PUT``) declare alike."""


def _ok(data: Any) -> Envelope:
    return {"success": True, "data": data}


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


_LIST_ITEM = re.compile(r"^(meta|has)\[\d{1,3}\]$")


def _meta_query(request: Request[Any, Any, Any]) -> MetaQuery:
    """The conditions of ``GET /reg/_query``, refused whole (400) at the first bad one.

    Also refuses a parameter it does not know: a mistyped ``has`` or ``mta`` must not
    widen the query to every tag.
    """
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        # openapi-to-graphql (qlkube) sends a list argument as meta[0]=…&meta[1]=…
        params.setdefault(_LIST_ITEM.sub(r"\1", name), []).append(value)
    unknown = sorted(set(params) - QUERY_PARAMETERS)
    if unknown:
        raise InvalidArgumentError(
            "unknown query parameter; the query takes meta=key=value, has=key, "
            "repo_prefix, image_prefix, limit and after",
            {"parameters": [name[:100] for name in unknown[:10]]},
        )
    return meta_query(params)


def _tag_match(info: TagInfo) -> Envelope:
    details = TagDetails(
        info.tag, info.digest, info.sha256, info.size, info.created, info.updated, info.immutable
    )
    return {"repo": info.repo, "image": info.image, **_tag_details(details), "meta": info.meta}


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
    async def get_repos(
        self, request: Request[Any, Any, Any], catalog: NamedDependency[Catalog]
    ) -> Envelope:
        grants = grants_of(request)  # only what the caller may pull (--policy-file)
        return _ok([r for r in await catalog.reads.list_repositories() if grants.lists_repo(r)])

    @get(
        "/_query",
        operation_id="QueryTags",
        summary="Find tags by metadata (meta=key=value, has=key; repeatable, all must hold) "
        "and name prefixes, paged by limit and after",
        description="A path no repository can take (names start with a-z or 0-9). Each "
        "`meta` is `key=value` (split at the first `=`), equal to the metadata's value; "
        "each `has` a key the metadata holds. At most 16 conditions, keys and values of at "
        "most 256 characters; any other parameter is a 400.",
        responses={
            **listing_response(TagQueryView, "A page of the matching tags, with details"),
            **error_responses(400),
        },
    )
    async def query_tags(
        self,
        request: Request[Any, Any, Any],
        catalog: NamedDependency[Catalog],
        meta: FromQuery[list[str] | None] = None,
        has: FromQuery[list[str] | None] = None,
        repo_prefix: FromQuery[str | None] = None,
        image_prefix: FromQuery[str | None] = None,
        limit: FromQuery[int | None] = None,
        after: FromQuery[str | None] = None,
    ) -> Envelope:
        # The declared parameters describe the query in OpenAPI (and qlkube's schema);
        # the request's own parameters are read once more to refuse what is not declared.
        wanted = _meta_query(request)
        page = _page_size(limit)
        rows = await catalog.reads.query_tags(wanted, page, query_cursor(after))
        last = f"{rows[-1].repo}/{rows[-1].image}/{rows[-1].tag}" if rows else None
        # Only what the caller may pull (--policy-file); ``next`` follows the rows read.
        grants = grants_of(request)
        shown = [_tag_match(row) for row in rows if grants.allows("pull", row.repo, row.image)]
        return {**_ok(shown), "next": last if len(rows) == page else None}

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
        request: Request[Any, Any, Any],
        catalog: NamedDependency[Catalog],
        repo: FromPath[str],
        details: FromQuery[bool] = False,
        limit: FromQuery[int | None] = None,
        after: FromQuery[str | None] = None,
    ) -> Envelope:
        repo = validate_repo_name(repo)
        grants = grants_of(request)  # only what the caller may pull (--policy-file)
        if not grants.lists_repo(repo):
            # As for a repository that does not exist: an empty list would tell a caller
            # which names exist where it may pull nothing (the root listing hides them).
            raise NotFoundError("repository not found", {"repo": repo})
        if not details:
            images = await catalog.reads.list_images(repo)
            return _ok([name for name in images if grants.allows("pull", repo, name)])
        page = _page_size(limit)
        rows = await catalog.reads.list_image_details(repo, page, after)
        last = rows[-1].image if rows else None
        shown = [_image_details(r) for r in rows if grants.allows("pull", repo, r.image)]
        return {**_ok(shown), "next": last if len(rows) == page else None}

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
        catalog: NamedDependency[Catalog],
        repo: FromPath[str],
        image: FromPath[str],
        details: FromQuery[bool] = False,
        limit: FromQuery[int | None] = None,
        after: FromQuery[str | None] = None,
    ) -> Envelope:
        names = validate_repo_name(repo), validate_image_name(image)
        if not details:
            return _ok(await catalog.reads.list_tags(*names))
        page = _page_size(limit)
        rows = await catalog.reads.list_tag_details(*names, page, after)
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
        catalog: NamedDependency[Catalog],
        blobs: NamedDependency[Blobs],
        redirects: NamedDependency[SkipValidation[Redirects]],
        repo: FromPath[str],
        image: FromPath[str],
        tag: FromPath[str],
    ) -> ASGIResponse:
        validate_repo_name(repo)
        validate_image_name(image)
        reference = _parse_reference(tag)
        immutable = isinstance(reference, Digest)
        if redirects.enabled and request.method == "GET":
            # The same lookup as open_blob (blocked, quarantined, a crash's trash put
            # back), without opening the bytes the store will most likely send itself.
            ref = await catalog.reads.resolve(repo, image, reference, present=True)

            async def open_reader() -> BlobReader | None:
                return await blobs.open(ref.digest)

            rep = representation_of(ref, immutable)
            return await prepare_representation(
                request, rep, open_reader, redirect=redirects.of(ref.digest, seen=True)
            )
        ref, reader = await catalog.reads.open_blob(repo, image, reference)
        return await prepare_download(request, ref, reader, immutable=immutable)

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
        self,
        request: Request[Any, Any, Any],
        catalog: NamedDependency[Catalog],
        repo: FromPath[str],
        image: FromPath[str],
        tag: FromPath[str],
    ) -> Response[MetaView]:
        names = validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)
        info = await catalog.reads.get_tag(*names)
        image_path = request.url.path.removesuffix("/meta")
        # The ETag a conditional write (If-Match) may send to catch any change of the tag.
        view = _meta_view(info, image_path, catalog.tags.immutable_by_rule(names))
        return Response(view, headers={"ETag": meta_etag_of(info)})

    # One function behind both routes, named so it sorts where ``post_image`` did:
    # Litestar orders a controller's handlers (and the OpenAPI document) by it.
    async def upload(
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
        """Both upload routes: the same use case, the body read as multipart (``POST``) or raw."""
        async with receiving(request, core.uploads, settings.read_body_timeout_secs) as receiver:
            names = validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)
            options = await write_options(request, catalog, names)
            form = receiver.raw if request.method == "PUT" else receiver.multipart
            reception, body = await form(names[0])
            upload = await reception.receive(body)
            await reception.commit(names, options)
        # The commit woke the containerDisk hashing of the new bytes (catalog hooks).
        what = f"upload of blake3:{upload.staged.blake3} to tag {tag}"
        audit_write(request, "push", f"{repo}/{image}", what)
        return created(api_base, repo, image, upload.staged.blake3, upload.staged.sha256)

    post_image = post(
        _TAG_PATH,
        operation_id="PostImage",
        operation_class=UploadOperation,
        summary="Upload an image (multipart parts 'meta' and 'img'); overwrites the tag "
        "(If-Match, If-None-Match: * make it conditional)",
        **_UPLOAD_ROUTE,
    )(upload)
    put_image = put(
        _TAG_PATH,
        operation_id="PutImage",
        operation_class=RawUploadOperation,
        summary="Upload an image: the body is the image, the metadata the Cloudimg-Meta "
        "header; overwrites the tag (If-Match, If-None-Match: * make it conditional)",
        **_UPLOAD_ROUTE,
    )(upload)

    @delete(
        "/{repo:str}/{image:str}/{tag:str}",
        operation_id="DeleteTag",
        summary="Delete a tag (its history stays unless purge=history); its blob goes when "
        "no tag or retained history entry references it",
        status_code=200,
        responses=error_responses(400, 403, 404, 409, 412, 507),
    )
    async def delete_tag(
        self,
        request: Request[Any, Any, Any],
        core: NamedDependency[Core],
        catalog: NamedDependency[Catalog],
        repo: FromPath[str],
        image: FromPath[str],
        tag: FromPath[str],
        purge: FromQuery[str | None] = None,
    ) -> Envelope:
        names = validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)
        if purge not in (None, "history"):
            raise InvalidArgumentError("query parameter 'purge' takes only 'history'")
        options = await write_options(request, catalog, names, early=False)
        await core.tags.delete(names, options, purge_history=purge == "history")
        what = f"tag {tag}" + (" and its history (purge)" if purge == "history" else "")
        audit_write(request, "delete", f"{repo}/{image}", what)
        return _ok(None)
