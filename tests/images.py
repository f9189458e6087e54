"""Real disk images made with qemu-img, xorriso and sfdisk inside a test's directory.

Hostile images too: every backing file and external data file they name is a file in
the same directory (``qemu-img create -o data_file=PATH`` truncates PATH), never a
system file. Images stay small and sparse.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

MIB = 1024 * 1024
QEMU_IMG = shutil.which("qemu-img")
XORRISO = shutil.which("xorriso")
SFDISK = shutil.which("sfdisk")

needs_qemu_img = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not found (qemu-utils)")
needs_xorriso = pytest.mark.skipif(XORRISO is None, reason="xorriso not found (apt: xorriso)")
needs_sfdisk = pytest.mark.skipif(SFDISK is None, reason="sfdisk not found (apt: fdisk)")


def run(*args: str | Path, cwd: Path | None = None, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def qemu_img(*args: str | Path, cwd: Path | None = None) -> str:
    assert QEMU_IMG is not None
    return run(QEMU_IMG, *args, cwd=cwd)


def qemu_virtual_size(path: Path, fmt: str) -> int:
    """What qemu-img says the virtual size is (with ``-f``: no probing)."""
    info = json.loads(qemu_img("info", "--output=json", "-f", fmt, path))
    return int(info["virtual-size"])


def create(tmp_path: Path, fmt: str, size: str = "16M", *options: str) -> Path:
    path = tmp_path / f"disk.{fmt}"
    qemu_img("create", "-q", "-f", fmt, *options, path, size)
    return path


def patch(path: Path, offset: int, data: bytes) -> Path:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    return path


def qcow2(tmp_path: Path, *options: str, size: str = "16M") -> Path:
    return create(tmp_path, "qcow2", size, *options)


def qcow2_with_backing_file(tmp_path: Path) -> Path:
    base = create(tmp_path, "raw", "4M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top)
    return top


def qcow2_with_data_file(tmp_path: Path) -> Path:
    data_file = tmp_path / "data-file.bin"  # created (truncated) by qemu-img: ours alone
    return qcow2(tmp_path, "-o", f"data_file={data_file}")


def qcow2_with_unknown_feature(tmp_path: Path) -> Path:
    # Incompatible features: 8 bytes big-endian at 0x48; bit 5 is unknown to qemu and oslo.
    return patch(qcow2(tmp_path), 0x48 + 7, bytes([1 << 5]))


def qcow2_with_version(tmp_path: Path, version: int) -> Path:
    return patch(qcow2(tmp_path), 4, struct.pack(">I", version))


def vmdk(tmp_path: Path, subformat: str) -> Path:
    path = tmp_path / f"{subformat}.vmdk"
    if subformat == "streamOptimized":
        # Converted, not created: convert writes the footer and end-of-stream markers.
        raw = patch(create(tmp_path, "raw", "8M"), 3 * MIB, b"some data" * 100)
        qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
                 raw, path)  # fmt: skip
    else:
        qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", path, "8M")
    return path


def vmdk_with_footer(tmp_path: Path, footer_version: int | None = None) -> Path:
    """A streamOptimized vmdk as VMware writes it: the grain directory offset in a footer.

    qemu-img writes it in the header; this moves it to a footer (marker, header copy,
    end-of-stream marker) at the end, with another version than the header's if given.
    """
    path = vmdk(tmp_path, "streamOptimized")
    data = bytearray(path.read_bytes())
    footer = bytearray(data[:512])
    if footer_version is not None:
        footer[4:8] = struct.pack("<I", footer_version)
    data[56:64] = b"\xff" * 8  # the grain directory is "at the end"
    marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")  # type 3: footer
    path.write_bytes(bytes(data) + marker + bytes(footer) + bytes(512))  # then end of stream
    return path


def vmdk_with_extent_path(tmp_path: Path) -> Path:
    """qemu-img's monolithicSparse with its embedded extent line renamed to a path."""
    path = vmdk(tmp_path, "monolithicSparse")
    data = path.read_bytes()
    start = data.index(b'SPARSE "') + len(b'SPARSE "')
    end = data.index(b'"', start)
    target = str(tmp_path / "other.vmdk").encode()
    patched = data[:start] + target + data[end:]
    # The descriptor is NUL-padded: keep every later byte where it was.
    shift = len(target) - (end - start)
    path.write_bytes(patched[: end + shift + 1] + data[end + 1 + shift :])
    return path


def vmdk_with_bad_descriptor_line(tmp_path: Path) -> Path:
    """qemu-img's monolithicSparse whose descriptor has a line no strict parse accepts."""
    path = vmdk(tmp_path, "monolithicSparse")
    data = path.read_bytes()
    comment = b"# Extent description"
    # Same length, so every later byte stays where it was: not a comment, not key=value,
    # not an extent (RW/RDONLY/NOACCESS), not ddb.
    path.write_bytes(data.replace(comment, b"Extent description!!", 1))
    return path


def vmdk_descriptor(tmp_path: Path, create_type: str, extent: str) -> Path:
    """A text-only vmdk descriptor, the kind whose data lives in other files."""
    path = tmp_path / "descriptor.vmdk"
    path.write_text(
        "# Disk DescriptorFile\n"
        "version=1\n"
        "CID=fffffffe\n"
        "parentCID=ffffffff\n"
        f'createType="{create_type}"\n\n'
        "# Extent description\n"
        f"{extent}\n\n"
        "# The Disk Data Base\n"
        "#DDB\n\n"
        'ddb.virtualHWVersion = "4"\n'
        'ddb.geometry.cylinders = "16"\n'
        'ddb.geometry.heads = "16"\n'
        'ddb.geometry.sectors = "63"\n'
        'ddb.adapterType = "ide"\n'
    )
    return path


def iso(tmp_path: Path) -> Path:
    content = tmp_path / "iso-content"
    content.mkdir()
    (content / "README.TXT").write_text("an installer\n" * 1000)
    path = tmp_path / "disk.iso"
    assert XORRISO is not None
    run(XORRISO, "-as", "mkisofs", "-quiet", "-o", path, content)
    return path


def iso_with_qcow2_header(tmp_path: Path) -> Path:
    """An ISO whose system area (the first 32 KiB, free for the OS) starts with a qcow2."""
    header = qcow2(tmp_path).read_bytes()[:512]
    return patch(iso(tmp_path), 0, header)


def partitioned(tmp_path: Path, label: str) -> Path:
    """A raw disk with a GPT (protective MBR) or a DOS partition table and one partition."""
    path = tmp_path / f"disk-{label}.raw"
    with path.open("wb") as f:
        f.truncate(8 * MIB)
    assert SFDISK is not None
    run(SFDISK, "--quiet", path, stdin=f"label: {label}\n,,L\n")
    return path


def luks1(tmp_path: Path) -> Path:
    """A real 4 MiB LUKS1 container made by qemu-img.

    qemu times its PBKDF on the thread's CPU clock and gives up ("Unable to get accurate
    CPU usage") when a first round measures 0 ms, which that clock's coarse ticks make
    happen about every other time on a fast machine; only that error is tried again.
    """
    path = tmp_path / "disk.luks"
    assert QEMU_IMG is not None
    args = [QEMU_IMG, "create", "-q", "--object", "secret,id=s0,data=passphrase", "-f", "luks",
            "-o", "key-secret=s0,iter-time=10", str(path), "4M"]  # fmt: skip
    for _ in range(20):
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0:
            return path
        assert "accurate CPU usage" in done.stderr, done.stderr
    raise AssertionError("qemu-img could not time its PBKDF in 20 tries")


def luks2_header(tmp_path: Path) -> Path:
    """The first bytes of a LUKS2 container: magic, then version 2 (big-endian)."""
    path = tmp_path / "disk.luks"
    path.write_bytes((b"LUKS\xba\xbe" + struct.pack(">H", 2)).ljust(64 * 1024, b"\0"))
    return path


@dataclass(frozen=True)
class Accepted:
    """An image inspection accepts: what it is and how qemu-img names its format."""

    make: Callable[[Path], Path]
    format: str
    partition_table: str | None = None


ACCEPTED: dict[str, Accepted] = {
    "raw": Accepted(lambda p: create(p, "raw", "4M"), "raw"),
    "qcow2-v2": Accepted(lambda p: qcow2(p, "-o", "compat=0.10"), "qcow2"),
    "qcow2-v3": Accepted(lambda p: qcow2(p, "-o", "compat=1.1"), "qcow2"),
    "vmdk-monolithicSparse": Accepted(lambda p: vmdk(p, "monolithicSparse"), "vmdk"),
    "vmdk-streamOptimized": Accepted(lambda p: vmdk(p, "streamOptimized"), "vmdk"),
    "vmdk-footer": Accepted(vmdk_with_footer, "vmdk"),
    "vhdx": Accepted(lambda p: create(p, "vhdx", "16M"), "vhdx"),
    "vdi": Accepted(lambda p: create(p, "vdi", "16M"), "vdi"),
    "vpc": Accepted(lambda p: create(p, "vpc", "16M"), "vpc"),
    "iso": Accepted(iso, "iso"),
    "gpt": Accepted(lambda p: partitioned(p, "gpt"), "raw", "gpt"),
    "mbr": Accepted(lambda p: partitioned(p, "dos"), "raw", "mbr"),
}
"""Accepted kinds by name; the virtual size to expect is qemu-img's (``-f format``)."""

REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "qcow2-backing-file": (qcow2_with_backing_file, "qcow2-backing-file"),
    "qcow2-data-file": (qcow2_with_data_file, "qcow2-data-file"),
    "qcow2-unknown-feature": (qcow2_with_unknown_feature, "qcow2-unknown-features"),
    "qcow2-version-4": (lambda p: qcow2_with_version(p, 4), "qcow2-unknown-version"),
    "vmdk-extent-path": (vmdk_with_extent_path, "vmdk-extent-path"),
    "vmdk-bad-descriptor-line": (vmdk_with_bad_descriptor_line, "vmdk-descriptor-invalid"),
    "vmdk-monolithicFlat": (
        lambda p: vmdk_descriptor(p, "monolithicFlat", 'RW 2048 FLAT "disk-flat.vmdk" 0'),
        "vmdk-create-type",
    ),
    "vmdk-descriptor-only": (
        lambda p: vmdk_descriptor(p, "monolithicSparse", 'RW 2048 SPARSE "disk-s001.vmdk"'),
        "vmdk-descriptor-only",
    ),
    "qed": (lambda p: create(p, "qed", "16M"), "qed"),
    "luks2": (luks2_header, "luks-version"),
    "iso-with-qcow2-header": (iso_with_qcow2_header, "multiple-formats"),
}
"""Refused kinds by name: how to make one and the rule it breaks (any policy)."""

NEEDS_TOOL = {
    "iso": needs_xorriso,
    "iso-with-qcow2-header": needs_xorriso,
    "gpt": needs_sfdisk,
    "mbr": needs_sfdisk,
}
"""Kinds that need a tool besides qemu-img."""

MAGICS = [
    (0, b"QFI\xfb"),
    (0, b"QED\x00"),
    (0, b"conectix"),
    (0, b"vhdxfile"),
    (0, b"KDMV"),
    (0, b'# Disk DescriptorFile\ncreateType="'),
    (0x40, b"\x7f\x10\xda\xbe"),
    (0, b"LUKS\xba\xbe"),
    (32 * 1024 + 1, b"CD001"),
    (510, b"\x55\xaa"),
]
"""Where each format's magic number sits, and the magic itself (hostile-header tests)."""
