"""The client half of ``cloudimg``: push, pull, list, inspect, retag and delete over HTTP.

It talks to a server's ``/reg`` API with httpx and imports nothing of the server's
layers but the name and digest rules (``cloudimg.names``, ``cloudimg.digest``).
"""

from cloudimg.client.errors import (
    ClientError,
    ConnectionFailedError,
    NotFoundError,
    RefusedError,
    UsageError,
    VerificationError,
)
from cloudimg.client.reference import ImageRef, parse_image_ref, parse_listing_target
from cloudimg.client.session import Credentials, Session

__all__ = [
    "ClientError",
    "ConnectionFailedError",
    "Credentials",
    "ImageRef",
    "NotFoundError",
    "RefusedError",
    "Session",
    "UsageError",
    "VerificationError",
    "parse_image_ref",
    "parse_listing_target",
]
