"""The blob store on S3-compatible object storage: see ``store.py`` for its design."""

from cloudimg.blobstore.s3.client import S3Location, S3StoreError
from cloudimg.blobstore.s3.store import S3BlobStore

__all__ = ["S3BlobStore", "S3Location", "S3StoreError"]
