"""``sync``: one feed into its tag. Compare, download (resumably), verify, push.

Nothing is downloaded when upstream did not change (a conditional read of the checksum
file or index, then its checksum against the tag's sha256 or recorded checksum);
nothing is pushed unless the download has the checksum the (signed) upstream gives. The
push is the client's one-request ``/reg`` upload, made conditional on the tag as it was
read (``If-Match`` its ``/meta`` ETag, ``If-None-Match: *`` for a new tag): a tag written
meanwhile by someone else is left alone (412). The server inspects the image and keeps
the tag's previous image in its history, as for any push.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cloudimg.client.errors import NotFoundError, UsageError, VerificationError
from cloudimg.client.feeds.checksums import file_checksum
from cloudimg.client.feeds.config import ChecksumSource, Feed, SimplestreamsSource
from cloudimg.client.feeds.directory import resolve_directory
from cloudimg.client.feeds.oci_source import resolve_oci, unpack_layer
from cloudimg.client.feeds.plan import Candidate, Current, Unchanged
from cloudimg.client.feeds.simplestreams import resolve_simplestreams
from cloudimg.client.feeds.upstream import Upstream
from cloudimg.client.preflight import check_before_push
from cloudimg.client.reference import ImageRef
from cloudimg.client.session import Session
from cloudimg.client.upload import PushResult, push
from cloudimg.progress import Progress

__all__ = ["SyncOutcome", "default_cache_dir", "sync_feed"]


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    """What a sync did: ``pushed`` is None when the tag already held upstream's image."""

    feed: Feed
    reason: str
    pushed: PushResult | None = None
    resumed_at: int = 0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cloudimg/sync`` (``~/.cache/cloudimg/sync``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cloudimg" / "sync"


def sync_feed(
    session: Session,
    upstream: Upstream,
    feed: Feed,
    cache_dir: Path,
    progress: Progress | None = None,
) -> SyncOutcome:
    """Bring ``feed.target`` to what upstream publishes now.

    Raises:
        NotFoundError: upstream is gone (the tag is left as it was).
        VerificationError: a checksum or signature is wrong (nothing is pushed).
        RefusedError, ConnectionFailedError: as the registry or upstream says.
    """
    current = current_tag(session, feed.target)
    plan = _resolve(feed, upstream, current)
    if isinstance(plan, Unchanged):
        return SyncOutcome(feed, plan.reason)
    downloaded, resumed = fetch_verified(upstream, plan, cache_dir, progress)
    path = downloaded if plan.packing is None else unpack_layer(downloaded, plan.packing)
    check_before_push(session, path, feed.target, None)
    precondition = {"If-Match": current.etag} if current else {"If-None-Match": "*"}
    result = push(
        session,
        path,
        feed.target,
        {**feed.meta, **plan.meta},
        progress=progress,
        precondition=precondition,
    )
    # Stored and verified by the server: the cache's copies go. (A push that failed left
    # them: the next run finds the download complete and pushes again.)
    path.unlink(missing_ok=True)
    downloaded.unlink(missing_ok=True)
    return SyncOutcome(feed, f"{plan.url} ({plan.checksum})", result, resumed)


def current_tag(session: Session, ref: ImageRef) -> Current | None:
    """The tag's sha256, metadata and ``/meta`` ETag; None when there is no such tag."""
    try:
        response = session.request("GET", f"{ref.path}/meta")
    except NotFoundError:
        return None
    body = response.json()
    meta = body.get("data") or {}
    sha256 = str(body.get("sha256") or "").removeprefix("sha256:")
    return Current(sha256, meta, response.headers.get("ETag", ""))


def _resolve(feed: Feed, upstream: Upstream, current: Current | None) -> Candidate | Unchanged:
    source = feed.source
    if isinstance(source, ChecksumSource):
        return resolve_directory(source, feed.keys, upstream, current)
    if isinstance(source, SimplestreamsSource):
        return resolve_simplestreams(source, feed.keys, upstream, current)
    if feed.keys:
        # Refused rather than ignored: keys given mean a signature is expected.
        raise UsageError(f"{feed}: an oci feed checks no OpenPGP signature; give no keys")
    return resolve_oci(source, upstream, current)


def fetch_verified(
    upstream: Upstream, plan: Candidate, cache_dir: Path, progress: Progress | None
) -> tuple[Path, int]:
    """The upstream file in ``cache_dir``, with the checksum it must have; the bytes a
    partial file of an earlier run gave (resumed).

    The partial file is named by the checksum: a run that stopped resumes it, and a
    changed upstream starts a new one. A resumed file whose checksum is wrong (upstream
    replaced the file under the same name meanwhile) is downloaded once more whole.

    Raises:
        VerificationError: the download's checksum is not upstream's (nothing kept).
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the cache directory {cache_dir}: {exc}") from None
    partial = cache_dir / f"{plan.checksum.algorithm}-{plan.checksum.hex}.part"
    resumed = upstream.download(plan.url, partial, progress, plan.headers)
    if resumed and file_checksum(partial, plan.checksum.algorithm, progress) != plan.checksum.hex:
        partial.unlink()
        resumed = upstream.download(plan.url, partial, progress, plan.headers)
    actual = file_checksum(partial, plan.checksum.algorithm, progress)
    if actual != plan.checksum.hex:
        partial.unlink()
        raise VerificationError(
            f"{plan.url} is {plan.checksum.algorithm}:{actual}, not {plan.checksum} as"
            " upstream's checksum says; nothing was pushed"
        )
    return partial, resumed
