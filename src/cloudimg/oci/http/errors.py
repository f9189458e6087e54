"""Errors of the ``/v2`` routes in the OCI Distribution spec's shape and codes.

``{"errors": [{"code": ..., "message": ..., "detail": ...}]}``: registry clients (skopeo,
podman, oras) read that shape; ``/reg`` keeps its own (:mod:`cloudimg.api.errors`).
Domain errors keep their status; their code becomes the spec's where one fits, else
stays ours. The slice's own refusals are :class:`cloudimg.oci.errors.OciError`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from cloudimg.api.errors import domain_error_of, retry_headers, status_of
from cloudimg.errors import (
    CloudimgError,
    DigestMismatchError,
    ImageRefusedError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
)
from cloudimg.oci.errors import OciError

__all__ = [
    "oci_error_response",
    "oci_exception_handlers",
    "unrouted_oci_error",
    "with_unrouted_oci",
]

log = logging.getLogger(__name__)


def oci_error_response(
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    entry: dict[str, Any] = {"code": code, "message": message}
    if detail:
        entry["detail"] = detail
    return Response(
        {"errors": [entry]}, status_code=status, media_type=MediaType.JSON, headers=headers
    )


def _oci_error(_request: Request[Any, Any, Any], exc: OciError) -> Response[Any]:
    return oci_error_response(exc.status, exc.code, exc.message, exc.detail, exc.headers)


def _code_of(exc: CloudimgError) -> str:
    if isinstance(exc, DigestMismatchError):
        return "DIGEST_INVALID"
    if isinstance(exc, ImageRefusedError):
        return "MANIFEST_INVALID"  # a pushed disk failed inspection: not a VM disk we serve
    if isinstance(exc, InvalidArgumentError):
        return "UNSUPPORTED"
    if isinstance(exc, NotFoundError):
        return "NAME_UNKNOWN"
    if isinstance(exc, PayloadTooLargeError):
        return "SIZE_INVALID"
    if isinstance(exc, QuotaExceededError):
        return "DENIED"  # a quota of --quota-file (docs/quotas.md)
    if isinstance(exc, PermissionDeniedError):
        return "DENIED"  # a scope of --policy-file (docs/oci.md)
    return exc.code


def _domain_error(request: Request[Any, Any, Any], exc: CloudimgError) -> Response[Any]:
    status = status_of(exc)
    if status >= 500:
        log.warning("%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message)
    message = exc.message
    rule = (exc.context or {}).get("rule") if isinstance(exc, ImageRefusedError) else None
    if rule is not None:  # the spec's code says little: the message names the rule too
        message = f"{message} (rule {rule})"
    return oci_error_response(
        status, _code_of(exc), message, exc.context, headers=retry_headers(exc)
    )


def _os_error(request: Request[Any, Any, Any], exc: OSError) -> Response[Any]:
    domain = domain_error_of(exc)
    if domain is None:
        return _unexpected(request, exc)
    return _domain_error(request, domain)


_ENDPOINT = re.compile(r"/v2/(.+)/(?:manifests/[^/]+|blobs/[^/]+|blobs/uploads/.*|tags/list)")


def with_unrouted_oci(handlers: ExceptionHandlersMap) -> ExceptionHandlersMap:
    """The app's handlers, with routing failures under ``/v2`` answered in the spec's shape
    (they happen before the ``/v2`` router's own handlers could)."""
    fallback = handlers[HTTPException]

    def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        if exc.status_code in (404, 405):
            oci = unrouted_oci_error(request.url.path)
            if oci is not None:
                return oci
        return fallback(request, exc)

    return {**handlers, HTTPException: http_error}


def unrouted_oci_error(path: str) -> Response[Any] | None:
    """The answer to a ``/v2`` path no route takes (the app's 404), in the spec's shape.

    A name that is not ``<repo>/<image>`` before a known endpoint is ``NAME_INVALID``.
    """
    if path != "/v2" and not path.startswith("/v2/"):
        return None
    match = _ENDPOINT.fullmatch(path.rstrip("/"))
    if match:
        name = match.group(1)[:200]
        message = "a repository name here is <repo>/<image>, as in /reg"
        return oci_error_response(400, "NAME_INVALID", message, {"name": name})
    return oci_error_response(404, "NAME_UNKNOWN", "no such endpoint or repository")


_HTTP_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN", 405: "UNSUPPORTED"}


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code >= 500:
        return _unexpected(request, exc)
    passed = ("allow", "www-authenticate")
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() in passed}
    code = _HTTP_CODES.get(exc.status_code, "UNSUPPORTED")
    return oci_error_response(exc.status_code, code, exc.detail, headers=headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # The message of an unexpected error may carry server paths: log it, never send it.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return oci_error_response(500, "INTERNAL", "internal error")


oci_exception_handlers: ExceptionHandlersMap = {
    OciError: _oci_error,
    CloudimgError: _domain_error,
    HTTPException: _http_error,
    OSError: _os_error,
    Exception: _unexpected,
}
