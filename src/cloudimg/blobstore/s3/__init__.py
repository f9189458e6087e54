"""The blob store on S3-compatible object storage: see ``store.py`` for its design."""

from cloudimg.blobstore.s3.client import S3Location, S3StoreError
from cloudimg.blobstore.s3.store import S3BlobStore
from cloudimg.blobstore.s3.url import parse_s3_url

__all__ = ["S3BlobStore", "S3Location", "S3StoreError", "parse_s3_url"]
