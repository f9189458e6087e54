"""What a VM disk image is: format, virtual size, and the safety rules it must pass.

Below ``api`` and ``maintenance``; uses oslo.utils' format inspectors (see
docs/security.md, "Image safety").
"""

from cloudimg.images.inspector import ImageInspector, inspect_reader
from cloudimg.images.policy import (
    DEFAULT_ALLOWED_FORMATS,
    DEFAULT_MAX_VIRTUAL_SIZE,
    KNOWN_FORMATS,
    Inspection,
    InspectionPolicy,
    normalize_format,
    parse_allowed_formats,
)
from cloudimg.images.qemu_img import cross_check, find_qemu_img
from cloudimg.images.rules import RULES

__all__ = [
    "DEFAULT_ALLOWED_FORMATS",
    "DEFAULT_MAX_VIRTUAL_SIZE",
    "KNOWN_FORMATS",
    "RULES",
    "ImageInspector",
    "Inspection",
    "InspectionPolicy",
    "cross_check",
    "find_qemu_img",
    "inspect_reader",
    "normalize_format",
    "parse_allowed_formats",
]
