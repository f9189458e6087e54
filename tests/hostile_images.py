"""Images built to make a downloader's qemu-img read a file of its own machine.

Every file such an image names is ``marker.raw`` in the test's own directory (a stand-in
for ``/etc/passwd``), named relative to the image or by its absolute path inside that
directory: never a system file. :func:`assert_qemu_sees` is the check that matters: the
real qemu-img opens what the registry accepted, without ``-f`` as CDI does, and must see
what was recorded and read nothing else.
"""

from __future__ import annotations

import json
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from cloudimg.images import Inspection
from tests import images
from tests.images import MIB

MARKER = b"MARKER-of-the-downloaders-host-file\n" * 64
"""The bytes of the stand-in host file; a converted disk that holds them read it."""


def marker(tmp_path: Path) -> Path:
    path = tmp_path / "marker.raw"
    if not path.exists():
        path.write_bytes(MARKER.ljust(4096, b"\0"))
    return path


def _descriptor(extent: str, *, create_type: str = "monolithicFlat", eol: str = "\n") -> str:
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        "CID=fffffffe",
        "parentCID=ffffffff",
        f'createType="{create_type}"',
        "",
        extent,
        "",
    ]
    return eol.join(lines)


def _flat_extent(tmp_path: Path, *, absolute: bool = False, sep: str = " ") -> str:
    path = marker(tmp_path)
    name = str(path) if absolute else path.name
    return sep.join(["RW", "8", "FLAT", f'"{name}"', "0"])


def descriptor_nul_padded(tmp_path: Path) -> Path:
    """A text descriptor padded with NULs: oslo.utils saw a binary file, qemu a vmdk."""
    text = _descriptor(_flat_extent(tmp_path)).encode()
    path = tmp_path / "nul-padded.img"
    path.write_bytes(text.ljust(MIB, b"\0"))
    return path


def descriptor_control_byte(tmp_path: Path) -> Path:
    """One control byte in a comment, an absolute extent path inside the test's dir."""
    text = "# made by \x01 hand\n" + _descriptor(_flat_extent(tmp_path, absolute=True))
    path = tmp_path / "control-byte.img"
    path.write_bytes(text.encode())
    return path


def descriptor_crlf_tabs(tmp_path: Path) -> Path:
    """CRLF line ends, blank and comment lines before ``version=``, a tab-separated extent."""
    text = "   \r\n# comment\r\n" + _descriptor(_flat_extent(tmp_path, sep="\t"), eol="\r\n")
    path = tmp_path / "crlf-tabs.img"
    path.write_bytes(text.encode() + b"\0" * 4096)
    return path


def descriptor_in_iso_system_area(tmp_path: Path) -> Path:
    """An ISO whose first bytes (its system area, free for any use) are a descriptor."""
    text = _descriptor(_flat_extent(tmp_path)).encode() + b"\0"
    assert len(text) < 512
    return images.patch(images.iso(tmp_path), 0, text)


def descriptor_in_mbr_boot_code(tmp_path: Path) -> Path:
    """A valid DOS-partitioned disk whose 446 bytes of boot code are a descriptor."""
    text = _descriptor(_flat_extent(tmp_path)).encode()
    assert len(text) < 446
    return images.patch(images.partitioned(tmp_path, "dos"), 0, text.ljust(446, b"\0"))


def _kdmv_header(capacity: int, desc_offset: int, desc_size: int = 20) -> bytes:
    # version 1, flags 3, capacity, granularity 128, desc offset/size, 512 GTEs per GT,
    # rgd 0, gd 21, grain offset 128, filler, check bytes, no compression.
    fields = (1, 3, capacity, 128, desc_offset, desc_size, 512, 0, 21, 128, 0,
              b"\n \r\n", 0)  # fmt: skip
    return b"KDMV" + struct.pack("<IIQQQQIQQQB4sH", *fields)


def kdmv_capacity_zero(tmp_path: Path) -> Path:
    """A sparse header of capacity 0, which makes qemu follow its embedded descriptor.

    oslo.utils reads the first, lower-case ``createtype`` and sees a decoy ``NOACCESS``
    extent; qemu's ``strstr`` finds the case-sensitive ``createType`` and parses the
    tab-separated ``RW`` extent (oslo took it, with its ``=``, for a header field).
    """
    extent = "\t".join(["RW", "8", "FLAT", '"marker.raw"', "0", "="])
    desc = (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createtype="monolithicSparse"\ncreateType="monolithicFlat"\n'
        f"NOACCESS 1 ZERO\n{extent}\n"
    ).encode()
    path = tmp_path / "capacity-zero.vmdk"
    marker(tmp_path)
    path.write_bytes(_kdmv_header(0, 1).ljust(512, b"\0") + desc.ljust(127 * 512, b"\0"))
    return path


def vmdk_with_parent_hint(tmp_path: Path) -> Path:
    """qemu-img's own monolithicSparse with ``parentFileNameHint`` in a descriptor comment:
    qemu's ``strstr`` finds it anywhere and opens that file as the backing file."""
    path = images.vmdk(tmp_path, "monolithicSparse")
    data = bytearray(path.read_bytes())
    end = data.index(b"\0", 512)
    hint = b'# parentFileNameHint="marker.raw"\n'
    data[end : end + len(hint)] = hint
    marker(tmp_path)
    path.write_bytes(bytes(data))
    return path


def cowd(tmp_path: Path) -> Path:
    path = tmp_path / "cowd.vmdk"
    path.write_bytes(b"COWD" + struct.pack("<I", 1) + bytes(MIB))
    return path


def qcow_v1_with_backing_file(tmp_path: Path) -> Path:
    top = tmp_path / "top.qcow"
    images.qemu_img("create", "-q", "-f", "qcow", "-b", marker(tmp_path), "-F", "raw", top)
    return top


def parallels_huge(tmp_path: Path) -> Path:
    """42 MB of Parallels that qemu opens as a 10 TiB disk (oslo.utils: raw, 42 MB)."""
    return images.create(tmp_path, "parallels", "10T")


def bochs_huge(tmp_path: Path) -> Path:
    """A Bochs growing redolog of 10 TiB, written by hand (qemu-img cannot create one)."""
    header = bytearray(512)
    header[0:32] = b"Bochs Virtual HD Image".ljust(32, b"\0")
    header[32:48] = b"Redolog".ljust(16, b"\0")
    header[48:64] = b"Growing".ljust(16, b"\0")
    # version 2, header size 512; redolog: catalog entries, bitmap and extent sizes, disk.
    struct.pack_into("<IIIIIQ", header, 64, 0x00020000, 512, 2048, 1, 8192 * 512, 10 << 40)
    path = tmp_path / "bochs.img"
    path.write_bytes(bytes(header) + bytes(2048 * 4) + bytes(MIB))
    return path


def cloop(tmp_path: Path) -> Path:
    magic = (
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
    )
    path = tmp_path / "cloop.img"
    path.write_bytes(magic.ljust(MIB, b"\0"))
    return path


def vhd_with_original_size(tmp_path: Path, size: str, original: int) -> Path:
    """A dynamic VHD from qemu-img whose footer's "original size" says ``original``:
    oslo.utils reads that field, qemu the geometry (creator app "qemu")."""
    path = images.create(tmp_path, "vpc", size)
    data = bytearray(path.read_bytes())
    for at in (0, len(data) - 512):  # the footer copy at the start, and the footer
        footer = bytearray(data[at : at + 512])
        struct.pack_into(">Q", footer, 40, original)
        struct.pack_into(">I", footer, 64, 0)
        checksum = ~sum(footer[:85]) & 0xFFFFFFFF
        struct.pack_into(">I", footer, 64, checksum)
        data[at : at + 512] = footer
    path.write_bytes(bytes(data))
    return path


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=31)
    return compressor.compress(data) + compressor.flush()


HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "descriptor-nul-padded": (descriptor_nul_padded, "vmdk-descriptor-only"),
    "descriptor-control-byte": (descriptor_control_byte, "vmdk-descriptor-only"),
    "descriptor-crlf-tabs": (descriptor_crlf_tabs, "vmdk-descriptor-only"),
    "descriptor-in-iso-system-area": (descriptor_in_iso_system_area, "vmdk-descriptor-only"),
    "descriptor-in-mbr-boot-code": (descriptor_in_mbr_boot_code, "vmdk-descriptor-only"),
    "kdmv-capacity-zero": (kdmv_capacity_zero, "vmdk-embedded-descriptor"),
    "vmdk-parent-hint": (vmdk_with_parent_hint, "vmdk-parent"),
    "cowd": (cowd, "vmdk-cowd"),
    "qcow-v1-backing-file": (qcow_v1_with_backing_file, "qcow2-unknown-version"),
    "parallels-10t": (parallels_huge, "format-not-allowed"),
    "bochs-10t": (bochs_huge, "format-not-allowed"),
    "cloop": (cloop, "format-not-allowed"),
}
"""Hostile kinds: how to build one in a test's directory and the rule that refuses it."""

HOSTILE_TOOLS = {
    "descriptor-in-iso-system-area": images.needs_xorriso,
    "descriptor-in-mbr-boot-code": images.needs_sfdisk,
}


def qemu_info(path: Path) -> dict[str, object]:
    """``qemu-img info`` as CDI runs it: no ``-f``, the format probed."""
    info: dict[str, object] = json.loads(images.qemu_img("info", "--output=json", path))
    return info


def assert_qemu_sees(path: Path, recorded: Inspection, tmp_path: Path) -> None:
    """qemu-img opens ``path`` (downloaded bytes) as recorded and reads no other file."""
    info = qemu_info(path)
    expected_format = "raw" if recorded.format == "iso" else recorded.format
    assert info["format"] == expected_format, info
    assert info["virtual-size"] == recorded.virtual_size, info
    assert "backing-filename" not in info, info
    assert "data-file" not in json.dumps(info.get("format-specific", {})), info
    out = tmp_path / f"{path.name}.converted"
    done = subprocess.run(
        [str(images.QEMU_IMG), "convert", "-m", "1", "-O", "raw", str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with out.open("rb") as converted:
        while chunk := converted.read(4 * MIB):
            assert MARKER[:32] not in chunk
    out.unlink()


def stand_in_qemu_img(tmp_path: Path, lie: bool) -> Path:
    """A ``qemu-img`` first on PATH that logs its arguments and runs the real one; with
    ``lie``, it reports a virtual size one sector larger (a disagreement the real
    qemu-img and a correct inspection cannot produce, so it is made here)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "qemu-img"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, subprocess, sys\n"
        f"open({str(tmp_path / 'calls.log')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"done = subprocess.run([{images.QEMU_IMG!r}, *sys.argv[1:]], capture_output=True,"
        " text=True, close_fds=False)\n"
        "out = done.stdout\n"
        f"if {lie!r} and done.returncode == 0:\n"
        "    info = json.loads(out); info['virtual-size'] += 512; out = json.dumps(info)\n"
        "sys.stdout.write(out); sys.stderr.write(done.stderr); sys.exit(done.returncode)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder
