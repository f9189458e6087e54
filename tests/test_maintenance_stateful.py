"""A state machine interleaving uploads, overwrites, deletes, gc, fsck and crash debris.

After every step the invariants of docs/architecture.md must hold: every tag names
a blob file with the right bytes; every refcount equals the number of tags plus
retained history entries naming the blob; every retained digest downloads its bytes by
digest reference; gc never takes a referenced blob nor the staging file of a live
upload. The model keeps each tag's history and the digests retention holds
(``--keep-history``, the default 3).
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
from cloudimg.digest import Digest
from cloudimg.errors import NotFoundError
from cloudimg.maintenance import check, collect_garbage
from tests.maintenance_support import age, open_test_catalog, sql, stage, store_of
from tests.support import blake3_hex, random_image

Ref = tuple[str, str, str]
REFS: list[Ref] = [
    ("repo-a", "img", "v1"),
    ("repo-a", "img", "v2"),
    ("repo-a", "other", "v1"),
    ("repo-b", "img", "v1"),
]
PAYLOADS = [b"", b"alpha" * 100, random_image(70_000), random_image(5 * 1024 * 1024 + 3)]
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
        self.pointed: dict[Ref, list[bytes]] = {}
        """The bytes each upload pointed a tag at, oldest first (its history)."""
        self.retained: dict[Ref, set[bytes]] = {}
        """The previous bytes each tag's history holds."""
        self.live: list[tuple[StagingWriter, bytes]] = []

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    # -- the model of history and retention ---------------------------------------

    def _held(self) -> set[bytes]:
        return set(self.model.values()).union(*self.retained.values())

    def _model_upload(self, ref: Ref, data: bytes) -> None:
        present = self._held() | {data}
        self.pointed.setdefault(ref, []).append(data)
        self.model[ref] = data
        self._model_retain(ref, present)

    def _model_delete(self, ref: Ref) -> None:
        if ref not in self.model:
            return
        present = self._held()
        del self.model[ref]
        self._model_retain(ref, present)

    def _model_retain(self, ref: Ref, present: set[bytes]) -> None:
        """The last N previous distinct bytes; one that was freed before is not brought back."""
        current = self.model.get(ref)
        newest_first = list(reversed(self.pointed[ref]))
        if current is not None:
            newest_first = newest_first[1:]
        window: list[bytes] = []
        for data in newest_first:
            if len(window) >= self.catalog.tags.keep_history:
                break
            if data != current and data not in window:
                window.append(data)
        self.retained[ref] = {data for data in window if data in present}

    def _retained_in_catalog(self) -> dict[Ref, set[bytes]]:
        by_digest = {blake3_hex(data): data for data in PAYLOADS}
        found: dict[Ref, set[bytes]] = {}
        rows = sql(
            store_of(self.catalog).root,
            "SELECT repository, image, tag, digest FROM tag_history WHERE retained",
        )
        for repo, image, tag, digest in rows:
            found.setdefault((repo, image, tag), set()).add(by_digest[digest])
        return found

    # -- operations --------------------------------------------------------------

    async def _upload(self, ref: Ref, data: bytes) -> None:
        staged = await stage(self.catalog, data)
        try:
            await self.catalog.tags.commit_upload(*ref, staged, {"size": str(len(data))})
        finally:
            await self.catalog.blobs.discard(staged)

    async def _delete(self, ref: Ref) -> bool:
        try:
            await self.catalog.tags.delete_tag(*ref)
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
        self._model_upload(ref, data)

    @rule(ref=refs)
    def delete(self, ref: Ref) -> None:
        assert self.run(self._delete(ref)) == (ref in self.model)
        self._model_delete(ref)

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
        # Either order may have committed first; what retention brought back can differ.
        before = (self.model, self.pointed, self.retained)
        outcomes = []
        for steps in ((upload_to, delete_from), (delete_from, upload_to)):
            self.model = dict(before[0])
            self.pointed = {ref: list(pointed) for ref, pointed in before[1].items()}
            self.retained = {ref: set(held) for ref, held in before[2].items()}
            for ref in steps:
                if ref == upload_to:
                    self._model_upload(ref, data)
                else:
                    self._model_delete(ref)
            outcomes.append((self.model, self.pointed, self.retained))
        actual = self._retained_in_catalog()
        matching = [o for o in outcomes if {r: h for r, h in o[2].items() if h} == actual]
        assert matching, (actual, [o[2] for o in outcomes])
        self.model, self.pointed, self.retained = matching[0]

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
                await self.catalog.tags.commit_upload(*ref, staged, {"size": str(len(data))})
            finally:
                await self.catalog.blobs.discard(staged)

        self.run(finish())
        self._model_upload(ref, data)

    @rule()
    def crash_debris(self) -> None:
        """What kill -9 leaves: a dead staging file, trash, a placed but uncommitted blob."""
        store = store_of(self.catalog)
        dead = store.staging_dir / f"dead-{os.urandom(4).hex()}.part"
        dead.write_bytes(b"partial upload")
        trash = store.trash_dir / f"{blake3_hex(os.urandom(8))}.{os.urandom(4).hex()}"
        trash.write_bytes(b"deleted")
        staged = self.run(stage(self.catalog, random_image(1000)))
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
            blob = self.run(self.catalog.reads.resolve(*ref))
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
            " + (SELECT count(*) FROM tag_history h WHERE h.digest = b.digest AND h.retained)"
            " FROM blobs b",
        )
        for digest, refcount, references in rows:
            assert refcount == references > 0, digest
        assert {digest for digest, _, _ in rows} == {blake3_hex(d) for d in self._held()}

    @invariant()
    def history_retains_the_last_previous_digests(self) -> None:
        expected = {ref: held for ref, held in self.retained.items() if held}
        assert self._retained_in_catalog() == expected
        store = store_of(self.catalog)
        for (repo, image, _tag), held in expected.items():
            for data in held:
                blob = self.run(
                    self.catalog.reads.resolve(repo, image, Digest("blake3", blake3_hex(data)))
                )
                assert store.blob_path(blob.digest).read_bytes() == data

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
