"""The containerDisk of a stored blob, its layer hashed once per blob and kept in the catalog.

The layer's sha256 costs one read of the blob (see docs/oci.md for the measured rate),
so it is computed once, by :meth:`ContainerDisks.run` in the background after an
upload commits (every committed tag write wakes it), or by the first pull that finds
it missing; the catalog keeps it (``blobs.oci_layer``, through
:class:`cloudimg.oci.store.OciStore`) and every later pull reads it from there. Two
pulls in one process wait for one computation; two replicas may both compute it and
store the same value. The computation itself first looks in the catalog again: a pull
that read "nothing stored" just before another computation stored its digests and left
the in-flight table finds them there instead of hashing the layer a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cloudimg.blobstore import BlobStore
from cloudimg.catalog import BlobRef
from cloudimg.errors import CloudimgError, NotFoundError
from cloudimg.oci.containerdisk import ContainerDisk, hash_layer
from cloudimg.oci.store import OciStore

__all__ = ["ContainerDisks"]

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_IDLE_POLL_SECS = 60.0
"""How often the background task looks for blobs another replica stored, unwoken."""


class ContainerDisks:
    """Generated containerDisks of stored blobs, for one process."""

    def __init__(self, store: OciStore, blobs: BlobStore) -> None:
        self._store = store
        self._blobs = blobs
        self._running: dict[str, asyncio.Future[ContainerDisk]] = {}
        self._wake = asyncio.Event()

    async def of(self, ref: BlobRef) -> ContainerDisk:
        """The containerDisk of ``ref``'s bytes; computed now only if no one did before."""
        stored = await self._store.oci_digests(ref.digest)
        if stored is not None:
            return ContainerDisk.of(stored[0], ref.size)
        running = self._running.get(ref.digest)
        if running is None:
            running = asyncio.ensure_future(self._compute(ref.digest, ref.size))
            self._running[ref.digest] = running
            running.add_done_callback(lambda _f: self._running.pop(ref.digest, None))
        return await asyncio.shield(running)

    def wake(self) -> None:
        """New blobs were committed: let the background task hash their layers."""
        self._wake.set()

    def waker(self) -> Callable[[], None]:
        """What :meth:`wake` does, for a hook run after every tag write: the event's own
        ``set``, so a write does not call into this module for it."""
        return self._wake.set

    async def close(self) -> None:
        """Wait for the layers being hashed now to be stored, before the catalog closes.

        Cancelling ``run`` leaves a computation it started going (callers wait for it
        shielded, and a hash cannot stop mid-read: its thread holds the blob open). One
        that finished after the catalog closed wrote through a connection nobody closed
        any more, so a stopped server left SQLite's WAL behind.
        """
        running = list(self._running.values())
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def run(self) -> None:
        """Hash the layers of blobs that have none, whenever woken (or every minute)."""
        while True:
            try:
                pending = await self._store.blobs_without_oci()
            except (CloudimgError, OSError) as exc:
                log.warning("could not list blobs without containerDisk digests: %s", exc)
                pending = []
            for digest, size in pending:
                try:
                    await self.of(BlobRef(digest, "", size, _EPOCH))
                except (CloudimgError, OSError) as exc:  # one bad blob does not stop the rest
                    log.warning("containerDisk digests of blake3:%s: %s", digest, exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _IDLE_POLL_SECS)

    async def _compute(self, digest: str, size: int) -> ContainerDisk:
        # Read again: a computation that finished after our caller's read stored them,
        # and the in-flight entry is gone only once they are stored.
        stored = await self._store.oci_digests(digest)
        if stored is not None:
            return ContainerDisk.of(stored[0], size)
        reader = await self._blobs.open(digest)
        if reader is None:
            raise NotFoundError("the image's bytes are gone", {"digest": f"blake3:{digest}"})
        started = time.monotonic()
        try:
            layer = await asyncio.to_thread(hash_layer, reader)
        finally:
            reader.close()
        secs = time.monotonic() - started
        disk = ContainerDisk.of(layer, size)
        await self._store.set_oci_digests(digest, (layer, disk.config_sha256, disk.manifest_sha256))
        log.info(
            "containerDisk layer of blake3:%s hashed: %d bytes in %.3f s (%.0f MiB/s)",
            digest,
            size,
            secs,
            size / 2**20 / secs if secs > 0 else 0.0,
        )
        return disk
