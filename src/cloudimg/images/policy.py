"""What inspection found, what a server allows, and format names as qemu-img spells them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_ALLOWED_FORMATS",
    "DEFAULT_MAX_VIRTUAL_SIZE",
    "KNOWN_FORMATS",
    "Inspection",
    "InspectionPolicy",
    "normalize_format",
    "parse_allowed_formats",
]

DEFAULT_MAX_VIRTUAL_SIZE: Final = 2 * 1024**4
DEFAULT_ALLOWED_FORMATS: Final = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso")

KNOWN_FORMATS: Final = frozenset(
    {"raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi", "iso", "qed", "luks"}
)
"""Every format inspection can name, spelled as ``qemu-img -f`` takes them."""
_ALIASES: Final = {"vhd": "vpc"}


@dataclass(frozen=True, slots=True)
class Inspection:
    """What the inspector found in bytes it accepted."""

    format: str
    """qemu-img's name: raw, qcow2, vmdk, vpc (vhd), vhdx, vdi, iso (luks when allowed)."""
    virtual_size: int
    """Bytes of the disk a VM sees, as qemu-img counts them: for raw and iso the length
    of the file rounded up to whole 512-byte sectors."""
    partition_table: str | None
    """``gpt`` or ``mbr`` for a raw disk that has one, else None."""


@dataclass(frozen=True, slots=True)
class InspectionPolicy:
    """What a server accepts on top of the safety rules every image must pass."""

    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE
    allowed_formats: frozenset[str] = frozenset(DEFAULT_ALLOWED_FORMATS)
    """Format names (``vhd`` and ``vpc`` alike); checked against :func:`normalize_format`."""
    qemu_img: str | None = None
    """The qemu-img that confirms every accepted image before it is stored (see
    :mod:`cloudimg.images.qemu_img`); None: inspection's verdict alone."""


def normalize_format(text: str) -> str:
    """The qemu-img name of a format: ``VHD`` is ``vpc``, ``qcow2`` stays.

    Raises:
        ValueError: for a name inspection does not know.
    """
    name = text.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in KNOWN_FORMATS:
        known = ", ".join(sorted(KNOWN_FORMATS | _ALIASES.keys()))
        raise ValueError(f"unknown image format {text!r} (known: {known})")
    return name


def parse_allowed_formats(text: str) -> frozenset[str]:
    """The formats of a comma-separated list such as ``raw,qcow2,vhd``, normalized.

    Raises:
        ValueError: for an unknown name or an empty list.
    """
    names = frozenset(normalize_format(item) for item in text.split(",") if item.strip())
    if not names:
        raise ValueError("the list of allowed formats is empty")
    return names
