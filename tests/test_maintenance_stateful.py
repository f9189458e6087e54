"""A state machine interleaving uploads, overwrites, deletes, gc, fsck and crash debris.

After every step the invariants of docs/architecture.md must hold: every tag names
a blob file with the right bytes; every refcount equals the number of tags naming
the blob; gc never takes a referenced blob nor the staging file of a live upload.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cloudimg.blobstore import StagingWriter
from cloudimg.catalog import Catalog
from cloudimg.errors import NotFoundError
from cloudimg.maintenance import check, collect_garbage
from tests.maintenance_support import age, open_test_catalog, sql, stage, store_of
from tests.support import blake3_hex

Ref = tuple[str, str, str]
REFS: list[Ref] = [
    ("repo-a", "img", "v1"),
    ("repo-a", "img", "v2"),
    ("repo-a", "other", "v1"),
    ("repo-b", "img", "v1"),
]
PAYLOADS = [b"", b"alpha" * 100, os.urandom(70_000), os.urandom(5 * 1024 * 1024 + 3)]
refs = st.sampled_from(REFS)
payloads = st.sampled_from(PAYLOADS)


class MaintenanceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="cloudimg-stateful-"))
        self.loop = asyncio.new_event_loop()
        self.stack = AsyncExitStack()
        self.catalog: Catalog = self.run(
            self.stack.enter_async_context(open_test_catalog(self.tmp / "data"))
        )
        self.model: dict[Ref, bytes] = {}
        self.live: list[tuple[StagingWriter, bytes]] = []

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    # -- operations --------------------------------------------------------------

    async def _upload(self, ref: Ref, data: bytes) -> None:
        staged = await stage(self.catalog, data)
        try:
            await self.catalog.commit_upload(*ref, staged, {"size": str(len(data))})
        finally:
            await self.catalog.blobs.discard(staged)

    async def _delete(self, ref: Ref) -> bool:
        try:
            await self.catalog.delete_tag(*ref)
        except NotFoundError:
            return False
        return True

    async def _gc(self, uploads_running: int = 0) -> None:
        report = await collect_garbage(self.catalog, store_of(self.catalog), grace=0)
        assert report.ok, report.problems
        # The store was consistent before: gc must find nothing to repair and no blob to drop.
        assert not [a for a in report.actions if a.kind in ("refcount", "unreferenced-row")]
        live = len(self.live)
        assert live <= report.skipped_live_staging <= live + uploads_running

    @rule(ref=refs, data=payloads)
    def upload(self, ref: Ref, data: bytes) -> None:
        self.run(self._upload(ref, data))
        self.model[ref] = data

    @rule(ref=refs)
    def delete(self, ref: Ref) -> None:
        assert self.run(self._delete(ref)) == (ref in self.model)
        self.model.pop(ref, None)

    @rule()
    def gc(self) -> None:
        self.run(self._gc())

    @rule()
    def fsck(self) -> None:
        report = self.run(check(self.catalog, store_of(self.catalog), checksum=True))
        assert report.ok, report.problems

    @rule(upload_to=refs, delete_from=refs, data=payloads)
    def upload_delete_and_gc_at_once(self, upload_to: Ref, delete_from: Ref, data: bytes) -> None:
        if upload_to == delete_from:
            delete_from = next(r for r in REFS if r != upload_to)

        async def together() -> tuple[Any, ...]:
            return tuple(
                await asyncio.gather(
                    self._upload(upload_to, data), self._delete(delete_from), self._gc(1)
                )
            )

        _, deleted, _ = self.run(together())
        assert deleted == (delete_from in self.model)
        self.model[upload_to] = data
        self.model.pop(delete_from, None)

    @rule(data=payloads)
    def start_live_upload(self, data: bytes) -> None:
        async def start() -> StagingWriter:
            writer = await self.catalog.blobs.open_staging()
            await writer.write(data)
            return writer

        self.live.append((self.run(start()), data))
        for path in store_of(self.catalog).staging_dir.iterdir():
            age(path)  # looks old: only the lock protects it

    @precondition(lambda self: bool(self.live))
    @rule(ref=refs)
    def finish_live_upload(self, ref: Ref) -> None:
        writer, data = self.live.pop(0)

        async def finish() -> None:
            staged = await writer.finish()
            try:
                await self.catalog.commit_upload(*ref, staged, {"size": str(len(data))})
            finally:
                await self.catalog.blobs.discard(staged)

        self.run(finish())
        self.model[ref] = data

    @rule()
    def crash_debris(self) -> None:
        """What kill -9 leaves: a dead staging file, trash, a placed but uncommitted blob."""
        store = store_of(self.catalog)
        dead = store.staging_dir / f"dead-{os.urandom(4).hex()}.part"
        dead.write_bytes(b"partial upload")
        trash = store.trash_dir / f"{blake3_hex(os.urandom(8))}.{os.urandom(4).hex()}"
        trash.write_bytes(b"deleted")
        staged = self.run(stage(self.catalog, os.urandom(1000)))
        self.run(store.place(staged))
        for path in (dead, trash, store.blob_path(staged.blake3)):
            age(path)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def crash_between_delete_rename_and_commit(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(sorted(self.model)))
        store = store_of(self.catalog)
        digest = blake3_hex(self.model[ref])
        trash = store.trash_dir / f"{digest}.{os.urandom(4).hex()}"
        os.rename(store.blob_path(digest), trash)  # the transaction then rolled back
        age(trash)
        report = self.run(collect_garbage(self.catalog, store_of(self.catalog), grace=0))
        assert [a.target for a in report.actions if a.kind == "restored"] == [digest]

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def every_tag_names_its_bytes(self) -> None:
        store = store_of(self.catalog)
        for ref, data in self.model.items():
            blob = self.run(self.catalog.resolve(*ref))
            assert blob.digest == blake3_hex(data)
            assert store.blob_path(blob.digest).read_bytes() == data
        names = {
            tuple(row)
            for row in sql(
                store.root,
                "SELECT r.name, i.name, t.name FROM tags t JOIN images i ON i.id = t.image_id "
                "JOIN repositories r ON r.id = i.repository_id",
            )
        }
        assert names == set(self.model)

    @invariant()
    def refcounts_equal_references(self) -> None:
        rows = sql(
            store_of(self.catalog).root,
            "SELECT b.digest, b.refcount, (SELECT count(*) FROM tags t WHERE t.digest = b.digest)"
            " FROM blobs b",
        )
        for digest, refcount, references in rows:
            assert refcount == references > 0, digest
        assert {digest for digest, _, _ in rows} == {blake3_hex(d) for d in self.model.values()}

    @invariant()
    def live_uploads_keep_their_staging_files(self) -> None:
        staging = {p.name for p in store_of(self.catalog).staging_dir.iterdir()}
        for writer, _ in self.live:
            assert writer.path.name in staging  # type: ignore[attr-defined]

    def teardown(self) -> None:
        try:
            for writer, _ in self.live:
                self.run(writer.abort())
            self.run(self.stack.aclose())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


MaintenanceMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMaintenanceMachine = pytest.mark.slow(MaintenanceMachine.TestCase)
