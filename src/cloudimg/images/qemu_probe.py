"""Which format qemu-img picks for bytes it opens without ``-f``, as qemu 7.2 decides it.

qemu reads the first :data:`PROBE_BYTES` of a file and asks every block driver to score
them (``bdrv_probe_all`` in ``block.c``); the highest score wins and ``raw`` scores 1.
The functions here restate those probes (``block/*.c``, each driver's ``bdrv_probe``) so
that cloudimg records the format qemu will open, whatever a library's inspector thinks.
``dmg`` is the exception: qemu probes it by a ``.dmg`` file name, never by content, so
the registry keeps tags from ending in ``.dmg`` (:mod:`cloudimg.names`).

The reasons, and the CVEs behind them, are in docs/security.md, "Image safety".
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["PROBE_BYTES", "Probe", "probe"]

PROBE_BYTES: Final = 512
"""``BLOCK_PROBE_BUF_SIZE``: qemu probes on the first 512 bytes only."""

_CLOOP_MAGIC: Final = (
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
)
_VMDK_VERSIONS: Final = tuple(f"version={n}".encode() for n in (1, 2, 3))


def _qcow_version(buf: bytes) -> int | None:
    if len(buf) < 8 or buf[:4] != b"QFI\xfb":
        return None
    return int(struct.unpack_from(">I", buf, 4)[0])


def _qcow(buf: bytes) -> int:
    # qcow_probe: version 1 only (its QCowHeader is 48 bytes).
    return 100 if len(buf) >= 48 and _qcow_version(buf) == 1 else 0


def _qcow2(buf: bytes) -> int:
    # qcow2_probe: any version from 2 up (qemu refuses to open the ones it does not know).
    version = _qcow_version(buf)
    return 100 if len(buf) >= 104 and version is not None and version >= 2 else 0


def _qed(buf: bytes) -> int:
    return 100 if len(buf) >= 64 and buf[:4] == b"QED\x00" else 0


def vmdk_text_claims(buf: bytes) -> bool:
    """``vmdk_probe`` on text: ``#`` lines and lines of spaces only (``\\n`` or ``\\r\\n``)
    are skipped; the first other line must be ``version=1``, ``2`` or ``3`` at column 0.
    An empty line or anything else ends the search. NUL and control bytes elsewhere do
    not matter to qemu (they did to oslo.utils, which then read the file as raw)."""
    p, end = 0, len(buf)
    while p < end:
        if buf[p] == ord("#"):
            while p < end and buf[p] != ord("\n"):
                p += 1
            p += 1
            continue
        if buf[p] == ord(" "):
            while p < end and buf[p] == ord(" "):
                p += 1
            if p < end and buf[p] == ord("\r"):
                p += 1
            if p == end or buf[p] != ord("\n"):
                return False
            p += 1
            continue
        line = buf[p : p + 11]
        return any(
            line.startswith(v + b"\n") or line.startswith(v + b"\r\n") for v in _VMDK_VERSIONS
        )
    return False


def _vmdk(buf: bytes) -> int:
    if len(buf) < 4:
        return 0
    if buf[:4] in (b"KDMV", b"COWD"):
        return 100
    return 100 if vmdk_text_claims(buf) else 0


def _vpc(buf: bytes) -> int:
    return 100 if buf[:8] == b"conectix" else 0


def _vhdx(buf: bytes) -> int:
    return 100 if buf[:8] == b"vhdxfile" else 0


def _vdi(buf: bytes) -> int:
    # vdi_probe: the header (400 bytes) must be there; its signature sits at 0x40.
    return 100 if len(buf) >= 400 and buf[0x40:0x44] == b"\x7f\x10\xda\xbe" else 0


def _parallels(buf: bytes) -> int:
    if len(buf) < 64 or buf[:16] not in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        return 0
    return 100 if struct.unpack_from("<I", buf, 16)[0] == 2 else 0


def _c_string(field: bytes) -> bytes:
    """What C's ``strcmp`` compares: the bytes up to the first NUL."""
    return field.split(b"\0", 1)[0]


def _bochs(buf: bytes) -> int:
    if len(buf) < 512:
        return 0
    magic, kind, subtype = buf[0:32], buf[32:48], buf[48:64]
    (version,) = struct.unpack_from("<I", buf, 64)
    if (
        _c_string(magic) == b"Bochs Virtual HD Image"
        and _c_string(kind) == b"Redolog"
        and _c_string(subtype) == b"Growing"
        and version in (0x00020000, 0x00010000)
    ):
        return 100
    return 0


def _cloop(buf: bytes) -> int:
    return 2 if buf.startswith(_CLOOP_MAGIC) else 0


def _luks(buf: bytes) -> int:
    # qcrypto_block_luks_has_format: magic, then version 1 (big-endian); LUKS2 probes raw.
    if len(buf) < 8 or buf[:6] != b"LUKS\xba\xbe":
        return 0
    return 100 if struct.unpack_from(">H", buf, 6)[0] == 1 else 0


_PROBES: Final[dict[str, Callable[[bytes], int]]] = {
    "bochs": _bochs,
    "cloop": _cloop,
    "luks": _luks,
    "parallels": _parallels,
    "qcow": _qcow,
    "qcow2": _qcow2,
    "qed": _qed,
    "vdi": _vdi,
    "vhdx": _vhdx,
    "vmdk": _vmdk,
    "vpc": _vpc,
}
"""Every driver of Debian 12's qemu-img (and of the CDI importer's) that probes content."""


@dataclass(frozen=True, slots=True)
class Probe:
    """What qemu's probing makes of the first bytes of a file."""

    format: str
    """The winner, spelled as ``qemu-img -f`` takes it; ``raw`` when no driver claims."""
    claims: tuple[str, ...]
    """Every driver that scored above raw, highest first (more than one: ambiguous)."""
    tied: bool
    """Two drivers share the top score: which wins depends on qemu's driver order."""


def probe(head: bytes) -> Probe:
    """qemu's verdict on ``head`` (the first bytes of the file; only 512 are looked at)."""
    buf = bytes(head[:PROBE_BYTES])
    scores = {name: score for name, check in _PROBES.items() if (score := check(buf)) > 1}
    if not scores:
        return Probe("raw", (), False)
    ranked = sorted(scores, key=lambda name: (-scores[name], name))
    top = scores[ranked[0]]
    tied = sum(1 for score in scores.values() if score == top) > 1
    return Probe(ranked[0], tuple(ranked), tied)
