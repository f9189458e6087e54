"""The rules an image must pass before the registry stores it, by stable id.

Ids are kebab-case and part of the API: a refusal's JSON context names one as ``rule``
(see docs/security.md, "Image safety").
"""

from __future__ import annotations

from typing import Final

__all__ = ["RULES"]

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
    "vmdk-descriptor-only": "a vmdk descriptor without its data: its extents are other files",
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
    "format-not-allowed": "a format outside the server's --allowed-formats",
    "format-mismatch": "content whose format is not the one the upload declared",
}
