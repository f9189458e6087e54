"""``random_image``, the random bytes tests upload: the inspector always calls them raw.

Plain random bytes are refused 1 time in 65,536 (an MBR signature by chance), which makes
every test that uploads them flaky; these tests keep the helper from drifting back.
"""

from __future__ import annotations

import pytest

from cloudimg.errors import ImageRefusedError
from cloudimg.images import ImageInspector, Inspection, InspectionPolicy
from tests.support import random_image

KIB = 1024
MIB = 1024 * KIB
SIZES = [1, 64, 510, 511, 512, 513, 4 * KIB, 32 * KIB + 6, 64 * KIB, MIB - 1, MIB, MIB + 1]


def inspect(data: bytes) -> Inspection:
    inspector = ImageInspector(InspectionPolicy())
    inspector.feed(data)
    return inspector.finish(len(data))


@pytest.mark.parametrize("size", SIZES)
def test_random_image_of_any_size_is_raw(size: int) -> None:
    data = random_image(size)
    assert len(data) == size
    # qemu-img counts a raw disk in whole 512-byte sectors: so does inspection.
    assert inspect(data) == Inspection("raw", -(-size // 512) * 512, None)


def test_an_empty_random_image_is_no_disk() -> None:
    assert random_image(0) == b""
    with pytest.raises(ImageRefusedError) as caught:
        inspect(b"")
    assert caught.value.context["rule"] == "empty-image"


def test_random_image_never_carries_an_mbr_signature() -> None:
    for _ in range(2000):
        data = random_image(512)
        assert data[510:512] == b"\0\0"
        assert inspect(data).format == "raw"


def test_random_image_is_random() -> None:
    assert len({random_image(512) for _ in range(8)}) == 8


def test_random_bytes_with_an_mbr_signature_are_refused() -> None:
    """Why the helper exists: the 1-in-65,536 case of plain random bytes, made certain."""
    data = bytearray(random_image(512))
    data[0x10] = 0  # not a FAT boot sector (two FATs), which the inspector lets through
    data[446] = 0x7F  # the first partition entry's boot flag: neither 0x00 nor 0x80
    data[510:512] = b"\x55\xaa"
    with pytest.raises(ImageRefusedError) as caught:
        inspect(bytes(data))
    assert caught.value.context["rule"] == "partition-table-invalid"
