"""What inspection records is what the real qemu-img sees: hostile images refused, accepted
ones opened by qemu-img (no ``-f``) as recorded, reading no other file.

Every file an image here names is ``marker.raw`` in the test's own directory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudimg.errors import ImageRefusedError
from cloudimg.images import ImageInspector, Inspection, InspectionPolicy, normalize_format
from cloudimg.images.qemu_probe import probe
from tests import hostile_images as hostile
from tests import images
from tests.images import ACCEPTED, MIB, NEEDS_TOOL
from tests.test_image_inspection import inspect, refused_rule

pytestmark = images.needs_qemu_img

_NAMES = ("raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi", "iso", "qed", "luks")
EVERYTHING = InspectionPolicy(2**63, frozenset(normalize_format(n) for n in _NAMES))


def _hostile_params() -> list[object]:
    tools = hostile.HOSTILE_TOOLS
    return [pytest.param(n, marks=[tools[n]] if n in tools else []) for n in hostile.HOSTILE]


@pytest.mark.parametrize("kind", _hostile_params())
def test_hostile_image_is_refused_whatever_the_policy(tmp_path: Path, kind: str) -> None:
    make, rule = hostile.HOSTILE[kind]
    data = make(tmp_path).read_bytes()
    assert refused_rule(data) == rule
    assert refused_rule(data, chunk=4096) == rule
    assert refused_rule(data, EVERYTHING) == rule


def test_qemu_opens_the_hostile_images_as_the_attack_intends(tmp_path: Path) -> None:
    """The test images are real attacks: without inspection, qemu-img would read the marker
    (checked on the two kinds oslo.utils let through as raw and as vmdk)."""
    for make in (hostile.descriptor_nul_padded, hostile.kdmv_capacity_zero):
        path = make(tmp_path)
        out = tmp_path / "out.raw"
        images.qemu_img("convert", "-m", "1", "-O", "raw", path, out)
        assert out.read_bytes().startswith(hostile.MARKER[:64])
    info = hostile.qemu_info(hostile.parallels_huge(tmp_path))
    assert (info["format"], info["virtual-size"]) == ("parallels", 10 << 40)


def _accepted_params() -> list[object]:
    return [pytest.param(name, marks=[NEEDS_TOOL[name]] if name in NEEDS_TOOL else [])
            for name in ACCEPTED]  # fmt: skip


@pytest.mark.parametrize("kind", _accepted_params())
def test_accepted_image_is_what_qemu_img_sees(tmp_path: Path, kind: str) -> None:
    path = ACCEPTED[kind].make(tmp_path)
    hostile.assert_qemu_sees(path, inspect(path.read_bytes()), tmp_path)


def test_vhd_is_sized_by_its_geometry_as_qemu_sizes_it(tmp_path: Path) -> None:
    """oslo.utils reads the footer's original size (1 MiB here); qemu the geometry."""
    path = hostile.vhd_with_original_size(tmp_path, "64M", MIB)
    found = inspect(path.read_bytes())
    assert found.format == "vpc"
    assert found.virtual_size > 60 * MIB
    hostile.assert_qemu_sees(path, found, tmp_path)
    assert refused_rule(path.read_bytes(), InspectionPolicy(32 * MIB)) == "virtual-size-too-large"


def test_huge_vhd_that_claims_one_mib_is_refused_by_its_real_size(tmp_path: Path) -> None:
    path = hostile.vhd_with_original_size(tmp_path, "2000G", MIB)
    data = path.read_bytes()
    assert inspect(data).virtual_size == hostile.qemu_info(path)["virtual-size"]
    assert refused_rule(data, InspectionPolicy(1 << 40)) == "virtual-size-too-large"


def test_probe_takes_what_qemu_takes_and_nothing_more() -> None:
    descriptor = b"version=1\nCID=1\n"
    assert probe(descriptor).format == "vmdk"
    assert probe(b"  \r\n# c\x00omment\n" + descriptor).format == "vmdk"
    assert probe(b"\n" + descriptor).format == "raw"  # an empty line ends qemu's search
    assert probe(b"\r\n" + descriptor).format == "raw"
    assert probe(b" version=1\n").format == "raw"
    assert probe(b"version=4\n").format == "raw"
    assert probe(b"#" * 600 + b"\n" + descriptor).format == "raw"  # past the 512 bytes
    assert probe(b"QFI\xfb" + struct.pack(">I", 1) + bytes(100)).format == "qcow"
    assert probe(b"LUKS\xba\xbe" + struct.pack(">H", 2) + bytes(100)).format == "raw"


_LINES = st.sampled_from(
    [b"", b"   ", b"# a comment", b"#", b"  \r", b"\t", b"\x01", b"\x00", b"Version=1", b" x"]
)
_VERSIONS = st.sampled_from(
    [
        b"version=1\n",
        b"version=2\r\n",
        b"version=3\n",
        b"version=4\n",
        b"version=1 \n",
        b"version=1\r\r\n",
        b" version=1\n",
    ]
)
_PADS = st.sampled_from([b"", b"\0" * 700])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    prefix=st.lists(_LINES, max_size=4), version=_VERSIONS, pad=st.sampled_from([b"", b"\0" * 700])
)
def test_what_inspection_accepts_qemu_opens_as_recorded(
    tmp_path: Path, prefix: list[bytes], version: bytes, pad: bytes
) -> None:
    """Descriptor-like heads: whatever is accepted, qemu-img (no ``-f``) opens as recorded."""
    body = b'CID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
    body += b'RW 8 FLAT "marker.raw" 0\n'
    data = b"".join(line + b"\n" for line in prefix) + version + body + pad
    hostile.marker(tmp_path)
    path = tmp_path / "head.img"
    path.write_bytes(data)
    try:
        found = inspect(data)
    except ImageRefusedError:
        return
    assert found == Inspection("raw", -(-len(data) // 512) * 512, None)
    hostile.assert_qemu_sees(path, found, tmp_path)


def _zipped(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("disk.qcow2", data)
    return out.getvalue()


@pytest.mark.parametrize(
    "kind",
    ["gzip", "xz", "zstd", "bzip2", "zip", "elf"],
)
def test_what_is_no_disk_is_refused(tmp_path: Path, kind: str) -> None:
    """Mistaken uploads: a compressed cloud image, an archive, a program."""
    disk = images.qcow2(tmp_path).read_bytes()
    data = {
        "gzip": lambda: gzip.compress(disk),
        "xz": lambda: lzma.compress(disk),
        "zstd": lambda: zstandard.ZstdCompressor().compress(disk),
        "bzip2": lambda: bz2.compress(disk),
        "zip": lambda: _zipped(disk),
        "elf": lambda: Path(sys.executable).resolve().read_bytes(),
    }[kind]()
    assert refused_rule(data) == "not-a-disk"


def test_empty_image_is_refused_and_a_tiny_one_is_a_sector(tmp_path: Path) -> None:
    """No disk has zero bytes. A 25-byte text cannot be told from a tiny raw disk: qemu
    opens it as one sector, which is what is recorded."""
    assert refused_rule(b"") == "empty-image"
    path = tmp_path / "note.txt"
    path.write_bytes(b"this is not a disk image\n")
    found = inspect(path.read_bytes())
    assert found == Inspection("raw", 512, None)
    hostile.assert_qemu_sees(path, found, tmp_path)


def _every_kind() -> list[object]:
    tools = {**hostile.HOSTILE_TOOLS, **NEEDS_TOOL}
    kinds = {f"hostile:{n}": (m, True) for n, (m, _) in hostile.HOSTILE.items()}
    kinds |= {f"refused:{n}": (m, False) for n, (m, _) in images.REFUSED.items()}
    kinds |= {f"accepted:{n}": (a.make, False) for n, a in ACCEPTED.items()}
    params = []
    for name, (make, early) in kinds.items():
        tool = tools.get(name.split(":", 1)[1])
        params.append(pytest.param(make, early, id=name, marks=[tool] if tool else []))
    return params


@pytest.mark.parametrize(("make", "decided_early"), _every_kind())
def test_a_refusal_the_first_mib_decides_is_the_one_finish_gives(
    tmp_path: Path, make: Callable[[Path], Path], decided_early: bool
) -> None:
    """An upload stops reading at the early refusal; the verdict at the end would have
    been the same refusal, and an accepted image is never refused early. Each image is
    padded to 2 MiB so that its first MiB is complete before the end."""
    data = make(tmp_path).read_bytes().ljust(2 * MIB, b"\0")
    inspector = ImageInspector(InspectionPolicy())
    inspector.feed(data[:MIB])
    early = inspector.refusal
    assert early is not None or not decided_early
    inspector.feed(data[MIB:])
    late = None
    try:
        inspector.finish(len(data))
    except ImageRefusedError as exc:
        late = exc
    if early is not None:
        assert late is not None
        assert early.context == late.context
