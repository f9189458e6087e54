"""OCI and Docker media types more than one layer needs (the catalog tells an index by it)."""

from __future__ import annotations

from typing import Final

__all__ = ["INDEX_MEDIA_TYPES"]

INDEX_MEDIA_TYPES: Final = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
"""An image index (a manifest list): a manifest of manifests, one per platform."""
