"""Content-addressed blob storage: bytes and digests only, never names."""

from cloudimg.blobstore.base import BlobStore, StagedBlob, StagingWriter, StoredFile
from cloudimg.blobstore.filesystem import FilesystemBlobStore

__all__ = ["BlobStore", "FilesystemBlobStore", "StagedBlob", "StagingWriter", "StoredFile"]
