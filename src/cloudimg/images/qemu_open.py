"""What qemu 7.2 reads when it opens a probed VMDK or VHD: its virtual size and the other
files it would open.

oslo.utils' inspectors read these headers differently from qemu (a VHD's "original size"
where qemu takes the geometry; the createType of a descriptor that qemu ignores for a
sparse header; a capacity-0 header qemu follows to an embedded descriptor), so these
restate what ``block/vmdk.c`` (``vmdk_open``, ``vmdk_open_vmdk4``, ``vmdk_parent_open``,
``vmdk_read_cid``) and ``block/vpc.c`` (``vpc_open``) do. Every function raises
``ImageRefusedError`` (see :func:`cloudimg.images.rules.refuse`) for what must not be
stored, including headers qemu itself would refuse to open.
"""

from __future__ import annotations

import re
import struct
from typing import Final, NoReturn

from cloudimg.images.rules import refuse

__all__ = ["VMDK_DESCRIPTOR_END", "vmdk_sparse_virtual_size", "vpc_virtual_size"]

_SECTOR: Final = 512
_DESC_OFFSET: Final = 0x200
"""Where qemu reads a sparse VMDK's descriptor for its parent and CID: always sector 1,
whatever the header's ``desc_offset`` says."""
_DESC_SIZE: Final = 20 * _SECTOR
VMDK_DESCRIPTOR_END: Final = _DESC_OFFSET + _DESC_SIZE
"""The start bytes :func:`vmdk_sparse_virtual_size` needs."""
_GD_AT_END: Final = 0xFFFFFFFFFFFFFFFF
_MARKER_FOOTER: Final = 3
_MARKER_END_OF_STREAM: Final = 0
_FOOTER_BYTES: Final = 3 * _SECTOR
# VMDK4Header after the magic, packed little-endian: version, flags, capacity,
# granularity, desc_offset, desc_size, num_gtes_per_gt, rgd_offset, gd_offset,
# grain_offset, filler, check_bytes, compressAlgorithm.
_VMDK4: Final = struct.Struct("<IIQQQQIQQQB4sH")
_HEX: Final = re.compile(rb"[ \t\n\v\f\r]*[+-]?(0[xX])?[0-9a-fA-F]")
_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF

_VHD_MAX_GEOMETRY: Final = 65535 * 16 * 255
_VHD_MAX_SECTORS: Final = 0xFF000000
_VHD_SIZE_CREATORS: Final = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
"""Creator apps whose VHDs qemu sizes by the footer's current size, not the geometry."""


def _malformed(why: str) -> NoReturn:
    refuse("malformed-header", f"a vmdk that qemu would not open ({why})", format="vmdk")


def _descriptor_at_sector_one(start: bytes) -> bytes:
    """The text qemu's ``strstr`` searches: from byte 512, up to the first NUL."""
    return start[_DESC_OFFSET:VMDK_DESCRIPTOR_END].split(b"\0", 1)[0]


def _has_cid(desc: bytes, key: bytes) -> bool:
    """``vmdk_read_cid``: the first ``key`` found, one byte skipped, then ``%x`` parses."""
    at = desc[: _DESC_SIZE - 1].find(key)
    return at >= 0 and _HEX.match(desc, at + len(key) + 1) is not None


def _footer_header(footer: bytes) -> tuple[int, ...]:
    """The header copy of a streamOptimized footer, checked as ``vmdk_open_vmdk4`` does."""
    _, marker_size, marker_type = struct.unpack_from("<QII", footer, 0)
    end_val, end_size, end_type = struct.unpack_from("<QII", footer, 2 * _SECTOR)
    if (
        footer[_SECTOR : _SECTOR + 4] != b"KDMV"
        or marker_size != 0
        or marker_type != _MARKER_FOOTER
        or (end_val, end_size, end_type) != (0, 0, _MARKER_END_OF_STREAM)
    ):
        refuse("vmdk-footer-invalid", "a vmdk whose footer qemu finds invalid", format="vmdk")
    return _VMDK4.unpack_from(footer, _SECTOR + 4)


def vmdk_sparse_virtual_size(start: bytes, footer: bytes, size: int) -> int:
    """The virtual size qemu gives a ``KDMV`` file of ``size`` bytes.

    ``start``: its first :data:`VMDK_DESCRIPTOR_END` bytes (or all of it); ``footer``: the
    1536 bytes qemu reads as a footer (from the last whole sector minus three, zero-filled
    past the end as qemu's reads are). Refuses a header qemu would follow to a descriptor
    (capacity 0), a descriptor that names a parent, and what qemu could not open.
    """
    if len(start) < 4 + _VMDK4.size:
        _malformed("it ends inside its header")
    header = _VMDK4.unpack_from(start, 4)
    capacity, desc_offset, gd_offset = header[2], header[4], header[8]
    if capacity == 0 and desc_offset:
        refuse("vmdk-embedded-descriptor", _embedded_message(), format="vmdk")
    if gd_offset == _GD_AT_END:
        header = _footer_header(footer)
    version, _flags, capacity, granularity = header[0], header[1], header[2], header[3]
    gtes, grain_offset = header[6], header[9]
    if version > 3:
        _malformed(f"version {version}")
    if gtes > 512:
        _malformed("L2 table size too big")
    l1_entry_sectors = (gtes * granularity) & _U32
    if l1_entry_sectors == 0:
        _malformed("L1 entry size is invalid")
    if -(-size // _SECTOR) < grain_offset:
        _malformed("file truncated before its grains")
    l1_size = (((capacity + l1_entry_sectors - 1) & _U64) // l1_entry_sectors) & _U32
    if granularity > 0x200000 or l1_size > 32 * 1024 * 1024:
        _malformed("invalid granularity or L1 size")
    desc = _descriptor_at_sector_one(start)
    if b"parentFileNameHint" in desc:
        refuse("vmdk-parent", _parent_message(), format="vmdk")
    if not _has_cid(desc, b"CID") or not _has_cid(desc, b"parentCID"):
        _malformed("no CID in its descriptor")
    return int(capacity) * _SECTOR


def _embedded_message() -> str:
    return "a vmdk header of capacity 0 with a descriptor: qemu opens the extents it names"


def _parent_message() -> str:
    return "a vmdk whose descriptor names a parent (parentFileNameHint): qemu opens it"


def vpc_virtual_size(start: bytes) -> int:
    """The virtual size qemu gives a VHD with its footer copy at offset 0.

    Like Virtual PC, qemu takes cylinders x heads x sectors of the geometry, unless the
    creator app is one that sizes by the footer's current size (Hyper-V, disk2vhd,
    XenServer, XenConverter, qemu's ``qem2``) or the geometry is the largest there is.
    The footer's "original size", which oslo.utils reads, plays no part.
    """
    if len(start) < 64:
        refuse("malformed-header", "a vhd that ends inside its footer", format="vpc")
    creator_app = start[28:32]
    current_size: int = struct.unpack_from(">Q", start, 48)[0]
    cylinders, heads, sectors = struct.unpack_from(">HBB", start, 56)
    total = int(cylinders * heads * sectors)
    if creator_app in _VHD_SIZE_CREATORS or total == _VHD_MAX_GEOMETRY:
        total = current_size // _SECTOR
    if total > _VHD_MAX_SECTORS:
        refuse("malformed-header", "a vhd above 2040 GiB, which qemu does not open", format="vpc")
    return total * _SECTOR
