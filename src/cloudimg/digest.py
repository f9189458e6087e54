"""Digests: the ``algorithm:hex`` references clients send and the registry stores."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["ALGORITHMS", "Digest", "Reference", "parse_digest"]

Algorithm = Literal["blake3", "sha256"]
ALGORITHMS: tuple[Algorithm, ...] = ("blake3", "sha256")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Digest:
    """A content digest; both supported algorithms give 32 bytes (64 hex digits)."""

    algorithm: Algorithm
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


Reference = Digest | str
"""What names a blob in an image: a digest, or a tag name (a ``str``). The API parses a
reference once into one of the two; nothing tests it for ``":"`` again."""


def parse_digest(text: str) -> Digest:
    """Parse ``blake3:<hex>`` or ``sha256:<hex>`` (lower-case hex, 64 digits).

    Raises:
        ValueError: with a message fit for a client when the text is not a digest.
    """
    algorithm, sep, hex_part = text.partition(":")
    if not sep or algorithm not in ALGORITHMS:
        raise ValueError("a digest is 'blake3:<64 hex>' or 'sha256:<64 hex>'")
    if not _HEX64.fullmatch(hex_part):
        raise ValueError(f"a {algorithm} digest has 64 lower-case hex digits")
    return Digest(algorithm, hex_part)
