"""Content-addressed blob storage: bytes and digests only, never names."""

from cloudimg.blobstore.base import BlobStore, StagedBlob, StagingWriter
from cloudimg.blobstore.filesystem import FilesystemBlobStore

__all__ = ["BlobStore", "FilesystemBlobStore", "StagedBlob", "StagingWriter"]
