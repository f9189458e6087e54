"""Checksum files: GNU ``SHA256SUMS``/``SHA512SUMS`` lines and BSD-style lines (Fedora's
``CHECKSUM``: ``SHA256 (name) = hex``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cloudimg.client.errors import VerificationError
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["Checksum", "file_checksum", "find_checksum"]

_GNU = re.compile(r"^(?P<hex>[0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *](?P<name>.+)$")
_BSD = re.compile(r"^(?P<algo>SHA256|SHA512) \((?P<name>.+)\) ?= (?P<hex>[0-9a-fA-F]+)$")
_LENGTHS = {"sha256": 64, "sha512": 128}
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Checksum:
    """An upstream checksum: ``sha256`` or ``sha512`` and its lower-case hex."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def find_checksum(text: str, name: str, where: str) -> Checksum:
    """The checksum ``text`` (a checksum file) gives ``name``.

    Lines of another form (comments, a clear-signed message's armour) are skipped.

    Raises:
        VerificationError: ``name`` is not listed, or listed twice with different sums.
    """
    found: set[Checksum] = set()
    for line in text.splitlines():
        line = line.strip()
        gnu, bsd = _GNU.match(line), _BSD.match(line)
        if gnu and gnu["name"] == name:
            hexdigest = gnu["hex"].lower()
            found.add(Checksum("sha256" if len(hexdigest) == 64 else "sha512", hexdigest))
        elif bsd and bsd["name"] == name:
            algorithm = bsd["algo"].lower()
            if len(bsd["hex"]) == _LENGTHS[algorithm]:
                found.add(Checksum(algorithm, bsd["hex"].lower()))
    if not found:
        raise VerificationError(f"{where} lists no checksum of {name}")
    if len({item.algorithm for item in found}) != len(found):
        raise VerificationError(f"{where} lists {name} twice with different checksums")
    # Both algorithms listed: the stronger one is checked.
    return max(found, key=lambda item: _LENGTHS[item.algorithm])


def file_checksum(path: Path, algorithm: str, progress: Progress | None = None) -> str:
    """The hex ``algorithm`` (``sha256``, ``sha512``) of the file at ``path``."""
    hasher = hashlib.new(algorithm)
    meter = ProgressMeter(progress, path.stat().st_size, "checked")
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            hasher.update(chunk)
            meter.add(len(chunk))
    meter.finish()
    return hasher.hexdigest()
