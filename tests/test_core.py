"""The registry core without HTTP: an upload from a byte iterator, its refusals, a retag.

The HTTP tests drive the same use cases through ``/reg``; these call
:class:`cloudimg.core.RegistryCore` directly, as a face does, to keep it usable without
Litestar: plain async iterators in, results or domain errors out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from cloudimg.catalog import Catalog, WriteOptions
from cloudimg.config import Settings
from cloudimg.core import BodyDetails, RegistryCore, Upload
from cloudimg.digest import Digest
from cloudimg.errors import (
    DigestMismatchError,
    ImageRefusedError,
    InsufficientStorageError,
    NotFoundError,
    PayloadTooLargeError,
)
from cloudimg.images import InspectionPolicy
from cloudimg.registry import open_registry
from tests.databases import sqlite_url
from tests.support import blake3_hex, random_image, sha256_hex

NAMES = ("repo", "img", "v1")
MIB = 1024 * 1024


class _Body:
    """An upload's body as a face hands it to the core: the image in chunks, then its meta."""

    def __init__(self, chunks: Iterable[bytes], meta: dict[str, str] | None = None) -> None:
        self.chunks = list(chunks)
        self.meta = meta or {}
        self.read = 0

    async def image(self) -> AsyncIterator[bytes]:
        yield b""
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    def details(self) -> BodyDetails:
        return BodyDetails(self.meta)


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[RegistryCore]:
    data_root = tmp_path / "data"
    settings = Settings(data_root=data_root, database_url=sqlite_url(data_root))
    async with open_registry(settings, migrate=True) as registry:
        yield RegistryCore.over(
            registry.catalog, registry.blobs, InspectionPolicy(), registry.oci, max_image_size=MIB
        )


def _catalog(core: RegistryCore) -> Catalog:
    return core.uploads.catalog


async def _upload(core: RegistryCore, data: bytes, *digests: Digest) -> Upload:
    reception = core.uploads.reception(digests, None)
    try:
        await reception.receive(_Body([data[:1000], data[1000:]], {"os": "test"}))
        return await reception.commit(NAMES)
    finally:
        await reception.close()


async def test_an_upload_from_chunks_is_committed_with_its_metadata(core: RegistryCore) -> None:
    data = random_image(64 * 1024)
    upload = await _upload(core, data, Digest("sha256", sha256_hex(data)))
    assert upload.staged.blake3 == blake3_hex(data)
    info = await _catalog(core).reads.get_tag(*NAMES)
    assert (info.digest, info.size, info.meta) == (blake3_hex(data), len(data), {"os": "test"})
    assert upload.inspection.format == "raw"


async def test_a_digest_mismatch_commits_nothing(core: RegistryCore) -> None:
    data = random_image(4096)
    with pytest.raises(DigestMismatchError):
        await _upload(core, data, Digest("blake3", blake3_hex(b"other")))
    with pytest.raises(NotFoundError):
        await _catalog(core).reads.get_tag(*NAMES)


async def test_an_image_over_the_size_limit_stops_the_reading(core: RegistryCore) -> None:
    body = _Body([random_image(600 * 1024)] * 3)
    reception = core.uploads.reception((), None)
    with pytest.raises(PayloadTooLargeError):
        await reception.receive(body)
    assert body.read == 2  # the second chunk passed the limit: the third was never asked for
    await reception.close()


async def test_a_first_mib_refusal_stops_the_reading(core: RegistryCore) -> None:
    gzip = b"\x1f\x8b\x08" + bytes(MIB - 3)
    body = _Body([gzip] + [bytes(MIB)] * 63)  # decided by the first MiB, told a few MiB on
    unlimited = RegistryCore.over(
        _catalog(core), core.uploads.blobs, InspectionPolicy(), core.tags.uploads
    )
    reception = unlimited.uploads.reception((), None)
    with pytest.raises(ImageRefusedError) as refused:
        await reception.receive(body)
    assert refused.value is reception.refusal  # the face answers it at once, then lingers
    assert (refused.value.context or {}).get("rule") == "not-a-disk"
    assert body.read < len(body.chunks)
    await reception.close()


async def test_a_declared_length_is_refused_before_any_byte(core: RegistryCore) -> None:
    await core.uploads.refuse_declared_length(None, 0)
    await core.uploads.refuse_declared_length(MIB + 100, 1024)
    with pytest.raises(PayloadTooLargeError):
        await core.uploads.refuse_declared_length(MIB + 1, 0)
    unlimited = RegistryCore.over(
        _catalog(core), core.uploads.blobs, InspectionPolicy(), core.tags.uploads
    )
    with pytest.raises(InsufficientStorageError):
        await unlimited.uploads.refuse_declared_length(2**62, 0)


async def test_a_retag_names_stored_bytes_and_the_tag_goes_with_a_delete(
    core: RegistryCore,
) -> None:
    data = random_image(4096)
    await _upload(core, data)
    retagged = await core.tags.retag(
        ("repo", "img", "v2"), Digest("blake3", blake3_hex(data)), None, WriteOptions()
    )
    assert (retagged.ref.digest, retagged.pushed) == (blake3_hex(data), False)
    assert await core.tags.set_immutable(("repo", "img", "v2"), True, WriteOptions())
    await core.tags.delete(NAMES, WriteOptions(), purge_history=False)
    assert await _catalog(core).reads.list_tags("repo", "img") == ["v2"]


async def test_without_a_quota_file_no_write_consults_quotas(core: RegistryCore) -> None:
    # No quota file: no gate, and nothing registered with the catalog's tag writes, so an
    # upload's commit neither locks the repository row nor measures its use.
    assert core.quotas is None
    assert core.uploads.quotas is None
    assert _catalog(core).tags.quota_guard is None
    await _upload(core, random_image(4096))
    assert await _catalog(core).reads.list_tags("repo", "img") == ["v1"]
