"""The invariants of docs/architecture.md, checked from outside a server on its data root.

The catalog (a SQLite file or a PostgreSQL database) is read with the plain driver
(``sqlite3``, ``asyncpg``) in one read-only transaction, so these checks see what a fresh
reader sees and share no code with the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import RunningServer
from tests.databases import read_snapshot
from tests.support import POLL_SECS, blake3_hex, blob_path, poll, sha256_hex

if TYPE_CHECKING:
    from cloudimg.blobstore.s3 import S3BlobStore

__all__ = [
    "CatalogSnapshot",
    "assert_invariants",
    "read_catalog",
    "wait_for_no_staging",
]


@dataclass(frozen=True)
class CatalogSnapshot:
    """The rows of the catalog that the invariants talk about."""

    blobs: dict[str, tuple[int, str, int]]
    """blake3 digest -> (size, sha256, refcount)."""
    tag_digests: list[str]
    """The digest of every row of ``tags`` (one entry per tag)."""
    quarantined: frozenset[str] = frozenset()
    """Blobs fsck found damaged: their file sits in ``quarantine/``, not in the blob tree."""
    retained_digests: list[str] = field(default_factory=list)
    """The digest of every retained ``tag_history`` entry (each holds one reference)."""
    kept_digests: list[str] = field(default_factory=list)
    """Every layer and config a kept ``/v2`` manifest holds (one reference each)."""

    def references(self, digest: str) -> int:
        """How many tags, retained history entries and kept manifests name ``digest``."""
        return (
            self.tag_digests.count(digest)
            + self.retained_digests.count(digest)
            + self.kept_digests.count(digest)
        )

    def refcount(self, digest: str) -> int | None:
        """The stored reference count of ``digest``, None when there is no such blob row."""
        row = self.blobs.get(digest)
        return None if row is None else row[2]


def read_catalog(server: RunningServer) -> CatalogSnapshot:
    """A consistent read-only snapshot of the ``blobs``, ``tags`` and ``tag_history`` tables."""
    blob_rows, tag_rows, quarantined_rows, retained_rows, kept_rows = read_snapshot(
        server.database_url,
        [
            ("SELECT digest, size, sha256, refcount FROM blobs", ()),
            ("SELECT digest FROM tags", ()),
            ("SELECT digest FROM blobs WHERE quarantined_at IS NOT NULL", ()),
            ("SELECT digest FROM tag_history WHERE retained", ()),
            (
                "SELECT layer_blob FROM oci_manifests WHERE layer_blob IS NOT NULL"
                " UNION ALL SELECT config_blob FROM oci_manifests WHERE config_blob IS NOT NULL",
                (),
            ),
        ],
    )
    blobs = {digest: (size, sha256, refcount) for digest, size, sha256, refcount in blob_rows}
    tag_digests = [digest for (digest,) in tag_rows]
    quarantined = frozenset(digest for (digest,) in quarantined_rows)
    retained = [digest for (digest,) in retained_rows]
    kept = [digest for (digest,) in kept_rows]
    return CatalogSnapshot(blobs, tag_digests, quarantined, retained, kept)


def _leftovers(server: RunningServer, name: str) -> list[Path]:
    directory = server.data_root / name
    return sorted(directory.iterdir()) if directory.exists() else []


def wait_for_no_staging(server: RunningServer, timeout: float = POLL_SECS) -> list[Path]:
    """Poll until the staging directory is empty; return what is left at the deadline."""
    poll(lambda: not server.staging_files(), timeout)
    return server.staging_files()


def assert_invariants(server: RunningServer, bucket: S3BlobStore | None = None) -> None:
    """Assert invariants 1, 2 and 5 of docs/architecture.md for a server with no request in flight.

    - every blob row's refcount equals the number of tags plus retained history entries
      plus kept ``/v2`` manifests' layers and configs naming it, and is positive;
    - every tag and every retained history entry names a blob row (so every retained
      digest downloads its bytes: the file checks below cover every row);
    - every blob row has a blob file with the catalog's size, blake3 and sha256 (except
      quarantined blobs, whose file fsck moved away);
    - there is no blob file without a blob row, and no trash or staging file.

    ``bucket``: the server's blobs are in a bucket, read through this store over it
    (``list_blobs``, ``open``, ``list_trash``, ``list_staging``; trash is what gc has
    not purged) instead of the data root.
    """
    snapshot = read_catalog(server)
    problems: list[str] = []

    for digest, (_size, _sha256, refcount) in snapshot.blobs.items():
        references = snapshot.references(digest)
        if refcount != references:
            problems.append(f"blob {digest}: refcount {refcount}, {references} reference(s)")
        if refcount <= 0:
            problems.append(f"blob {digest}: refcount {refcount} but the row remains")
    for digest in set(snapshot.tag_digests) - set(snapshot.blobs):
        problems.append(f"tag digest {digest} has no blob row")
    for digest in set(snapshot.retained_digests) - set(snapshot.blobs):
        problems.append(f"retained history digest {digest} has no blob row")

    stored = _in_bucket(bucket) if bucket is not None else None
    for digest, (size, sha256, _refcount) in snapshot.blobs.items():
        if digest in snapshot.quarantined:
            continue
        if stored is not None:
            data = stored.blobs.get(digest)
            if data is None:
                problems.append(f"blob {digest}: no object")
                continue
        else:
            path = blob_path(server.data_root, digest)
            if not path.is_file():
                problems.append(f"blob {digest}: no file")
                continue
            data = path.read_bytes()
        if len(data) != size:
            problems.append(f"blob {digest}: file has {len(data)} bytes, catalog says {size}")
        if blake3_hex(data) != digest:
            problems.append(f"blob {digest}: file content has another blake3")
        if sha256_hex(data) != sha256:
            problems.append(f"blob {digest}: file content has another sha256")

    if stored is not None:
        problems += [f"object under blobs/ not a blob: {name}" for name in stored.strays]
        on_disk = set(stored.blobs)
        trash, staging = stored.trash, stored.staging
    else:
        on_disk = {path.parent.name + path.name for path in server.blob_files()}
        trash = [path.name for path in _leftovers(server, "trash")]
        staging = [path.name for path in _leftovers(server, "staging")]
    for digest in sorted(on_disk - set(snapshot.blobs)):
        problems.append(f"blob file {digest} has no blob row")

    problems += [f"trash file left: {name}" for name in trash]
    problems += [f"staging file left: {name}" for name in staging]
    assert not problems, "invariants broken:\n" + "\n".join(problems)


@dataclass(frozen=True)
class _Bucket:
    blobs: dict[str, bytes]
    """Every blob object's bytes, by digest (the test's blobs are small)."""
    strays: list[str]
    trash: list[str]
    staging: list[str]


def _in_bucket(store: S3BlobStore) -> _Bucket:
    async def read() -> _Bucket:
        blobs: dict[str, bytes] = {}
        strays: list[str] = []
        for entry in await store.list_blobs():
            if entry.digest is None:
                strays.append(entry.name)
                continue
            reader = await store.open(entry.digest)
            if reader is None:
                continue  # deleted since the listing: the catalog check says if it matters
            try:
                blobs[entry.digest] = await asyncio.to_thread(reader.read, reader.size, 0)
            finally:
                reader.close()
        trash = [entry.name for entry in await store.list_trash()]
        staging = [entry.name for entry in await store.list_staging()]
        return _Bucket(blobs, strays, trash, staging)

    return asyncio.run(read())
