"""The OCI view of stored disks: generated containerDisks, their digests, media types."""
