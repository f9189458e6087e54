"""The one place that maps errors to HTTP statuses and the JSON error shape."""

from __future__ import annotations

import errno
import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from cloudimg.blobstore import BlobStoreUnavailableError
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
    PermissionDeniedError,
    PreconditionFailedError,
    QuotaExceededError,
    RequestTimeoutError,
    TagImmutableError,
    UnavailableError,
)

__all__ = [
    "RETRY_AFTER_SECS",
    "domain_error_of",
    "error_body",
    "error_response",
    "exception_handlers",
    "retry_headers",
    "status_of",
]

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[CloudimgError], int]] = [
    (ImageRefusedError, 422),  # before its base class InvalidArgumentError
    (ImageBlockedError, 403),
    (PermissionDeniedError, 403),
    (QuotaExceededError, 403),  # no retry helps: something must be deleted (docs/quotas.md)
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


RETRY_AFTER_SECS = 10
"""What a 503 asks a client to wait: the catalog's busy timeout and the object store
client's retries have been spent on the request already, so a retry at once would
most likely fail the same way."""


def retry_headers(exc: CloudimgError) -> dict[str, str] | None:
    """``Retry-After`` for an error a later retry may not meet (RFC 9110 15.6.4)."""
    return {"Retry-After": str(RETRY_AFTER_SECS)} if isinstance(exc, UnavailableError) else None


_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def domain_error_of(exc: OSError) -> CloudimgError | None:
    """What an ``OSError`` reaching a face means to a client; None for a bug (500).

    A full volume is 507; a read-only volume and a blob store that does not answer
    (after its client's retries) are 503: the request changed nothing visible (the
    catalog commits after the bytes are placed) and may succeed later.
    """
    if exc.errno in _FULL_DISK_ERRNOS:
        return InsufficientStorageError("the data volume is full")
    if exc.errno == errno.EROFS:
        return UnavailableError("the data volume is read-only")
    if isinstance(exc, BlobStoreUnavailableError):
        reason = exc.strerror or type(exc).__name__
        return UnavailableError("the blob store is unavailable; try again", {"reason": reason})
    return None


def _domain_error(request: Request[Any, Any, Any], exc: CloudimgError) -> Response[Any]:
    status = status_of(exc)
    if isinstance(exc, UnavailableError) and exc.context:
        log.warning("unavailable on %s %s: %s", request.method, request.url.path, exc.context)
    return error_response(status, exc.code, exc.message, exc.context, retry_headers(exc))


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


def _os_error(request: Request[Any, Any, Any], exc: OSError) -> Response[Any]:
    domain = domain_error_of(exc)
    if domain is None:
        return _unexpected_error(request, exc)
    return _domain_error(request, domain)


exception_handlers: ExceptionHandlersMap = {
    CloudimgError: _domain_error,
    HTTPException: _http_error,
    OSError: _os_error,
    Exception: _unexpected_error,
}
