"""OpenAPI details the handlers' signatures cannot express.

The uploads read the raw stream (their multipart and raw bodies are declared here) and
parse their query parameters themselves (``UPLOAD_QUERY``), the download
answers with bytes, and every error has the JSON error shape of ``ErrorBody``: each
handler lists the error statuses it can answer with (``error_responses``), so a
client generated from the document, or schemathesis, knows every response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from litestar.datastructures import ResponseHeader
from litestar.enums import ParamType
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import KwargDefinition

from cloudimg.api.reg.uploads import DIGEST_PARAMETER, FORMAT_PARAMETER
from cloudimg.digest import ALGORITHMS
from cloudimg.images import KNOWN_FORMATS

__all__ = [
    "BINARY_RESPONSES",
    "CREATED_HEADERS",
    "UPLOAD_QUERY",
    "BlockedView",
    "CloudEventView",
    "ErrorBody",
    "EventListView",
    "ImageDetailsView",
    "ImageListView",
    "MetaView",
    "RawUploadOperation",
    "RepoListView",
    "RetagOperation",
    "TagDetailsView",
    "TagListView",
    "TagMatchView",
    "TagQueryView",
    "UploadOperation",
    "error_responses",
    "listing_response",
]


class _ErrorFields(TypedDict):
    status: str
    """A gRPC-style code: INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE..."""
    error: str
    """What went wrong, for a human; never a server path."""


class ErrorBody(_ErrorFields, total=False):
    """The JSON error shape: ``{"status": "<CODE>", "error": "<message>"[, "context": {}]}``.

    ``total=False`` rather than ``NotRequired``: under ``from __future__ import
    annotations`` Python 3.11 does not see ``NotRequired`` in a string annotation, and
    the schema would call ``context`` required (errors Litestar raises have none).
    """

    context: dict[str, Any]
    """Details: the offending name, the limit, the size of the image..."""


def _described(text: str) -> KwargDefinition:
    return KwargDefinition(description=text)


class BlockedView(TypedDict):
    """Why an image's downloads are refused: the rule its bytes break, since when."""

    rule: Annotated[str, _described("The image safety rule, e.g. qcow2-backing-file")]
    since: Annotated[str, _described("When the operator blocked the image (ISO 8601)")]


class MetaView(TypedDict):
    """What ``GET …/{tag}/meta`` answers: the tag's metadata, digests, size and format."""

    success: bool
    data: Annotated[dict[str, str], _described("The metadata uploaded with the image")]
    imagePath: str
    digest: Annotated[str, _described("blake3:<hex> of the bytes")]
    sha256: Annotated[str, _described("sha256:<hex> of the bytes")]
    size: Annotated[int, _described("Bytes stored")]
    created: str
    updated: str
    format: Annotated[
        str | None,
        _described(
            "The format inspection found, as `qemu-img -f` takes it (raw, qcow2, vmdk, vpc, "
            "vhdx, vdi, iso): pass it to qemu-img; null for bytes stored before inspection"
        ),
    ]
    virtual_size: Annotated[
        int | None,
        _described(
            "Bytes of the disk the image describes (raw and iso: the file's length); null "
            "for bytes stored before inspection"
        ),
    ]
    blocked: Annotated[
        BlockedView | None,
        _described(
            "Set while an operator blocks the image (its downloads answer 403 "
            "IMAGE_BLOCKED, naming the rule); null when it is served"
        ),
    ]
    immutable: Annotated[
        bool,
        _described(
            "Whether the tag is immutable (no overwrite, retag or delete): made so with "
            "PUT …/immutable, or protected by an operator's rule (immutable_rule)"
        ),
    ]
    immutable_rule: Annotated[
        str | None,
        _described(
            "The operator's --immutable-tags pattern that protects the tag (it cannot be "
            "released while the rule stands); null when none does"
        ),
    ]


_ERROR_DESCRIPTIONS = {
    400: "INVALID_ARGUMENT: a bad name, body, metadata, digest or reference",
    403: "PERMISSION_DENIED: the credentials lack the scope for the action on the name "
    "(--policy-file); IMAGE_BLOCKED: an operator blocked the image for the safety rule "
    "context.rule; RESOURCE_EXHAUSTED: the write would take the repository past its "
    "quota (--quota-file; context names the quota and the use)",
    404: "NOT_FOUND: no such repository, image, tag or digest reference",
    408: "DEADLINE_EXCEEDED: the request body stalled longer than the server waits",
    409: "TAG_IMMUTABLE: the tag is immutable (API or rule): no overwrite, retag or delete",
    412: "FAILED_PRECONDITION: If-Match, If-None-Match: * or If-Unmodified-Since is false",
    413: "RESOURCE_EXHAUSTED: the image or its metadata is larger than the server accepts",
    416: "OUT_OF_RANGE: the range starts past the end (context.size is the image size)",
    422: "IMAGE_REFUSED: the image breaks an inspection rule (context.rule names it; "
    "nothing was stored)",
    500: "INTERNAL (a bug, see the server log) or DATA_LOSS (stored bytes failed a check)",
    503: "UNAVAILABLE: the catalog database is locked or unreachable; retry",
    507: "RESOURCE_EXHAUSTED: the data volume is full; nothing was stored",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses with the JSON error shape for ``statuses`` (500 and 503 always)."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            description=_ERROR_DESCRIPTIONS[status],
            generate_examples=False,
        )
        for status in sorted({*statuses, 500, 503})
    }


BINARY_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(
        data_container=bytes,
        description="The image bytes (HEAD: the headers only)",
        media_type="application/octet-stream",
        generate_examples=False,
    ),
    206: ResponseSpec(
        data_container=bytes,
        description="The requested range of the image bytes, with Content-Range",
        media_type="application/octet-stream",
        generate_examples=False,
    ),
    304: ResponseSpec(data_container=None, description="Not modified (If-None-Match matched)"),
    # Documented so that a client generated from the document expects it; qlkube's
    # GraphQL takes the 200 (docs/configuration.md, "Downloads from the object store").
    307: ResponseSpec(
        data_container=None,
        description="With --redirect-downloads (GET only): the bytes are at Location, a "
        "presigned URL of the object store valid for --redirect-expiry-secs; ETag and "
        "Repr-Digest name them",
    ),
}

CREATED_HEADERS = [
    ResponseHeader(
        name="Location",
        description="The digest-pinned URL of the stored bytes (…/{image}/blake3:<hex>)",
        required=True,
        documentation_only=True,
    ),
    ResponseHeader(
        name="ETag",
        description='The ETag a download of the bytes answers with: "blake3:<hex>"',
        required=True,
        documentation_only=True,
    ),
    ResponseHeader(
        name="Repr-Digest",
        description="The sha-256 of the bytes (RFC 9530): sha-256=:<base64>:",
        required=True,
        documentation_only=True,
    ),
]
"""Headers of the upload's 201, declared for the OpenAPI document (the handler sets them)."""

_UPLOAD_BODY = RequestBody(
    required=True,
    description="The image and its metadata; the `img` part is streamed to disk as it arrives.",
    content={
        "multipart/form-data": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["meta", "img"],
                properties={
                    "meta": Schema(
                        type=OpenAPIType.STRING,
                        description='A JSON object whose values are strings, e.g. {"os":"ubuntu"}',
                    ),
                    "img": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                    "format": Schema(
                        type=OpenAPIType.STRING,
                        description="The image format the upload declares (as the `format` "
                        "query parameter; both given, they must agree): the image is refused "
                        "(422, rule format-mismatch) unless inspection finds it",
                    ),
                },
            )
        )
    },
)


UPLOAD_QUERY = [
    Parameter(
        name=DIGEST_PARAMETER,
        param_in=ParamType.QUERY,
        required=False,
        description="The digest the uploaded bytes must have, blake3:<hex> or sha256:<hex> "
        "(400 and nothing stored when they do not); it may repeat "
        "(?digest=blake3:<hex>&digest=sha256:<hex>), and every one given must match",
        schema=Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=OpenAPIType.STRING,
                pattern=f"^({'|'.join(ALGORITHMS)}):[0-9a-f]{{64}}$",
            ),
        ),
        style="form",
        explode=True,
    ),
    Parameter(
        name=FORMAT_PARAMETER,
        param_in=ParamType.QUERY,
        required=False,
        description="The image format the upload declares (qemu-img's name; vhd is vpc): "
        "the image is refused (422, rule format-mismatch) unless inspection finds that "
        "format; at most once",
        schema=Schema(type=OpenAPIType.STRING, enum=sorted(KNOWN_FORMATS | {"vhd"})),
    ),
]
"""The query parameters of both uploads, parsed by ``cloudimg.api.reg.uploads.UploadQuery``
(not handler parameters: a bad one must be the upload's own 400, after its body guard)."""


_CREATED_ORDER = {header.name: number for number, header in enumerate(CREATED_HEADERS)}


@dataclass
class _CreatingOperation(Operation):
    """An operation whose 201 carries ``CREATED_HEADERS``, listed in their declared order.

    Litestar collects a route's response headers in a frozenset, so their order in the
    document followed the hash seed and changed from one process to the next.
    """

    def __post_init__(self) -> None:
        created = (self.responses or {}).get("201")
        if isinstance(created, OpenAPIResponse) and created.headers:
            created.headers = dict(
                sorted(
                    created.headers.items(),
                    key=lambda item: _CREATED_ORDER.get(item[0], len(_CREATED_ORDER)),
                )
            )


@dataclass
class UploadOperation(_CreatingOperation):
    """The PostImage operation, with its multipart request body and query parameters."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = _UPLOAD_BODY
        self.parameters = [*(self.parameters or []), *UPLOAD_QUERY]


_RAW_UPLOAD_BODY = RequestBody(
    required=True,
    description="The image bytes themselves, streamed to disk as they arrive.",
    content={
        "application/octet-stream": OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        )
    },
)

_META_HEADER = Parameter(
    name="Cloudimg-Meta",
    param_in=ParamType.HEADER,
    required=False,
    description='The metadata: a JSON object whose values are strings, e.g. {"os":"ubuntu"} '
    "(UTF-8, at most 64 KiB; absent: none), as the multipart upload's `meta` part",
    schema=Schema(type=OpenAPIType.STRING),
)


@dataclass
class RawUploadOperation(_CreatingOperation):
    """The PutImage operation: the image as the body, the metadata in a header."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = _RAW_UPLOAD_BODY
        self.parameters = [*(self.parameters or []), *UPLOAD_QUERY, _META_HEADER]


_RETAG_BODY = RequestBody(
    required=True,
    description="The stored bytes to point the tag at, and optionally its metadata.",
    content={
        "application/json": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["digest"],
                properties={
                    "digest": Schema(
                        type=OpenAPIType.STRING,
                        description="blake3:<64 hex> or sha256:<64 hex> of stored bytes",
                    ),
                    "meta": Schema(
                        type=OpenAPIType.OBJECT,
                        description="String values; absent: what the tag last had with those bytes",
                        additional_properties=Schema(type=OpenAPIType.STRING),
                    ),
                },
            )
        )
    },
)


@dataclass
class RetagOperation(_CreatingOperation):
    """The RetagImage operation, with its JSON request body (read by the handler itself)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = _RETAG_BODY


# -- the listings ------------------------------------------------------------------------
# Their handlers build plain dicts; these views describe the answers for the document,
# so that a client generated from it (qlkube's GraphQL types above all) gets their
# fields rather than an object of anything.


class RepoListView(TypedDict):
    """What ``GET /reg`` answers: the repository names."""

    success: bool
    data: Annotated[list[str], _described("The repository names, sorted")]


class ImageDetailsView(TypedDict):
    """An image of ``GET /reg/{repo}?details=true``."""

    image: str
    tags: Annotated[int, _described("How many tags the image has")]
    size: Annotated[int, _described("The sum of its tags' sizes (shared bytes counted per tag)")]
    updated: Annotated[str, _described("When a tag of the image last changed (ISO 8601)")]


class TagDetailsView(TypedDict):
    """A tag of ``GET /reg/{repo}/{image}?details=true``."""

    tag: str
    digest: Annotated[str, _described("blake3:<hex> of the bytes")]
    sha256: Annotated[str, _described("sha256:<hex> of the bytes")]
    size: Annotated[int, _described("Bytes stored")]
    created: str
    updated: str
    immutable: bool


class TagMatchView(TagDetailsView):
    """A tag of ``GET /reg/_query``: a detailed listing's fields, its names and metadata."""

    repo: str
    image: str
    meta: Annotated[dict[str, str], _described("The metadata uploaded with the image")]


class TagQueryView(TypedDict):
    """What ``GET /reg/_query`` answers: a page of the tags the query matches."""

    success: bool
    data: Annotated[
        list[TagMatchView], _described("The matching tags, sorted by repo, image and tag")
    ]
    next: Annotated[
        str | None,
        _described("The `after` of the next page (repo/image/tag); null on the last page"),
    ]


class CloudEventView(TypedDict):
    """One change event, CloudEvents 1.0 in structured mode (docs/events.md)."""

    specversion: Annotated[str, _described("1.0")]
    id: Annotated[str, _described("Unique per source (a UUID); receivers deduplicate by it")]
    source: Annotated[str, _described("The registry")]
    type: Annotated[str, _described("io.cloudimg.tag.created, io.cloudimg.gc.run, ...")]
    subject: Annotated[str, _described("repo/image:tag, blake3:<hex> of a blob, or gc")]
    time: Annotated[str, _described("When the change was made (RFC 3339)")]
    datacontenttype: Annotated[str, _described("application/json")]
    sequence: Annotated[int, _described("The event's place in the registry's order")]
    data: Annotated[
        dict[str, Any], _described("digest, sha256, size, format, metadata, actor, ...")
    ]


class EventListView(TypedDict):
    """What ``GET /reg/_events`` answers: the events after the cursor, oldest first."""

    success: bool
    data: Annotated[list[CloudEventView], _described("The events, in their order")]
    next: Annotated[int, _described("The `after` of the next request")]


class _ImageListFields(TypedDict):
    success: bool
    data: Annotated[
        list[str | ImageDetailsView],
        _described("The image names, sorted; with details=true, an object for each image"),
    ]


class ImageListView(_ImageListFields, total=False):
    """What ``GET /reg/{repo}`` answers: the image names, or with details=true a page of them."""

    next: Annotated[
        str | None,
        _described("details=true only: the `after` of the next page; null on the last page"),
    ]


class _TagListFields(TypedDict):
    success: bool
    data: Annotated[
        list[str | TagDetailsView],
        _described("The tag names, sorted; with details=true, an object for each tag"),
    ]


class TagListView(_TagListFields, total=False):
    """What ``GET /reg/{repo}/{image}`` answers: the tag names, or with details=true a page."""

    next: Annotated[
        str | None,
        _described("details=true only: the `after` of the next page; null on the last page"),
    ]


def listing_response(view: type[Any], description: str) -> dict[int, ResponseSpec]:
    """The 200 of a listing, described by ``view`` (its handler returns a plain dict)."""
    return {
        200: ResponseSpec(data_container=view, description=description, generate_examples=False)
    }
