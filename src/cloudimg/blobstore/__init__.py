"""Content-addressed blob storage: bytes and digests only, never names."""

from cloudimg.blobstore.base import (
    BlobReader,
    BlobStore,
    BlobStoreUnavailableError,
    MaintenanceBlobStore,
    OpenedBlobStore,
    PlaceOutcome,
    ResumableStaging,
    StagedBlob,
    StagingWriter,
    StoredFile,
    Tap,
)
from cloudimg.blobstore.filesystem import FilesystemBlobStore

__all__ = [
    "BlobReader",
    "BlobStore",
    "BlobStoreUnavailableError",
    "FilesystemBlobStore",
    "MaintenanceBlobStore",
    "OpenedBlobStore",
    "PlaceOutcome",
    "ResumableStaging",
    "StagedBlob",
    "StagingWriter",
    "StoredFile",
    "Tap",
]
