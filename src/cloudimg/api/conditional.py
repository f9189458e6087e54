"""A tag's validators, and conditional writes: ``If-Match`` and ``If-None-Match: *`` on
uploads, retags and deletes.

The validators: a blob's strong ETag (:func:`etag_of`) and ``Repr-Digest``
(:func:`repr_digest_of`), sent with its downloads and with the answer to the upload
that stored it, and the ``/meta`` ETag (:func:`meta_etag_of`).

The request's headers become a :data:`cloudimg.catalog.Precondition`, which the catalog
calls with the tag as it is *inside* the write transaction, after it locked the tag row
(a tag being created: its unique key), so of two writers racing with the same
``If-Match`` only one commits; the other gets 412.

What ``If-Match`` compares: either ETag of the tag is accepted,

- the download ETag ``"blake3:<hex>"`` (:func:`etag_of`): the
  bytes only, so a metadata-only change by another writer still matches;
- the ``/meta`` ETag ``"meta-<hex>"`` (:func:`meta_etag_of`), which covers the digest
  and the metadata: a writer that must not miss any change sends this one.

``If-None-Match`` on a write takes only ``*``: create the tag, never overwrite it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from litestar import Request

from cloudimg.api.auth import actor_of
from cloudimg.api.rfc9110 import strong_match_any
from cloudimg.catalog import Catalog, Precondition, TagInfo, WriteOptions
from cloudimg.errors import (
    InvalidArgumentError,
    PreconditionFailedError,
)

__all__ = ["etag_of", "meta_etag_of", "repr_digest_of", "write_options", "write_precondition"]


def etag_of(blake3_hex: str) -> str:
    """The strong ETag of a blob's bytes, the same under every tag and digest reference."""
    return f'"blake3:{blake3_hex}"'


def repr_digest_of(sha256_hex: str) -> str:
    """The ``Repr-Digest`` field (RFC 9530) of a blob: its sha-256 as a byte sequence."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


def meta_etag_of(info: TagInfo) -> str:
    """The strong ETag of a tag's ``/meta``: its digest and metadata, nothing else."""
    canonical = json.dumps(
        {"digest": info.digest, "meta": info.meta}, sort_keys=True, separators=(",", ":")
    )
    return '"meta-' + hashlib.sha256(canonical.encode()).hexdigest()[:40] + '"'


def write_precondition(headers: Mapping[str, str]) -> Precondition | None:
    """The precondition a write's headers ask for; None when they ask for none.

    Raises:
        InvalidArgumentError: ``If-None-Match`` with anything but ``*``.
    """
    if_match = headers.get("if-match")
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None and if_none_match.strip() != "*":
        raise InvalidArgumentError(
            "on a write, If-None-Match takes only * (create the tag, never overwrite it)"
        )
    if if_match is None and if_none_match is None:
        return None

    def check(info: TagInfo | None) -> None:
        if if_none_match is not None and info is not None:
            raise PreconditionFailedError(
                "If-None-Match: * is false: the tag exists", {"etag": etag_of(info.digest)}
            )
        if if_match is None:
            return
        if info is None:
            raise PreconditionFailedError("If-Match is false: the tag does not exist")
        current = (etag_of(info.digest), meta_etag_of(info))
        if not strong_match_any(if_match, current):
            raise PreconditionFailedError(
                "If-Match is false: the tag has changed",
                {"etag": current[0], "metaEtag": current[1]},
            )

    return check


async def write_options(
    request: Request[Any, Any, Any],
    catalog: Catalog,
    names: tuple[str, str, str],
    *,
    early: bool = True,
) -> WriteOptions:
    """Who writes and on what condition; with ``early``, a condition already false is
    refused now, before a body of gigabytes is read (the catalog checks it again under
    its lock, where it counts)."""
    precondition = write_precondition(request.headers)
    if early:
        info = await catalog.reads.find_tag(*names)
        if info is not None and info.quarantined:  # an upload heals it: the catalog checks
            return WriteOptions(actor=actor_of(request), precondition=precondition)
        if info is not None:  # the catalog's own refusal, before the body is read
            catalog.tags.refuse_immutable(names, info.immutable, "overwritten")
        if precondition is not None:
            precondition(info)
    return WriteOptions(actor=actor_of(request), precondition=precondition)
