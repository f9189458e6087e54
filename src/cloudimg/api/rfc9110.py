"""RFC 9110 for a GET or HEAD of a representation: preconditions, ranges, If-Range.

Pure functions of the request's method and headers and the representation's size,
ETag and modification time; ``cloudimg.api.download`` turns their verdict into a response.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["ByteRange", "Unsatisfiable", "evaluate", "parse_range", "strong_match_any"]

# The range unit is case-insensitive (RFC 9110 section 14.1); positions are ASCII digits.
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
# A position with more digits than this is past the end of any blob; int() refuses
# strings over 4300 digits, and a client must not turn that into a 500.
_MAX_POSITION_DIGITS = 20
_PAST_ANY_END: int = 10**_MAX_POSITION_DIGITS


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``first``..``last`` of a representation."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class Unsatisfiable(Exception):
    """The Range header is well formed but selects no byte of the representation."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a ``Range`` header asks for, or None to send everything.

    Multiple ranges and malformed headers are ignored (RFC 9110 allows it), so the
    client gets the whole representation with 200.

    Raises:
        Unsatisfiable: when the range starts beyond the end, or asks for zero bytes.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = _position(last_text)
        if suffix == 0:
            raise Unsatisfiable
        if size == 0:
            # Satisfiable (RFC 9110 section 14.1.1), but no 206 can carry zero bytes.
            return None
        return ByteRange(max(0, size - suffix), size - 1)
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # invalid range-spec: ignore the header
    if first >= size:
        raise Unsatisfiable
    return ByteRange(first, min(last, size - 1))


def _position(digits: str) -> int:
    stripped = digits.lstrip("0")
    if len(stripped) > _MAX_POSITION_DIGITS:
        return _PAST_ANY_END
    return int(stripped or "0")


def _etag_list(header: str) -> list[str]:
    return [part.strip() for part in header.split(",") if part.strip()]


def _strong_match(header: str, etag: str) -> bool:
    return any(tag == "*" or tag == etag for tag in _etag_list(header))


def strong_match_any(header: str, etags: Collection[str]) -> bool:
    """Whether an ``If-Match`` list names ``*`` or one of ``etags`` (strong comparison)."""
    return any(_strong_match(header, etag) for etag in etags)


def _weak_match(header: str, etag: str) -> bool:
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in _etag_list(header))


def _http_date_secs(text: str) -> int | None:
    """Seconds since the epoch of an HTTP-date, or None when ``text`` is no date."""
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000" or an unknown zone: HTTP dates are GMT
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp())
    except (TypeError, ValueError, OverflowError):
        return None


def _not_after(header: str | None, last_modified_secs: int) -> bool | None:
    """Whether the representation is unmodified since ``header``; None if it is no date."""
    if header is None:
        return None
    since = _http_date_secs(header)
    if since is None:
        return None
    return last_modified_secs <= since


def evaluate(
    method: str, h: Mapping[str, str], size: int, etag: str, modified_secs: int
) -> tuple[int, ByteRange | None]:
    """The status a GET/HEAD of a representation gets, and the range to send.

    RFC 9110 section 13.2.2: preconditions first, then Range (and If-Range).
    ``h`` holds the request's headers under lower-case names.
    """
    if_match = h.get("if-match")
    if if_match is not None and not _strong_match(if_match, etag):
        return 412, None
    if if_match is None and _not_after(h.get("if-unmodified-since"), modified_secs) is False:
        return 412, None
    if_none_match = h.get("if-none-match")
    if if_none_match is not None:
        if _weak_match(if_none_match, etag):
            return 304, None
    elif _not_after(h.get("if-modified-since"), modified_secs):
        return 304, None
    if method != "GET":
        # RFC 9110 section 14.2: GET is the only method with range handling; a HEAD
        # with Range gets the headers of the whole representation.
        return 200, None
    if_range = h.get("if-range")
    if if_range is not None and not _if_range_holds(if_range, etag, modified_secs):
        return 200, None
    try:
        byte_range = parse_range(h.get("range"), size)
    except Unsatisfiable:
        return 416, None
    return (206, byte_range) if byte_range else (200, None)


def _if_range_holds(if_range: str, etag: str, modified_secs: int) -> bool:
    if if_range.startswith('"') or if_range.startswith("W/"):
        return if_range == etag  # strong comparison; a weak tag never matches
    return _http_date_secs(if_range) == modified_secs
