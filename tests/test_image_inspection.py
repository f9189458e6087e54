"""The inspection core (cloudimg.images) on real images made by qemu-img and friends."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudimg.blobstore import FilesystemBlobStore
from cloudimg.errors import ImageRefusedError
from cloudimg.images import (
    DEFAULT_ALLOWED_FORMATS,
    RULES,
    ImageInspector,
    Inspection,
    InspectionPolicy,
    inspect_reader,
    normalize_format,
    parse_allowed_formats,
)
from tests import images
from tests.images import ACCEPTED, MAGICS, MIB, NEEDS_TOOL, REFUSED

pytestmark = images.needs_qemu_img

POLICY = InspectionPolicy()


def inspect(
    data: bytes,
    policy: InspectionPolicy = POLICY,
    declared: str | None = None,
    chunk: int = 4 * MIB,
) -> Inspection:
    inspector = ImageInspector(policy, declared)
    for start in range(0, len(data), chunk):
        inspector.feed(memoryview(data)[start : start + chunk])
    return inspector.finish(len(data))


def refused_rule(data: bytes, policy: InspectionPolicy = POLICY, **kwargs: object) -> str:
    with pytest.raises(ImageRefusedError) as caught:
        inspect(data, policy, **kwargs)  # type: ignore[arg-type]
    assert caught.value.context is not None
    rule = caught.value.context["rule"]
    assert rule in RULES
    return str(rule)


def _params(kinds: dict[str, object]) -> list[object]:
    return [pytest.param(name, marks=[NEEDS_TOOL[name]] if name in NEEDS_TOOL else [])
            for name in kinds]  # fmt: skip


@pytest.mark.parametrize("kind", _params(ACCEPTED))  # type: ignore[arg-type]
def test_accepted_image_has_its_format_and_virtual_size(tmp_path: Path, kind: str) -> None:
    accepted = ACCEPTED[kind]
    path = accepted.make(tmp_path)
    data = path.read_bytes()
    qemu_format = "raw" if accepted.format == "iso" else accepted.format  # qemu: ISOs are raw
    expected = images.qemu_virtual_size(path, qemu_format)
    # Chunks as uploads give them, and tiny ones: the verdict does not depend on chunking.
    for chunk in (4 * MIB, 4096, 511):
        found = inspect(data, chunk=chunk)
        assert found == Inspection(accepted.format, expected, accepted.partition_table)
    assert inspect(data, declared=accepted.format).format == accepted.format


@pytest.mark.parametrize("kind", _params(REFUSED))  # type: ignore[arg-type]
def test_unsafe_image_is_refused_with_its_rule(tmp_path: Path, kind: str) -> None:
    make, rule = REFUSED[kind]
    data = make(tmp_path).read_bytes()
    assert refused_rule(data) == rule
    assert refused_rule(data, chunk=777) == rule
    # No policy lets it through.
    anything = InspectionPolicy(2**63, frozenset(normalize_format(n) for n in ("raw", "qcow2",
                                "vmdk", "vpc", "vhdx", "vdi", "iso", "qed", "luks")))  # fmt: skip
    assert refused_rule(data, anything) == rule


def test_raw_declared_image_that_is_qcow2_is_refused(tmp_path: Path) -> None:
    data = images.qcow2(tmp_path).read_bytes()
    assert refused_rule(data, declared="raw") == "format-mismatch"


def test_qcow2_declared_as_vmdk_is_refused(tmp_path: Path) -> None:
    data = images.qcow2(tmp_path).read_bytes()
    assert refused_rule(data, declared="vmdk") == "format-mismatch"
    assert inspect(data, declared="QCOW2").format == "qcow2"


@images.needs_sfdisk
def test_partitioned_raw_disk_declared_raw_is_accepted(tmp_path: Path) -> None:
    data = images.partitioned(tmp_path, "gpt").read_bytes()
    assert inspect(data, declared="raw") == Inspection("raw", len(data), "gpt")


def test_virtual_size_over_the_limit_is_refused(tmp_path: Path) -> None:
    data = images.qcow2(tmp_path, size="64M").read_bytes()
    small = InspectionPolicy(max_virtual_size=32 * MIB)
    assert refused_rule(data, small) == "virtual-size-too-large"
    assert inspect(data, InspectionPolicy(max_virtual_size=64 * MIB)).virtual_size == 64 * MIB
    # A raw disk's virtual size is its length.
    raw = images.create(tmp_path, "raw", "40M").read_bytes()
    assert refused_rule(raw, small) == "virtual-size-too-large"


def test_format_outside_the_allowed_ones_is_refused(tmp_path: Path) -> None:
    data = images.create(tmp_path, "vdi", "4M").read_bytes()
    assert refused_rule(data, InspectionPolicy(allowed_formats=frozenset({"raw", "qcow2"}))) == (
        "format-not-allowed"
    )
    vpc = images.create(tmp_path, "vpc", "4M").read_bytes()
    # "vhd" in a policy means qemu's "vpc".
    assert inspect(vpc, InspectionPolicy(allowed_formats=frozenset({"vhd"}))).format == "vpc"


def test_luks1_is_known_but_not_allowed_by_default(tmp_path: Path) -> None:
    data = images.luks1(tmp_path).read_bytes()
    assert refused_rule(data) == "format-not-allowed"
    luks = InspectionPolicy(allowed_formats=frozenset({"luks"}))
    assert inspect(data, luks) == Inspection("luks", 4 * MIB, None)
    # A header whose payload would start past the end has no size: refused.
    assert refused_rule(data[: 64 * 1024], luks) == "malformed-header"


def test_partition_table_failing_its_check_is_refused() -> None:
    mbr = bytearray(4 * MIB)
    mbr[446:462] = struct.pack("<B3BB3BII", 0x12, 0, 2, 0, 0x83, 0, 0, 0, 2048, 2048)
    mbr[510:512] = b"\x55\xaa"
    assert refused_rule(bytes(mbr)) == "partition-table-invalid"


def test_vmdk_footer_that_disagrees_with_its_header_is_refused(tmp_path: Path) -> None:
    data = images.vmdk_with_footer(tmp_path, footer_version=2).read_bytes()
    assert refused_rule(data) == "vmdk-footer-invalid"


def test_header_that_does_not_parse_is_refused() -> None:
    assert refused_rule(b"KDMV" + struct.pack("<I", 9) + bytes(MIB)) == "malformed-header"
    assert refused_rule(b"QFI\xfb" + bytes(100)) == "malformed-header"  # ends inside its header


def test_small_raw_is_raw_and_empty_bytes_are_refused() -> None:
    assert refused_rule(b"") == "empty-image"
    # qemu-img sizes a raw file in whole 512-byte sectors: 6 bytes are a 512-byte disk.
    assert inspect(b"hello\n") == Inspection("raw", 512, None)


async def test_stored_blob_is_inspected_by_reading_it(tmp_path: Path) -> None:
    data = images.qcow2(tmp_path).read_bytes()
    blobs = FilesystemBlobStore(tmp_path / "data")
    blobs.ensure_layout()
    writer = await blobs.open_staging()
    await writer.write(data)
    staged = await writer.finish()
    await blobs.place(staged)
    reader = await blobs.open(staged.blake3)
    assert reader is not None
    seen: list[int] = []
    try:
        found = inspect_reader(reader, POLICY, seen.append)
    finally:
        reader.close()
    assert found == Inspection("qcow2", 16 * MIB, None)
    assert sum(seen) == len(data)


def test_format_names() -> None:
    assert normalize_format(" VHD ") == "vpc"
    assert normalize_format("qcow2") == "qcow2"
    with pytest.raises(ValueError, match="unknown image format"):
        normalize_format("qcow3")
    assert parse_allowed_formats("raw, qcow2,vhd") == frozenset({"raw", "qcow2", "vpc"})
    assert {normalize_format(n) for n in DEFAULT_ALLOWED_FORMATS} == parse_allowed_formats(
        ",".join(DEFAULT_ALLOWED_FORMATS)
    )
    for bad, why in (("", "empty"), (" , ", "empty"), ("raw,floppy", "unknown")):
        with pytest.raises(ValueError, match=why):
            parse_allowed_formats(bad)
    with pytest.raises(ValueError, match="unknown image format"):
        ImageInspector(POLICY, "floppy")


def test_fed_size_must_match() -> None:
    inspector = ImageInspector(POLICY)
    inspector.feed(b"abc")
    with pytest.raises(ValueError, match="finish"):
        inspector.finish(4)


def outcome(data: bytes, chunk: int) -> Inspection | str:
    """What inspecting ``data`` fed in ``chunk``-byte pieces gives: a verdict or a rule."""
    try:
        return inspect(data, chunk=chunk)
    except ImageRefusedError as exc:
        return str((exc.context or {}).get("rule", "no rule"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    magic=st.sampled_from(MAGICS),
    prefix=st.binary(max_size=600),
    body=st.binary(max_size=2048),
    padding=st.integers(min_value=0, max_value=300 * 1024),
    ending=st.binary(max_size=1536),
    chunk=st.integers(min_value=1, max_value=256 * 1024),
)
def test_hostile_headers_are_accepted_or_refused_never_crash(
    magic: tuple[int, bytes], prefix: bytes, body: bytes, padding: int, ending: bytes, chunk: int
) -> None:
    offset, marker = magic
    data = prefix.ljust(offset, b"\0")[:offset] + marker + body + bytes(padding) + ending
    found = outcome(data, chunk)
    if isinstance(found, str):
        assert found in RULES
    else:
        assert found.format in {"raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi", "iso"}
        assert found.virtual_size >= 0
    assert outcome(data, 4 * MIB) == found  # how the bytes were chunked changes nothing


def test_random_bytes_are_raw() -> None:
    data = random.Random(10).randbytes(2 * MIB)  # seeded: no chance of a magic number
    assert inspect(data) == Inspection("raw", len(data), None)


def test_every_rule_is_documented_with_its_reason() -> None:
    """docs/security.md's table names every rule a refusal can carry."""
    table = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in table.splitlines()
            if line.startswith("| `")}  # fmt: skip
    assert set(RULES) <= rows, sorted(set(RULES) - rows)
