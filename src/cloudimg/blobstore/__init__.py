"""Content-addressed blob storage: bytes and digests only, never names."""

from cloudimg.blobstore.base import (
    BlobReader,
    BlobStore,
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
