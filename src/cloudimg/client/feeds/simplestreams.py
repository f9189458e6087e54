"""A simplestreams index (``streams/v1/index.json``, as Ubuntu's cloud images publish).

The index names the product files; in them a product of the wanted ``release`` and
``arch`` lists versions, each with items; the newest version that has the wanted item
(``disk1.img``) is the one, with its ``sha256``. With keys, the signed twins (``.sjson``:
clear-signed JSON) are read instead and checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloudimg.client.errors import NotFoundError, VerificationError
from cloudimg.client.feeds.checksums import Checksum
from cloudimg.client.feeds.config import SimplestreamsSource
from cloudimg.client.feeds.plan import (
    Candidate,
    Current,
    Unchanged,
    recorded_for,
    same_checksum,
    upstream_meta,
)
from cloudimg.client.feeds.signature import verify_clear_signed
from cloudimg.client.feeds.upstream import Fetched, Upstream

__all__ = ["resolve_simplestreams"]

_INDEX_SUFFIX = "streams/v1/index.json"


def resolve_simplestreams(
    source: SimplestreamsSource, keys: list[Path], upstream: Upstream, current: Current | None
) -> Candidate | Unchanged:
    """The newest ``source.item`` of ``source.release``/``source.arch``."""
    if not source.url.endswith(_INDEX_SUFFIX) and not source.url.endswith("index.sjson"):
        raise NotFoundError(f"{source.url} is not a simplestreams index ({_INDEX_SUFFIX})")
    mirror = source.url.rsplit("streams/v1/", 1)[0]
    index, _fetched, signer = _document(upstream, source.url, keys)
    paths = _product_paths(index, source, mirror)
    recorded = recorded_for(current, _source_key(source))
    for path in paths:
        url = mirror + path
        products, fetched, signer = _document(upstream, url, keys, recorded)
        if fetched is None:
            return Unchanged(f"{url} is not modified (304)")
        found = _newest_item(products, source)
        if found is None:
            continue
        item_path, checksum, version = found
        if same_checksum(current, _source_key(source), checksum):
            return Unchanged(f"the tag already holds {source.release} {version} ({checksum})")
        meta = upstream_meta(
            _source_key(source), checksum, fetched.etag, fetched.last_modified, signer
        )
        meta["upstream_version"] = version
        meta["upstream_url"] = mirror + item_path
        return Candidate(mirror + item_path, checksum, meta)
    raise NotFoundError(
        f"{source.url} lists no {source.item} of release {source.release} on {source.arch}"
    )


def _source_key(source: SimplestreamsSource) -> str:
    """What a sync of this feed records as ``source``: the index and the product wanted."""
    return f"{source.url}#{source.release}/{source.arch}/{source.item}"


def _document(
    upstream: Upstream, url: str, keys: list[Path], recorded: dict[str, str] | None = None
) -> tuple[Any, Fetched | None, str | None]:
    """A JSON document of the stream (its ``.sjson`` twin, checked, with keys)."""
    recorded = recorded or {}
    if keys:
        url = url.removesuffix(".json") + ".sjson"
    fetched = upstream.get(
        url,
        etag=recorded.get("upstream_etag"),
        last_modified=recorded.get("upstream_last_modified"),
    )
    if fetched is None:
        return None, None, None
    content, signer = fetched.content, None
    if keys:
        signed = verify_clear_signed(content, keys, url)
        content, signer = signed.data, signed.fingerprint
    try:
        return json.loads(content), fetched, signer
    except ValueError:
        raise VerificationError(f"{url} is not JSON") from None


def _product_paths(index: Any, source: SimplestreamsSource, mirror: str) -> list[str]:
    """The product files of the index whose products may hold the release and arch."""
    entries = index.get("index") if isinstance(index, dict) else None
    if not isinstance(entries, dict):
        raise VerificationError(f"{source.url} is not a simplestreams index (no 'index')")
    paths = []
    for entry in entries.values():
        if not isinstance(entry, dict) or entry.get("datatype") != "image-downloads":
            continue
        path = entry.get("path")
        if isinstance(path, str) and ".." not in path.split("/"):
            paths.append(path)
    return paths


def _newest_item(products: Any, source: SimplestreamsSource) -> tuple[str, Checksum, str] | None:
    """(item path, sha256, version) of the newest version that has the item, if any."""
    found: list[tuple[str, str, str]] = []
    table = products.get("products") if isinstance(products, dict) else None
    for product in (table or {}).values():
        if not isinstance(product, dict) or not _matches(product, source):
            continue
        for version, entry in (product.get("versions") or {}).items():
            items = entry.get("items") if isinstance(entry, dict) else None
            for name, item in (items or {}).items():
                if not isinstance(item, dict) or source.item not in (name, item.get("ftype")):
                    continue
                path, sha256 = item.get("path"), item.get("sha256")
                if isinstance(path, str) and isinstance(sha256, str) and len(sha256) == 64:
                    found.append((str(version), path, sha256.lower()))
    if not found:
        return None
    version, path, sha256 = max(found)
    return path, Checksum("sha256", sha256), version


def _matches(product: dict[str, Any], source: SimplestreamsSource) -> bool:
    return product.get("release") == source.release and product.get("arch") == source.arch
