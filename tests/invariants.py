"""The invariants of docs/architecture.md, checked from outside a server on its data root.

The catalog (a SQLite file or a PostgreSQL database) is read with the plain driver
(``sqlite3``, ``asyncpg``) in one read-only transaction, so these checks see what a fresh
reader sees and share no code with the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import RunningServer
from tests.databases import read_snapshot
from tests.support import POLL_SECS, blake3_hex, blob_path, poll, sha256_hex

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


def assert_invariants(server: RunningServer) -> None:
    """Assert invariants 1, 2 and 5 of docs/architecture.md for a server with no request in flight.

    - every blob row's refcount equals the number of tags plus retained history entries
      plus kept ``/v2`` manifests' layers and configs naming it, and is positive;
    - every tag and every retained history entry names a blob row (so every retained
      digest downloads its bytes: the file checks below cover every row);
    - every blob row has a blob file with the catalog's size, blake3 and sha256 (except
      quarantined blobs, whose file fsck moved away);
    - there is no blob file without a blob row, and no trash or staging file.
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

    for digest, (size, sha256, _refcount) in snapshot.blobs.items():
        if digest in snapshot.quarantined:
            continue
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

    on_disk = {path.parent.name + path.name for path in server.blob_files()}
    for digest in sorted(on_disk - set(snapshot.blobs)):
        problems.append(f"blob file {digest} has no blob row")

    problems += [f"trash file left: {path.name}" for path in _leftovers(server, "trash")]
    problems += [f"staging file left: {path.name}" for path in _leftovers(server, "staging")]
    assert not problems, "invariants broken:\n" + "\n".join(problems)
