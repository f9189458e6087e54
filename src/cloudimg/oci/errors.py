"""The OCI slice's refusals: :class:`OciError` (a status and one of the spec's error
codes), and the names and digests of a ``/v2`` request read under the ``/reg`` rules.

Plain Python: the slice's HTTP handlers (``cloudimg.oci.http``) answer an ``OciError``
in the spec's shape, and its session logic (``cloudimg.oci.sessions``) raises it
without knowing HTTP.
"""

from __future__ import annotations

import re
from typing import Any

from cloudimg.errors import InvalidArgumentError
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name

__all__ = ["OciError", "oci_names", "oci_tag", "parse_oci_digest"]

_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")
_DIGEST_SYNTAX = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


class OciError(Exception):
    """An answer of the ``/v2`` routes with one of the spec's error codes."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}


def oci_names(repo: str, image: str) -> tuple[str, str]:
    """``repo`` and ``image`` under the ``/reg`` rules, else ``NAME_INVALID``."""
    try:
        return validate_repo_name(repo), validate_image_name(image)
    except InvalidArgumentError as exc:
        raise OciError(400, "NAME_INVALID", exc.message, exc.context) from None


def oci_tag(tag: str) -> str:
    try:
        return validate_tag_name(tag)
    except InvalidArgumentError as exc:
        raise OciError(400, "TAG_INVALID", exc.message, exc.context) from None


def parse_oci_digest(text: str, code: str = "DIGEST_INVALID") -> str:
    """The hex of a ``sha256:`` digest; other algorithms are ``UNSUPPORTED``."""
    match = _SHA256.fullmatch(text)
    if match:
        return match.group(1)
    if _DIGEST_SYNTAX.fullmatch(text) and not text.startswith("sha256:"):
        raise OciError(400, "UNSUPPORTED", "only sha256 digests are served", {"digest": text[:200]})
    raise OciError(400, code, "not a digest: sha256:<64 lower-case hex>", {"digest": text[:200]})
