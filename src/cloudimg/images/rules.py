"""The rules an image must pass before the registry stores it, by stable id.

Ids are kebab-case and part of the API: a refusal's JSON context names one as ``rule``
(see docs/security.md, "Image safety").
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

from cloudimg.errors import ImageRefusedError

__all__ = ["RULES", "refuse"]

RULES: Final[dict[str, str]] = {
    "qcow2-backing-file": "a qcow2 with a backing file makes qemu open another file by name, "
    "on the downloader's host",
    "qcow2-data-file": "a qcow2 with an external data file makes qemu read and write another "
    "file by name (CVE-2024-32498)",
    "qcow2-unknown-features": "a qcow2 with incompatible feature bits this registry does not "
    "know: qemu may read it differently from what was inspected",
    "qcow2-unknown-version": "a qcow2 whose version is neither 2 nor 3",
    "vmdk-create-type": "a vmdk whose createType is not monolithicSparse or streamOptimized: "
    "the others keep their data in other files (CVE-2022-47951)",
    "vmdk-descriptor-invalid": "a vmdk descriptor that does not parse strictly, or names no extent",
    "vmdk-extent-path": "a vmdk extent that names a path (contains '/'): qemu would open that "
    "file (CVE-2022-47951)",
    "vmdk-descriptor-only": "a vmdk text descriptor (what qemu's probe takes for one: "
    "'version=N' after blank and comment lines, whatever else the file holds): its extents "
    "are other files, which qemu opens by name (CVE-2022-47951)",
    "vmdk-embedded-descriptor": "a sparse vmdk header of capacity 0 with a descriptor: qemu "
    "then opens the extents that descriptor names (CVE-2022-47951)",
    "vmdk-parent": "a vmdk whose descriptor names a parent (parentFileNameHint, anywhere in "
    "the text qemu reads at sector 1): qemu opens it as a backing file",
    "vmdk-cowd": "a VMware ESX COWD sparse vmdk: no current tool makes one, and its layout "
    "is not checked",
    "vmdk-footer-invalid": "a streamOptimized vmdk whose footer disagrees with its header",
    "qed": "qed images are not accepted (qemu deprecated the format; nothing checks them)",
    "luks-version": "a luks container of another version than 1",
    "multiple-formats": "content that more than one format claims (e.g. a qcow2 header in an "
    "ISO's system area), apart from the known ISO hybrid layouts",
    "partition-table-invalid": "a gpt or mbr partition table that fails its safety check",
    "malformed-header": "content that starts like a known format but whose header does not "
    "parse, or ends before it does",
    "safety-check-failed": "a safety check of the format inspector without a rule of its own",
    "virtual-size-too-large": "a virtual size above the server's --max-virtual-size "
    "(CVE-2013-4463: a tiny file that expands to fill the downloader's disk)",
    "format-not-allowed": "a format outside the server's --allowed-formats, or one qemu "
    "probes that the registry never accepts (qcow, parallels, bochs, cloop)",
    "format-ambiguous": "content that qemu-img would open as another format than the one "
    "inspection reads: what the registry records must be what qemu sees",
    "qemu-img-disagrees": "qemu-img info, run on the staged bytes, sees another format, "
    "virtual size or an external file than the inspection recorded",
    "empty-image": "an empty file: no disk has zero bytes, and a VM cannot boot from one",
    "not-a-disk": "raw content that starts as no disk does but mistaken uploads do: a "
    "compressed file (gzip, xz, zstd, bzip2, zip) or an executable (ELF)",
    "format-mismatch": "content whose format is not the one the upload declared",
}


def refuse(rule: str, message: str, **context: Any) -> NoReturn:
    """Raise the refusal of ``rule`` (a key of :data:`RULES`) with ``message``."""
    raise ImageRefusedError(f"the image is refused: {message}", {"rule": rule, **context})
