"""What can go wrong for a client, each with the exit code the ``cloudimg`` command gives."""

from __future__ import annotations

__all__ = [
    "ClientError",
    "ConnectionFailedError",
    "NotFoundError",
    "RefusedError",
    "UsageError",
    "VerificationError",
]


class ClientError(Exception):
    """A failure told in one line; ``exit_code`` is what the command exits with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ClientError):
    """A bad reference or argument (exit 2, as click's own usage errors)."""

    exit_code = 2


class NotFoundError(ClientError):
    """The server has no such repository, image, tag or digest (exit 3)."""

    exit_code = 3


class RefusedError(ClientError):
    """The server refused the request, with its message (exit 4)."""

    exit_code = 4


class VerificationError(ClientError):
    """The bytes do not have the digest they must have (exit 5)."""

    exit_code = 5


class ConnectionFailedError(ClientError):
    """No connection, or the transfer failed after its retries (exit 6)."""

    exit_code = 6
