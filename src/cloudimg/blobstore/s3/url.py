"""``s3://bucket/prefix`` and the endpoint settings, made into an :class:`S3Location`.

The one spelling of an S3 blob store that a person writes (a flag, a variable, a chart
value); everything else about the store comes from the separate endpoint, region and
path-style settings, and the credentials from boto3's own chain.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from cloudimg.blobstore.s3.client import S3Location

__all__ = ["parse_s3_url"]

# S3's rule for new buckets, also what Ceph RGW, MinIO and SeaweedFS accept; dots are
# allowed (old buckets) though virtual-hosted TLS then fails: path-style works.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def parse_s3_url(
    url: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    path_style: bool = False,
) -> S3Location:
    """The location of ``s3://bucket`` or ``s3://bucket/prefix`` (``prefix`` may have
    several segments; the store's keys then start with ``prefix/``).

    Raises:
        ValueError: one line naming what is wrong (never a secret: the URL holds none).
    """
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"{url!r} is not an s3://bucket[/prefix] URL")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(f"{url!r}: an s3:// URL names a bucket and a prefix only")
    if not _BUCKET.fullmatch(parts.netloc):
        raise ValueError(
            f"{parts.netloc!r} is not a bucket name (3 to 63 lower-case letters, digits,"
            " dots and hyphens)"
        )
    segments = [segment for segment in parts.path.split("/") if segment]
    for segment in segments:
        # Keys are built by concatenation: a segment like ".." would name other keys.
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise ValueError(f"{url!r}: prefix segment {segment!r} is not letters, digits, . _ -")
    if endpoint:  # empty (an unset chart value, a blank variable): AWS's own
        scheme = urlsplit(endpoint).scheme
        if scheme not in ("http", "https") or not urlsplit(endpoint).netloc:
            raise ValueError(f"the S3 endpoint {endpoint!r} is not an http(s):// URL")
    return S3Location(
        bucket=parts.netloc,
        prefix="".join(f"{segment}/" for segment in segments),
        endpoint_url=endpoint or None,
        region=region or None,
        path_style=path_style,
    )
