"""Upstream feeds: ``cloudimg sync`` follows a distribution's images into a tag.

One module per job: ``config`` (a feed file), ``checksums`` (SHA256SUMS, SHA512SUMS,
Fedora's CHECKSUM), ``signature`` (OpenPGP with the operator's keys, through ``gpg``),
``upstream`` (HTTP reads of the upstream: conditional, resumable), ``directory`` (an
HTTP directory with a checksum file), ``simplestreams`` (a simplestreams index),
``oci_source`` (a containerDisk in another registry) and ``sync`` (the driver: compare,
download, verify, push). Client code: nothing of the server is imported.
"""
