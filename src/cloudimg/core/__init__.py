"""The registry core: every write use case of the registry, in plain async Python.

:class:`RegistryCore` is built once per app (``cloudimg.api.app``) over its
collaborators, given to it: the blob store, the catalog and what inspection accepts.
It knows no HTTP: a face (``/reg``: :mod:`cloudimg.api.reg`) turns a request into
calls (byte iterators, names, options) and the results or domain errors into answers.

- :mod:`cloudimg.core.ingest`: an upload (receive, check, inspect, commit) and
  :func:`commit_staged`, the end of every write of new bytes (``import-legacy`` too);
- :mod:`cloudimg.core.tags`: retag (and a push's commit by sha256), delete, immutability;
- :mod:`cloudimg.core.quotas`: the repositories' quotas, checked before an upload's bytes
  are stored and in the catalog's transaction of every upload's commit and retag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cloudimg.blobstore import BlobStore
from cloudimg.catalog import Catalog
from cloudimg.core.ingest import (
    BodyDetails,
    ImageBody,
    Reception,
    TagNames,
    Upload,
    Uploads,
    commit_staged,
)
from cloudimg.core.quotas import QuotaGate, Quotas
from cloudimg.core.tags import FinishedUploads, Retagged, TagWrites
from cloudimg.images import InspectionPolicy

__all__ = [
    "BodyDetails",
    "FinishedUploads",
    "ImageBody",
    "QuotaGate",
    "Quotas",
    "Reception",
    "RegistryCore",
    "Retagged",
    "TagNames",
    "TagWrites",
    "Upload",
    "Uploads",
    "commit_staged",
]


@dataclass(frozen=True)
class RegistryCore:
    """The write use cases, one object per concern, over the same collaborators."""

    uploads: Uploads
    tags: TagWrites
    quotas: QuotaGate | None
    """The repositories' quotas (None: no quota file, and no quota code on any write)."""

    @classmethod
    def over(
        cls,
        catalog: Catalog,
        blobs: BlobStore,
        policy: InspectionPolicy,
        uploads: FinishedUploads,
        *,
        max_image_size: int | None = None,
        quotas: Callable[[], Quotas] | None = None,
    ) -> RegistryCore:
        """The core over ``catalog`` and ``blobs``: inspection accepts what ``policy`` does,
        a retag finds a push's finished uploads in ``uploads``, an upload is at most
        ``max_image_size`` bytes (None: no limit), the repositories' quotas are what
        ``quotas`` gives at the moment (the quota file's rules, reloaded by its owner;
        None: there is no quota file).

        The quotas are registered with the catalog's tag writes, so every upload's commit
        and retag through this catalog (``/v2`` pushes too) is checked. Without a quota
        file nothing is registered: no write measures or locks anything for quotas.
        """
        gate = None
        if quotas is not None:
            gate = QuotaGate(catalog, quotas)
            catalog.tags.guard_quotas(gate)
        return cls(
            Uploads(catalog, blobs, policy, max_image_size, gate),
            TagWrites(catalog, blobs, policy, uploads),
            gate,
        )
