"""The OCI slice's part of the catalog layer: the queries of its tables and columns.

Upload sessions (``uploads``), kept pushes (``manifests``) and the containerDisk
digests and ``/v2`` lookups (``reads``), as one :class:`OciStore` over the catalog's
engine and blob store. The rule of this package: it is the only part of the OCI slice
that may use SQLAlchemy, the catalog's models (``cloudimg.catalog.models``: one schema,
one Alembic history) and its transaction base (``cloudimg.catalog.transaction``), as
the catalog's own modules do; every other module of the slice asks an ``OciStore``.
Reference counts stay the catalog's: kept pushes take theirs through the transaction
base, and tag writes drop them through the hooks ``OciStore.hook_into`` registers.
"""

from __future__ import annotations

from cloudimg.oci.store.manifests import KeptPart, OciManifests, PushedManifest
from cloudimg.oci.store.reads import OciDigests, OciKind, OciReads
from cloudimg.oci.store.uploads import OciUploads, UploadSession

__all__ = [
    "KeptPart",
    "OciDigests",
    "OciKind",
    "OciStore",
    "PushedManifest",
    "UploadSession",
]


class OciStore(OciReads, OciUploads, OciManifests):
    """The OCI slice's tables over the same engine and blob store as the catalog
    (``OciStore(catalog.engine, catalog.blobs)``: the blocking twin of a SQLite engine
    is shared, ``cloudimg.catalog.database.blocking_reader``)."""
