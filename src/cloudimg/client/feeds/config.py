"""A feed: where an upstream publishes an image, how to check it, and the tag it goes to.

A feed file (YAML, or JSON, which YAML reads too) holds one feed, or several under
``feeds:``; each feed has a ``target`` and exactly one source::

    target: debian/bookworm:latest
    checksums:               # an HTTP directory with a checksum file
      url: https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS
      file: debian-12-generic-amd64.qcow2
      signature: null        # a detached signature's URL; a clear-signed file needs none
    # simplestreams: {url: .../streams/v1/index.json, release: noble, arch: amd64}
    # oci: {image: quay.io/containerdisks/fedora:41}
    keys: [/etc/cloudimg/keys/debian.asc]   # relative paths: from the feed file
    meta: {os: debian}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloudimg.client.errors import UsageError
from cloudimg.client.reference import ImageRef, parse_image_ref

__all__ = [
    "ChecksumSource",
    "Feed",
    "OciSource",
    "SimplestreamsSource",
    "Source",
    "load_feeds",
]


@dataclass(frozen=True, slots=True)
class ChecksumSource:
    """An HTTP directory: ``url`` is its checksum file, ``file`` the image's name in it
    (and beside it); ``signature`` a detached signature of the checksum file."""

    url: str
    file: str
    signature: str | None = None

    @property
    def image_url(self) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + self.file


@dataclass(frozen=True, slots=True)
class SimplestreamsSource:
    """A simplestreams index; the newest version of the product of ``release`` and
    ``arch`` that has an ``item`` (``disk1.img``)."""

    url: str
    release: str
    arch: str = "amd64"
    item: str = "disk1.img"


@dataclass(frozen=True, slots=True)
class OciSource:
    """A containerDisk in another registry: ``image`` is ``HOST[:PORT]/NAME:TAG``."""

    image: str
    platform: str = "linux/amd64"
    insecure: bool = False
    """Plain HTTP (a registry on loopback)."""


Source = ChecksumSource | SimplestreamsSource | OciSource


@dataclass(frozen=True, slots=True)
class Feed:
    target: ImageRef
    source: Source
    keys: list[Path] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    name: str = ""

    def __str__(self) -> str:
        return self.name or str(self.target)


def load_feeds(path: Path) -> list[Feed]:
    """The feeds of the file at ``path``.

    Raises:
        UsageError: unreadable, not YAML, or a feed that breaks the rules above.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the feed file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"the feed file {path} is not YAML: {exc}") from None
    if isinstance(document, dict) and "feeds" in document:
        document = document["feeds"]
    items = document if isinstance(document, list) else [document]
    if not items:
        raise UsageError(f"the feed file {path} holds no feed")
    return [feed_of(item, path.parent, f"{path} feed {n}") for n, item in enumerate(items, 1)]


def feed_of(item: Any, base: Path, where: str) -> Feed:
    """One feed from its mapping; key paths are taken from ``base``."""
    if not isinstance(item, dict):
        raise UsageError(f"{where}: a feed is a mapping")
    known = {"name", "target", "checksums", "simplestreams", "oci", "keys", "meta"}
    unknown = sorted(set(item) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    sources = [kind for kind in ("checksums", "simplestreams", "oci") if kind in item]
    if len(sources) != 1:
        raise UsageError(f"{where}: give exactly one of checksums, simplestreams, oci")
    target = parse_image_ref(_text(item, "target", where), tag_only=True)
    keys = item.get("keys") or []
    meta = item.get("meta") or {}
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise UsageError(f"{where}: keys is a list of key file paths")
    if not isinstance(meta, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in meta.items()
    ):
        raise UsageError(f"{where}: meta maps strings to strings")
    return Feed(
        target,
        _source(sources[0], item[sources[0]], f"{where} {sources[0]}"),
        [base / key for key in keys],
        meta,
        str(item.get("name") or ""),
    )


def _source(kind: str, value: Any, where: str) -> Source:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: a mapping is expected")
    fields = {
        "checksums": ({"url", "file"}, {"signature"}),
        "simplestreams": ({"url", "release"}, {"arch", "item"}),
        "oci": ({"image"}, {"platform", "insecure"}),
    }[kind]
    unknown = sorted(set(value) - fields[0] - fields[1])
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    given: dict[str, Any] = {key: _text(value, key, where) for key in fields[0]}
    for key in fields[1] & set(value):
        if value[key] is not None:
            given[key] = bool(value[key]) if key == "insecure" else _text(value, key, where)
    if kind == "checksums":
        return ChecksumSource(**given)
    if kind == "simplestreams":
        return SimplestreamsSource(**given)
    return OciSource(**given)


def _text(mapping: dict[str, Any], key: str, where: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: {key} must be a non-empty string")
    return value
