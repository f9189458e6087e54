"""A tag's metadata: a flat JSON object of strings, at most ``MAX_META_BYTES`` of UTF-8 JSON.

Pure functions over bytes, below the API and maintenance layers (maintenance must not
import the API): the uploads (``cloudimg.api.reg.uploads``: the ``meta`` part, the
``Cloudimg-Meta`` header), retags and ``import-legacy`` (an old tree's ``meta.json``)
parse metadata with the same ``parse_meta``; the uploads and the import hold the raw
bytes to ``MAX_META_BYTES`` before parsing.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from typing import Any, Final

from cloudimg.errors import InvalidArgumentError

__all__ = ["MAX_META_BYTES", "parse_meta"]

MAX_META_BYTES: Final = 64 * 1024
"""The most bytes of metadata JSON any way in accepts."""


class _NotText:
    """What a JSON number or constant parses to: never a valid metadata value.

    Numbers are not converted, so a 5,000-digit one costs nothing and cannot hit
    Python's int-digit limit; the value check below refuses it like any non-string.
    """


def _not_text(_literal: str) -> _NotText:
    return _NotText()


def parse_meta(raw: bytes | bytearray | None, where: str = "the 'meta' part") -> dict[str, str]:
    """The ``meta`` part (or what ``where`` names) as a flat JSON object of strings.

    Raises:
        InvalidArgumentError: for every other input (``None``: the part is missing);
            its message and context are valid Unicode, so any answer can carry them.
    """
    if raw is None:
        raise InvalidArgumentError(f"{where} is missing")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The codec's own message quotes the byte; the offset is enough.
        raise InvalidArgumentError(
            f"{where} is not UTF-8 (invalid byte at offset {exc.start})"
        ) from None
    if text.startswith("\ufeff"):
        raise InvalidArgumentError(
            f"{where} starts with a byte order mark; send UTF-8 JSON without one"
        )
    try:
        meta: Any = json.loads(
            text,
            object_pairs_hook=partial(_object_without_duplicates, where),
            parse_int=_not_text,
            parse_float=_not_text,
            parse_constant=_not_text,
        )
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        # Deep nesting ([[[[... or {"a":{"a":...) exhausts the parser's stack; a flat
        # object of strings never comes near it.
        raise InvalidArgumentError(
            f"{where} nests too deeply; it must be a flat JSON object of strings"
        ) from None
    if not isinstance(meta, dict):
        raise InvalidArgumentError(f"{where} must be a JSON object")
    # JSON escapes can spell lone surrogates, which no UTF-8 response can carry back
    # (not even in an error's context): check the keys before naming any of them.
    if not all(_is_unicode(key) for key in meta):
        raise InvalidArgumentError("metadata keys and values must be valid Unicode text")
    bad = [key for key, value in meta.items() if not isinstance(value, str)]
    if bad:
        raise InvalidArgumentError("metadata values must be strings", {"keys": bad[:20]})
    if not all(_is_unicode(value) for value in meta.values()):
        raise InvalidArgumentError("metadata keys and values must be valid Unicode text")
    return meta


def _object_without_duplicates(where: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: parsers disagree on which duplicate wins, so refuse them."""
    result = dict(pairs)
    if len(result) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        duplicates = sorted(key for key, count in counts.items() if count > 1)
        raise InvalidArgumentError(
            f"{where} repeats a key",
            {"keys": [key for key in duplicates[:20] if _is_unicode(key)]},
        )
    return result


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
