"""What every ``/v2`` handler is given: the slice's collaborators, as one dependency.

``face`` (an :class:`OciFace`, built once by :func:`cloudimg.oci.http.routes.oci_routes`)
carries the catalog (names and tag writes), the OCI store, the blob store, the
containerDisks, the upload sessions and what keeping a push works over, so a handler
names what it needs from one place instead of a parameter each.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.params import SkipValidation

from cloudimg.api.download import Redirects
from cloudimg.blobstore import BlobStore
from cloudimg.catalog import Catalog
from cloudimg.config import Settings
from cloudimg.core import QuotaGate
from cloudimg.oci.digests import ContainerDisks
from cloudimg.oci.keep import KeepContext
from cloudimg.oci.sessions import UploadSessions
from cloudimg.oci.store import OciStore

__all__ = ["API_VERSION_HEADER", "MANIFEST_PATH", "Face", "OciFace"]

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
MANIFEST_PATH = "/{repo:str}/{image:str}/manifests/{reference:str}"
"""The route of a manifest by tag or digest (pulled, pushed and deleted)."""


@dataclass(frozen=True, slots=True)
class OciFace:
    """The ``/v2`` handlers' collaborators."""

    catalog: Catalog
    store: OciStore
    blobs: BlobStore
    disks: ContainerDisks
    sessions: UploadSessions
    keeping: KeepContext
    settings: Settings
    redirects: Redirects
    """Where a GET of a stored blob goes instead (``--redirect-downloads``)."""

    @classmethod
    def over(
        cls, keeping: KeepContext, disks: ContainerDisks, quotas: QuotaGate | None = None
    ) -> OciFace:
        sessions = UploadSessions(
            keeping.store, keeping.blobs, keeping.settings.max_image_size, quotas
        )
        return cls(
            keeping.catalog,
            keeping.store,
            keeping.blobs,
            disks,
            sessions,
            keeping,
            keeping.settings,
            Redirects(
                keeping.blobs,
                keeping.settings.redirect_expiry_secs,
                keeping.settings.redirect_downloads,
            ),
        )


Face = SkipValidation[OciFace]
