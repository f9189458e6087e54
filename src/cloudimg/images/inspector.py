"""Stream inspection of a disk image: oslo.utils' format inspectors, then qemu's own view.

Every inspector of ``format_inspector.ALL_FORMATS`` sees the bytes, as its
``InspectWrapper`` does, so content that two formats claim is caught, and its safety
checks run. oslo's verdict is an input, not the oracle: the format qemu-img would probe
(:mod:`cloudimg.images.qemu_probe`) must be the one recorded, and the virtual size and
the files a VMDK names are read as qemu reads them (:mod:`cloudimg.images.qemu_open`).
The bytes come in the order they are stored, in chunks of any size, on the thread that
hashes them; the verdict (an :class:`Inspection` or an ``ImageRefusedError`` naming a
rule of :data:`RULES`) comes from :meth:`ImageInspector.finish`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from oslo_utils.imageutils import format_inspector as fi

from cloudimg.blobstore import BlobReader
from cloudimg.errors import ImageRefusedError
from cloudimg.images.policy import Inspection, InspectionPolicy, normalize_format
from cloudimg.images.qemu_img import cross_check
from cloudimg.images.qemu_open import (
    VMDK_DESCRIPTOR_END,
    vmdk_sparse_virtual_size,
    vpc_virtual_size,
)
from cloudimg.images.qemu_probe import probe
from cloudimg.images.rules import RULES, refuse

__all__ = ["ImageInspector", "inspect_reader"]

HEAD_BYTES: Final = 1024 * 1024
"""Bytes gathered before the inspectors see any: oslo's VMDK inspector parses a
text-only descriptor from the first chunk it is given (up to 1 MiB - 1 bytes, as qemu),
so the verdict must not depend on how the bytes happened to be chunked."""
_READ_BLOCK: Final = 4 * 1024 * 1024
_SLICE: Final = 64 * 1024
_START_BYTES: Final = max(16 * 1024, VMDK_DESCRIPTOR_END)
"""Bytes kept of the start: every magic number, qemu's probe and a sparse VMDK's descriptor."""
_TAIL_BYTES: Final = 2048
"""Bytes kept of the end: qemu reads a streamOptimized VMDK's footer from the last 2 KiB."""
_SECTOR: Final = 512
_NEVER_ACCEPTED: Final = frozenset({"qcow", "parallels", "bochs", "cloop"})
_NOT_DISKS: Final = (
    (b"\x1f\x8b\x08", "a gzip-compressed file: decompress it, then upload the disk"),
    (b"\xfd7zXZ\x00", "an xz-compressed file: decompress it, then upload the disk"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file: decompress it, then upload the disk"),
    (b"BZh", "a bzip2-compressed file: decompress it, then upload the disk"),
    (b"PK\x03\x04", "a zip archive: extract the disk, then upload it"),
    (b"\x7fELF", "an ELF executable, not a disk image"),
)
"""What no disk starts with but mistaken uploads do (a compressed cloud image, a binary)."""
"""Formats qemu probes that no ``--allowed-formats`` can name."""

_QEMU_NAMES: Final = {"vhd": "vpc"}
# How each format starts (offset, bytes): content that starts like a format its inspector
# does not match is a header that does not parse (or is cut short), not another format.
_MAGIC: Final = {
    "qcow2": (0, b"QFI\xfb"),
    "qed": (0, b"QED\x00"),
    "vhd": (0, b"conectix"),
    "vhdx": (0, b"vhdxfile"),
    "vmdk": (0, b"KDMV"),
    "vdi": (0x40, b"\x7f\x10\xda\xbe"),
    "luks": (0, b"LUKS\xba\xbe"),
}
_VMDK_CREATE_TYPES: Final = ("monolithicsparse", "streamoptimized")
_VMDK_EXTENT_ACCESS: Final = ("rw", "rdonly", "noaccess")
_GPT_PROTECTIVE: Final = 0xEE
_MBR_ENTRIES: Final = 446


class ImageInspector:
    """Fed the bytes in order (blocking, CPU only; call it on the hashing thread)."""

    def __init__(self, policy: InspectionPolicy, declared_format: str | None = None) -> None:
        """Raises ``ValueError`` for an unknown ``declared_format`` or allowed format."""
        self._policy = policy
        self._allowed = frozenset(normalize_format(name) for name in policy.allowed_formats)
        self._declared = None if declared_format is None else normalize_format(declared_format)
        # Raw matches everything by definition; the verdict handles "nothing else matched".
        self._inspectors = [cls() for name, cls in fi.ALL_FORMATS.items() if name != "raw"]
        self._fed = list(self._inspectors)
        self._failed: dict[str, Exception] = {}
        self._head: bytearray | None = bytearray()
        self._start = b""
        self._tail = b""
        self._length = 0
        self.refusal: ImageRefusedError | None = None
        """The refusal the first MiB already decides, once it has been fed (see
        :meth:`finish` for the verdict): an upload stops reading the rest."""

    def declare(self, declared_format: str) -> None:
        """The declared format when it is known only once the bytes have streamed (a form
        field after the image). Raises ``ValueError`` for an unknown name."""
        self._declared = normalize_format(declared_format)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """The next bytes of the image. Never raises for what the bytes contain."""
        self._length += len(chunk)
        self._tail = (self._tail + bytes(memoryview(chunk)[-_TAIL_BYTES:]))[-_TAIL_BYTES:]
        if self._head is not None:
            if self._head or len(chunk) < HEAD_BYTES:  # an upload's first batch is not copied
                self._head += chunk
                if len(self._head) < HEAD_BYTES:
                    return
                chunk = self._head
            view = memoryview(chunk)
            self._eat_head(view[:HEAD_BYTES])
            chunk = view[HEAD_BYTES:]
        if chunk and self._fed:
            self._eat(chunk)

    def finish(self, size: int) -> Inspection:
        """The verdict on the ``size`` bytes fed.

        Raises:
            ImageRefusedError: ``context["rule"]`` names the rule of :data:`RULES` broken.
        """
        if size != self._length:
            raise ValueError(f"finish({size}) after {self._length} bytes were fed")
        if self._head is not None:
            self._eat_head(memoryview(self._head))
        for inspector in self._inspectors:
            inspector.finish()  # marks regions captured from the end (a VMDK footer) complete
        try:
            inspection = self._as_qemu_opens(self._verdict(size), size)
        except ImageRefusedError:
            raise
        except Exception as exc:  # the inspector stumbled on what it read: refuse, never store
            refuse("malformed-header", f"{RULES['malformed-header']} ({exc})")
        self._check_policy(inspection)
        return inspection

    def _eat_head(self, head: memoryview) -> None:
        """The first chunk every inspector sees: ``HEAD_BYTES``, or all there is."""
        self._head = None
        self._start = bytes(head[:_START_BYTES])
        if head:
            self._eat(head)
        try:
            self._refuse_early()
        except ImageRefusedError as exc:
            self.refusal = exc
        except Exception:  # what the head does not decide, finish() does
            pass

    def _eat(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        for inspector in list(self._fed):
            try:
                decided = _eat(inspector, view)
            except Exception as exc:  # as InspectWrapper: a format that fails is not this one
                self._failed[inspector.NAME] = exc
                self._fed.remove(inspector)
                continue
            if decided:
                self._fed.remove(inspector)

    def _verdict(self, size: int) -> Inspection:
        matches = [i for i in self._inspectors if i.NAME not in self._failed and _matches(i)]
        names = {i.NAME for i in matches}
        for name, (offset, magic) in _MAGIC.items():
            if name not in names and self._start[offset : offset + len(magic)] == magic:
                reason = self._failed.get(name, "it ends before its header does")
                refuse("malformed-header", f"a {name} header that does not parse ({reason})")
        if names == {"iso", "gpt"}:
            # A hybrid ISO (isohybrid, xorriso) carries an MBR or GPT to boot from a disk.
            matches = [i for i in matches if i.NAME == "iso"]
        if len(matches) > 1:
            formats = sorted(_QEMU_NAMES.get(n, n) for n in names)
            refuse("multiple-formats", f"it matches {', '.join(formats)}", formats=formats)
        if not matches:
            return Inspection("raw", size, None)
        return _inspect_match(matches[0], size)

    def _refuse_early(self) -> None:
        """The refusals the head decides alone, each one :meth:`finish` gives too: what
        qemu's probe makes of it, a qcow2 header's safety checks and virtual size, the
        declared and allowed formats. Everything else waits for the end of the stream."""
        probed = probe(self._start)
        if probed.tied:
            return  # finish() names the formats
        found = probed.format
        if found == "raw":
            self._refuse_not_a_disk(len(self._start) or 1)
            return
        qcow = [i for i in self._inspectors if isinstance(i, fi.QcowInspector)]
        if found in ("qcow", "qcow2") and qcow[0].complete and _matches(qcow[0]):
            size = _inspect_match(qcow[0], 0).virtual_size // _SECTOR * _SECTOR
            self._check_policy(Inspection("qcow2", size, None))
            return
        if found == "qed":
            refuse("qed", RULES["qed"], format="qed")
        if found in _NEVER_ACCEPTED:
            refuse("format-not-allowed", f"qemu-img would open it as {found}", format=found)
        if found == "vmdk" and self._start[:4] != b"KDMV":
            # A text descriptor oslo parsed gets its rule (as finish() gives it) first.
            vmdk = [i for i in self._inspectors if isinstance(i, fi.VMDKInspector)]
            if vmdk and _matches(vmdk[0]):
                _inspect_match(vmdk[0], 0)
            self._vmdk_virtual_size(len(self._start))  # COWD or a text descriptor: refused
        if found == "vmdk":
            self._refuse_embedded_or_parent()
        self._check_policy(Inspection(found, 0, None))

    def _refuse_embedded_or_parent(self) -> None:
        if len(self._start) < 36:
            return
        capacity, _granularity, desc_offset = struct.unpack_from("<QQQ", self._start, 12)
        if capacity == 0 and desc_offset:
            refuse("vmdk-embedded-descriptor", RULES["vmdk-embedded-descriptor"], format="vmdk")
        descriptor = self._start[512:VMDK_DESCRIPTOR_END].split(b"\0", 1)[0]
        if b"parentFileNameHint" in descriptor:
            refuse("vmdk-parent", RULES["vmdk-parent"], format="vmdk")

    def _as_qemu_opens(self, inspection: Inspection, size: int) -> Inspection:
        """oslo's verdict, checked against the format qemu would probe and sized as qemu
        sizes it; refused where qemu would open something else."""
        probed = probe(self._start)
        if probed.tied:
            formats = sorted(probed.claims)
            refuse(
                "multiple-formats", f"qemu's probe matches {', '.join(formats)}", formats=formats
            )
        found = probed.format
        if found == "raw":
            self._refuse_not_a_disk(size)
        virtual = self._vmdk_virtual_size(size) if found == "vmdk" else None
        if found == "qed":
            refuse("qed", RULES["qed"], format="qed")
        if found in _NEVER_ACCEPTED:
            message = f"qemu-img would open it as {found}, which this registry never accepts"
            refuse("format-not-allowed", message, format=found)
        inspected = "raw" if inspection.format == "iso" else inspection.format
        if inspected != found:
            message = f"inspection reads {inspection.format} but qemu-img would open {found}"
            refuse("format-ambiguous", message, format=found, inspected=inspection.format)
        if found == "raw":  # qemu counts a raw file in whole sectors, the last one padded
            virtual = -(-size // _SECTOR) * _SECTOR
        elif found == "vpc":
            virtual = vpc_virtual_size(self._start)
        elif found == "vdi":  # qemu rounds an odd size up to whole sectors
            virtual = -(-inspection.virtual_size // _SECTOR) * _SECTOR
        elif found in ("qcow2", "vhdx"):  # qemu counts whole sectors
            virtual = inspection.virtual_size // _SECTOR * _SECTOR
        if virtual is None:
            return inspection
        return Inspection(inspection.format, virtual, inspection.partition_table)

    def _refuse_not_a_disk(self, size: int) -> None:
        """Raw content that is no disk: nothing at all, or a known non-disk file."""
        if size == 0:
            refuse("empty-image", RULES["empty-image"])
        for magic, what in _NOT_DISKS:
            if self._start.startswith(magic) and (magic != b"BZh" or self._start[3:4].isdigit()):
                refuse("not-a-disk", f"it is {what}", kind=what.split(",")[0].split(":")[0])

    def _vmdk_virtual_size(self, size: int) -> int:
        """A file qemu probes as vmdk: only a sparse ``KDMV`` one holds its own data."""
        magic = self._start[:4]
        if magic == b"COWD":
            refuse("vmdk-cowd", RULES["vmdk-cowd"], format="vmdk")
        if magic != b"KDMV":
            refuse("vmdk-descriptor-only", RULES["vmdk-descriptor-only"], format="vmdk")
        # qemu reads the footer 1536 bytes before the end of the last whole sector.
        offset = -(-size // _SECTOR) * _SECTOR - 3 * _SECTOR
        tail_start = size - len(self._tail)
        footer = b"" if offset < 0 else self._tail[offset - tail_start :]
        return vmdk_sparse_virtual_size(self._start, footer.ljust(3 * _SECTOR, b"\0"), size)

    def _check_policy(self, inspection: Inspection) -> None:
        found = inspection.format
        if self._declared is not None and self._declared != found:
            refuse(
                "format-mismatch",
                f"it was declared {self._declared} but is {found}",
                format=found,
                declared=self._declared,
            )
        if found not in self._allowed:
            allowed = sorted(self._allowed)
            refuse(
                "format-not-allowed",
                f"this server does not accept {found} images",
                format=found,
                allowed=allowed,
            )
        limit = self._policy.max_virtual_size
        if inspection.virtual_size > limit:
            refuse(
                "virtual-size-too-large",
                f"its virtual size of {inspection.virtual_size} bytes is above the limit "
                f"of {limit}",
                format=found,
                virtual_size=inspection.virtual_size,
                limit=limit,
            )


def _eat(inspector: fi.FileInspector, view: memoryview) -> bool:
    """Feed one inspector; True when more bytes can change nothing for it.

    oslo's inspectors expect small reads: VHDX finds its next region only on the read
    after the one that completed the previous, and captures a new region only from the
    read in which it was found, so it is fed in slices of ``_SLICE`` bytes. A VMDK is fed
    whole chunks, as its text-descriptor parse reads the first one. An inspector that
    waits only for the end of the stream (a VMDK footer) is given only the last bytes
    its end regions keep of each chunk: the rest would be copied and dropped. (Its
    position count then lags, which none of its captured regions reads again.) oslo's
    regions copy what they capture, so the caller's buffer is never kept.
    """
    regions = [inspector.region(name) for name in inspector.context_info]
    ends = [region for region in regions if isinstance(region, fi.EndCaptureRegion)]
    data: Any = view
    if ends and all(region.complete for region in regions if region not in ends):
        keep = max(region.length for region in ends)
        inspector.eat_chunk(data[-keep:] if len(view) > keep else data)
        return False
    step = len(view) if isinstance(inspector, fi.VMDKInspector) else _SLICE
    for start in range(0, len(view), max(step, 1)):
        was_complete, count = inspector.complete, len(inspector.context_info)
        inspector.eat_chunk(data[start : start + step])
        # Complete before and after, with no region added: nothing is left to read.
        if was_complete and inspector.complete and count == len(inspector.context_info):
            return True
    return False


def _matches(inspector: fi.FileInspector) -> bool:
    try:
        return inspector.format_match
    except Exception:  # oslo's VMDK reads an undecodable text head so; it is no VMDK
        return False


def _inspect_match(inspector: fi.FileInspector, size: int) -> Inspection:
    """The verdict on content exactly one inspector claims."""
    name = inspector.NAME
    if not inspector.complete:
        refuse("malformed-header", f"the {name} image ends before its header does", format=name)
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        rule = _rule_of(inspector, set(exc.failures))
        refuse(rule, RULES[rule], format=_QEMU_NAMES.get(name, name))
    if name == "gpt":
        return Inspection("raw", size, _partition_table(inspector))
    if name == "iso":
        return Inspection("iso", size, None)  # qemu reads an ISO as a raw disk
    if isinstance(inspector, fi.VMDKInspector) and not inspector.has_region("header"):
        refuse("vmdk-descriptor-only", RULES["vmdk-descriptor-only"], format="vmdk")
    if isinstance(inspector, fi.LUKSInspector):
        # oslo types the header as a partial TypedDict; no offset is a malformed header.
        offset = inspector.header_items.get("payload_offset")
        if offset is None:
            refuse("malformed-header", "a luks header without a payload offset", format=name)
        payload = offset * 512
        if payload > size:
            refuse("malformed-header", "a luks header whose payload starts past the end")
        return Inspection("luks", size - payload, None)
    if isinstance(inspector, fi.VHDXInspector) and not inspector.has_region("vds"):
        refuse("malformed-header", "a vhdx without a virtual disk size", format=name)
    return Inspection(_QEMU_NAMES.get(name, name), inspector.virtual_size, None)


def _rule_of(inspector: fi.FileInspector, failed: set[str]) -> str:
    """The rule id of the first failed oslo safety check, most telling first."""
    if isinstance(inspector, fi.QcowInspector):
        if inspector.qemu_header_info.get("version") not in (2, 3):
            return "qcow2-unknown-version"  # the other fields mean nothing then
        for check, rule in (
            ("backing_file", "qcow2-backing-file"),
            ("data_file", "qcow2-data-file"),
            ("unknown_features", "qcow2-unknown-features"),
        ):
            if check in failed:
                return rule
    if isinstance(inspector, fi.VMDKInspector):
        if "descriptor" in failed:
            return _vmdk_descriptor_rule(inspector)
        if "footer" in failed:
            return "vmdk-footer-invalid"
    by_check = {"banned": "qed", "version": "luks-version", "mbr": "partition-table-invalid"}
    for check, rule in by_check.items():
        if check in failed:
            return rule
    return "safety-check-failed"


def _vmdk_descriptor_rule(inspector: fi.VMDKInspector) -> str:
    """Which part of the descriptor oslo's strict parse refused."""
    if getattr(inspector, "vmdktype", None) not in _VMDK_CREATE_TYPES:
        return "vmdk-create-type"
    lines = (line.strip() for line in (inspector.desc_text or "").split("\n"))
    if any(line.split(" ")[0] in _VMDK_EXTENT_ACCESS and "/" in line for line in lines):
        return "vmdk-extent-path"
    return "vmdk-descriptor-invalid"


def _partition_table(inspector: fi.FileInspector) -> str:
    """``gpt`` when the MBR is a GPT's protective one, else ``mbr``."""
    mbr = inspector.region("mbr").data
    for index in range(4):
        entry = _MBR_ENTRIES + 16 * index
        (kind,) = struct.unpack_from("<B", mbr, entry + 4)
        if kind == _GPT_PROTECTIVE:
            return "gpt"
    return "mbr"


def inspect_reader(
    reader: BlobReader,
    policy: InspectionPolicy,
    on_bytes: Callable[[int], None] | None = None,
) -> Inspection:
    """Reads a stored blob start to end, then has qemu-img confirm the verdict when the
    policy names one (blocking; run it on a thread). Same errors."""
    inspector = ImageInspector(policy)
    offset = 0
    while chunk := reader.read(_READ_BLOCK, offset):
        inspector.feed(chunk)
        offset += len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    inspection = inspector.finish(offset)
    cross_check(policy.qemu_img, reader, inspection)
    return inspection
