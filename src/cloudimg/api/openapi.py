"""OpenAPI details the handlers' signatures cannot express (the upload reads the raw stream)."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

__all__ = ["UploadOperation"]

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
                },
            )
        )
    },
)


@dataclass
class UploadOperation(Operation):
    """The PostImage operation, with its multipart request body."""

    def __post_init__(self) -> None:
        self.request_body = _UPLOAD_BODY
