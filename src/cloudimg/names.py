"""Name rules for repositories, images and tags (the old server's, plus dots in tags)."""

from __future__ import annotations

import re

from cloudimg.errors import InvalidArgumentError

__all__ = [
    "refuse_probed_tag_name",
    "validate_image_name",
    "validate_repo_name",
    "validate_tag_name",
]

_REPO_OR_IMAGE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_TAG = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
_PROBED_SUFFIXES = (".dmg",)
"""Download URL endings qemu probes by name: ``dmg_probe`` claims a file (or an HTTP URL)
named ``*.dmg`` over raw, whatever its bytes (docs/security.md, "Image safety")."""


def _validate(kind: str, name: str, pattern: re.Pattern[str], low: int, high: int) -> str:
    if not low <= len(name) <= high or not pattern.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid {kind} name: {low} to {high} characters matching {pattern.pattern}",
            {kind: name[:200]},
        )
    return name


def validate_repo_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise ``InvalidArgumentError``."""
    return _validate("repo", name, _REPO_OR_IMAGE, 3, 63)


def validate_image_name(name: str) -> str:
    """Return ``name`` if it is a valid image name, else raise ``InvalidArgumentError``."""
    return _validate("image", name, _REPO_OR_IMAGE, 3, 63)


def validate_tag_name(name: str) -> str:
    """Return ``name`` if it is a valid tag name, else raise ``InvalidArgumentError``."""
    return _validate("tag", name, _TAG, 2, 128)


def refuse_probed_tag_name(name: str) -> str:
    """Return ``name`` unless a new tag so named would make qemu open its bytes as another
    format than the one recorded (``InvalidArgumentError``). Existing tags stay readable."""
    if name.endswith(_PROBED_SUFFIXES):
        raise InvalidArgumentError(
            "a new tag name may not end in .dmg: qemu-img would open a download URL so "
            "named as a dmg image, whatever its bytes",
            {"tag": name[:200]},
        )
    return name
