"""Domain errors. The API maps each one to an HTTP status in one place."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyExistsError",
    "BlobCorruptError",
    "ClientDisconnectedError",
    "CloudimgError",
    "DigestMismatchError",
    "ImageBlockedError",
    "ImageRefusedError",
    "InsufficientStorageError",
    "InvalidArgumentError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "QuotaExceededError",
    "RequestTimeoutError",
    "UnavailableError",
]


class CloudimgError(Exception):
    """Base of every error the registry reports to a client."""

    code = "INTERNAL"

    def __init__(self, message: str, context: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.context = context


class InvalidArgumentError(CloudimgError):
    """The request is malformed: a bad name, bad JSON, a missing part."""

    code = "INVALID_ARGUMENT"


class DigestMismatchError(InvalidArgumentError):
    """The uploaded bytes do not have the digest the client announced."""


class NotFoundError(CloudimgError):
    """No such repository, image, tag or digest reference."""

    code = "NOT_FOUND"


class AlreadyExistsError(CloudimgError):
    """The thing to create exists already."""

    code = "ALREADY_EXISTS"


class PermissionDeniedError(CloudimgError):
    """Valid credentials without the scope for this action on this name (``--policy-file``)."""

    code = "PERMISSION_DENIED"


class PreconditionFailedError(CloudimgError):
    """A conditional request's precondition (If-Match, If-Unmodified-Since) is false."""

    code = "FAILED_PRECONDITION"


class PayloadTooLargeError(CloudimgError):
    """A part of the request is larger than the server accepts."""

    code = "RESOURCE_EXHAUSTED"


class InsufficientStorageError(CloudimgError):
    """The data volume has no room for the upload."""

    code = "RESOURCE_EXHAUSTED"


class QuotaExceededError(CloudimgError):
    """The write would take a repository past its quota (``--quota-file``); ``context``
    names the quota and the repository's use."""

    code = "RESOURCE_EXHAUSTED"


class ClientDisconnectedError(CloudimgError):
    """The client went away before its request body was complete."""

    code = "CANCELLED"


class RequestTimeoutError(CloudimgError):
    """The client stopped sending its request body for longer than the server waits."""

    code = "DEADLINE_EXCEEDED"


class UnavailableError(CloudimgError):
    """A dependency (the catalog database) does not answer; retrying may help."""

    code = "UNAVAILABLE"


class BlobCorruptError(CloudimgError):
    """The stored bytes failed an integrity check and are quarantined until uploaded again."""

    code = "DATA_LOSS"


class ImageRefusedError(InvalidArgumentError):
    """The bytes are not an image the registry serves; ``context["rule"]`` names the rule."""

    code = "IMAGE_REFUSED"


class ImageBlockedError(CloudimgError):
    """An operator blocked the stored bytes for an inspection rule; downloads are refused."""

    code = "IMAGE_BLOCKED"


class TagImmutableError(CloudimgError):
    """The tag is immutable (set through the API or by a rule): no overwrite, retag or delete."""

    code = "TAG_IMMUTABLE"
