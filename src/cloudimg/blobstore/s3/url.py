"""``s3://bucket/prefix`` and the endpoint settings, made into an :class:`S3Location`.

The one spelling of an S3 blob store that a person writes (a flag, a variable, a chart
value); everything else about the store comes from the separate endpoint, region and
path-style settings, and the credentials from boto3's own chain.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from cloudimg.blobstore.s3.client import S3Location

__all__ = ["check_endpoint", "parse_s3_url"]

# S3's rule for new buckets, also what Ceph RGW, MinIO and SeaweedFS accept; dots are
# allowed (old buckets) though virtual-hosted TLS then fails: path-style works. Not
# "..", not an IPv4 address, none of the prefixes and suffixes AWS reserves.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def parse_s3_url(
    url: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    path_style: bool = False,
) -> S3Location:
    """The location of ``s3://bucket`` or ``s3://bucket/prefix`` (``prefix`` may have
    several segments; the store's keys then start with ``prefix/``: ``s3://b/images``
    and ``s3://b/images/`` are one store).

    Raises:
        ValueError: one line naming what is wrong, never echoing what may be a secret
            (credentials written into the URL or the endpoint).
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "s3":
        raise ValueError(f"{url!r} is not an s3://bucket[/prefix] URL")
    if "@" in parts.netloc:
        raise ValueError(
            "an s3:// URL names a bucket and a prefix only: credentials come from AWS_*"
            " variables or a credentials file"
        )
    if parts.query or parts.fragment or ":" in parts.netloc:
        raise ValueError(f"{url!r}: an s3:// URL names a bucket and a prefix only")
    bucket = parts.netloc
    if (
        not _BUCKET.fullmatch(bucket)
        or ".." in bucket
        or _is_ipv4(bucket)
        or bucket.startswith(_RESERVED_PREFIXES)
        or bucket.endswith(_RESERVED_SUFFIXES)
    ):
        raise ValueError(
            f"{bucket!r} is not a bucket name (3 to 63 lower-case letters, digits,"
            " dots and hyphens, a letter or digit at each end)"
        )
    segments = [segment for segment in parts.path.split("/") if segment]
    for segment in segments:
        # Keys are built by concatenation: a segment like ".." would name other keys.
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise ValueError(f"{url!r}: prefix segment {segment!r} is not letters, digits, . _ -")
    prefix = "".join(f"{segment}/" for segment in segments)
    if len(prefix) > 512:
        raise ValueError(f"{url!r}: the prefix is longer than 512 characters")
    check_endpoint(endpoint)
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint or None,
        region=region or None,
        path_style=path_style,
    )


def check_endpoint(endpoint: str | None) -> None:
    """``http(s)://host[:port]``, or empty (an unset chart value, a blank variable: AWS's
    own endpoint).

    Raises:
        ValueError: naming the endpoint, unless it carries credentials (not echoed).
    """
    if not endpoint:
        return
    parts = urlsplit(endpoint)
    if "@" in parts.netloc:
        raise ValueError(
            "the S3 endpoint carries credentials: give http(s)://host[:port]; credentials"
            " come from AWS_* variables or a credentials file"
        )
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"the S3 endpoint {endpoint!r} is not an http(s)://host[:port] URL")


def _is_ipv4(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True
