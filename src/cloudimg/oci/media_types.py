"""OCI and Docker media types more than one layer needs (the catalog tells an index by it)."""

from __future__ import annotations

from cloudimg.containerdisk_layer import INDEX_MEDIA_TYPES

__all__ = ["INDEX_MEDIA_TYPES"]
