"""What a source resolves to: nothing to do, or an upstream file to download and push."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudimg.client.feeds.checksums import Checksum

__all__ = ["Candidate", "Current", "Unchanged", "recorded_for", "same_checksum", "upstream_meta"]


@dataclass(frozen=True, slots=True)
class Current:
    """The target tag as the registry has it."""

    sha256: str
    """Lower-case hex."""
    meta: dict[str, str]
    etag: str
    """The ``/meta`` ETag: the push's ``If-Match``, so a tag changed meanwhile is left alone."""


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Upstream holds what the tag holds; ``reason`` says how that was known."""

    reason: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """An upstream file to download, the checksum it must have and the tag's metadata."""

    url: str
    checksum: Checksum
    meta: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    """Headers of the download (an OCI registry's token)."""
    packing: str | None = None
    """``tar``, ``gzip`` or ``zstd``: the download is a containerDisk's layer to unpack."""


def recorded_for(current: Current | None, source: str) -> dict[str, str]:
    """The tag's metadata when an earlier sync of the same ``source`` wrote it, else none
    (a conditional request is sent only then)."""
    if current is None or current.meta.get("source") != source:
        return {}
    return current.meta


def same_checksum(current: Current | None, source: str, checksum: Checksum) -> bool:
    """Whether the tag already holds the bytes ``checksum`` names: its sha256, or the
    upstream checksum an earlier sync of ``source`` recorded (a sha512 the registry does
    not compute)."""
    if current is None:
        return False
    if checksum.algorithm == "sha256" and current.sha256 == checksum.hex:
        return True
    return recorded_for(current, source).get("upstream_checksum") == str(checksum)


def upstream_meta(source: str, checksum: Checksum, etag: str | None, modified: str | None,
                  signed_by: str | None) -> dict[str, str]:  # fmt: skip
    """The metadata a sync records: where the bytes came from and how they were checked."""
    meta = {"source": source, "upstream_checksum": str(checksum)}
    if etag:
        meta["upstream_etag"] = etag
    if modified:
        meta["upstream_last_modified"] = modified
    if signed_by:
        meta["signed_by"] = signed_by
    return meta
