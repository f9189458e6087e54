"""The one place that maps errors to HTTP statuses and the JSON error shape."""

from __future__ import annotations

import errno
import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from cloudimg.errors import (
    AlreadyExistsError,
    BlobCorruptError,
    ClientDisconnectedError,
    CloudimgError,
    ImageBlockedError,
    ImageRefusedError,
    InsufficientStorageError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    PreconditionFailedError,
    RequestTimeoutError,
    TagImmutableError,
    UnavailableError,
)

__all__ = ["error_body", "error_response", "exception_handlers", "status_of"]

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[CloudimgError], int]] = [
    (ImageRefusedError, 422),  # before its base class InvalidArgumentError
    (ImageBlockedError, 403),
    (InvalidArgumentError, 400),
    (NotFoundError, 404),
    (AlreadyExistsError, 409),
    (TagImmutableError, 409),
    (PreconditionFailedError, 412),
    (PayloadTooLargeError, 413),
    (InsufficientStorageError, 507),
    (UnavailableError, 503),
    (RequestTimeoutError, 408),
    (ClientDisconnectedError, 499),  # nginx's "client closed request": nobody reads it
    (BlobCorruptError, 500),
]
# Client-error statuses Litestar raises itself (routing, method, body limits) and our
# codes for them; its 5xx are answered as unexpected errors.
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    408: "DEADLINE_EXCEEDED",
    415: "INVALID_ARGUMENT",
    431: "RESOURCE_EXHAUSTED",
}


def error_response(
    status: int,
    code: str,
    message: str,
    context: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    """Render the JSON error body (``error_body``) with ``status``."""
    body = error_body(code, message, context)
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def error_body(code: str, message: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON error shape: ``{"status": code, "error": message[, "context": {...}]}``."""
    body: dict[str, Any] = {"status": code, "error": message}
    if context:
        body["context"] = context
    return body


def status_of(exc: CloudimgError) -> int:
    """The HTTP status of a domain error."""
    return next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)


def _domain_error(request: Request[Any, Any, Any], exc: CloudimgError) -> Response[Any]:
    status = status_of(exc)
    if isinstance(exc, UnavailableError) and exc.context:
        log.warning("unavailable on %s %s: %s", request.method, request.url.path, exc.context)
    return error_response(status, exc.code, exc.message, exc.context)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return _unexpected_error(request, exc)
    code = _HTTP_CODES.get(status, "INVALID_ARGUMENT")
    message = exc.detail
    passed = ("allow", "www-authenticate")
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() in passed}
    return error_response(status, code, message, headers=headers)


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # The message of an unexpected error may carry server paths: log it, never send it.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "INTERNAL", "internal error")


_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _os_error(request: Request[Any, Any, Any], exc: OSError) -> Response[Any]:
    if exc.errno in _FULL_DISK_ERRNOS:
        return error_response(507, "RESOURCE_EXHAUSTED", "the data volume is full")
    if exc.errno == errno.EROFS:
        return error_response(503, "UNAVAILABLE", "the data volume is read-only")
    return _unexpected_error(request, exc)


exception_handlers: ExceptionHandlersMap = {
    CloudimgError: _domain_error,
    HTTPException: _http_error,
    OSError: _os_error,
    Exception: _unexpected_error,
}
