"""An HTTP directory with a checksum file (``SHA256SUMS``, ``SHA512SUMS``, ``CHECKSUM``),
optionally signed (a detached ``.gpg``/``.sig``, or clear-signed)."""

from __future__ import annotations

from pathlib import Path

from cloudimg.client.errors import UsageError
from cloudimg.client.feeds.checksums import find_checksum
from cloudimg.client.feeds.config import ChecksumSource
from cloudimg.client.feeds.plan import (
    Candidate,
    Current,
    Unchanged,
    recorded_for,
    same_checksum,
    upstream_meta,
)
from cloudimg.client.feeds.signature import (
    is_clear_signed,
    verify_clear_signed,
    verify_detached,
)
from cloudimg.client.feeds.upstream import Upstream

__all__ = ["resolve_directory"]


def resolve_directory(
    source: ChecksumSource, keys: list[Path], upstream: Upstream, current: Current | None
) -> Candidate | Unchanged:
    """What the checksum file says of ``source.file``, its signature checked when
    ``keys`` are given (then a signature is required)."""
    image_url = source.image_url
    recorded = recorded_for(current, image_url)
    fetched = upstream.get(
        source.url,
        etag=recorded.get("upstream_etag"),
        last_modified=recorded.get("upstream_last_modified"),
    )
    if fetched is None:
        return Unchanged(f"{source.url} is not modified (304)")
    content, signer = _signed(source, fetched.content, keys, upstream)
    checksum = find_checksum(content.decode("utf-8", "replace"), source.file, source.url)
    if same_checksum(current, image_url, checksum):
        return Unchanged(f"the tag already holds {source.file} ({checksum})")
    meta = upstream_meta(image_url, checksum, fetched.etag, fetched.last_modified, signer)
    return Candidate(image_url, checksum, meta)


def _signed(
    source: ChecksumSource, content: bytes, keys: list[Path], upstream: Upstream
) -> tuple[bytes, str | None]:
    """The checksum file's text that counts and the signer's fingerprint: all of it and
    none without keys; with keys, only what a good signature by one of them covers."""
    if not keys:
        return content, None
    if source.signature:
        detached = upstream.get(source.signature)
        assert detached is not None, "an unconditional read"
        signed = verify_detached(content, detached.content, keys, source.url)
    elif is_clear_signed(content):
        signed = verify_clear_signed(content, keys, source.url)
    else:
        raise UsageError(
            f"keys are given but {source.url} is not clear-signed and the feed names no"
            " detached signature (checksums.signature)"
        )
    return signed.data, signed.fingerprint
