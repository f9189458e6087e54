"""A real VM client: qemu-img reads images over HTTP with its curl block driver.

qemu's curl driver sends HEAD for the size, then a Range request for every read, so
this is the end-to-end check of docs/api.md's "Downloading" (HEAD, Content-Length,
Accept-Ranges, 206) with the client CDI uses to import images.

Every ``qemu-img convert`` that reads over HTTP passes ``-m 1`` (one coroutine in
flight): with several, qemu 7.2's curl driver hangs now and then, against any HTTP
server (see docs/cdi.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from tests.conftest import RunningServer, upload

QEMU_IMG = shutil.which("qemu-img")
MIB = 1024 * 1024
VIRTUAL_SIZE = 8 * MIB
_QEMU_TIMEOUT_SECS = 120


def _has_http_driver() -> bool:
    if QEMU_IMG is None:
        return False
    help_text = subprocess.run(
        [QEMU_IMG, "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "http" in help_text.rpartition("Supported formats:")[2].split()


pytestmark = [
    pytest.mark.skipif(
        QEMU_IMG is None, reason="qemu-img not found (Debian: qemu-utils + qemu-block-extra)"
    ),
    pytest.mark.skipif(
        not _has_http_driver(), reason="qemu-img has no http driver (Debian: qemu-block-extra)"
    ),
]


@dataclass(frozen=True)
class ServedDisk:
    """A qcow2 disk uploaded to the registry, and the raw bytes it holds."""

    base_url: str
    image_path: str
    tag: str
    qcow2: bytes
    raw: bytes

    def url(self, reference: str) -> str:
        if reference == "tag":
            name = self.tag
        elif reference == "blake3":
            name = "blake3:" + blake3.blake3(self.qcow2).hexdigest()
        else:
            name = "sha256:" + hashlib.sha256(self.qcow2).hexdigest()
        return f"{self.base_url}{self.image_path}/{name}"


def known_raw_disk() -> bytes:
    """Data qemu must give back bit for bit: a pattern, random bytes, holes, an odd tail."""
    disk = bytearray(VIRTUAL_SIZE)
    disk[0:MIB] = b"\xab" * MIB
    disk[2 * MIB : 2 * MIB + 512 * 1024] = os.urandom(512 * 1024)
    disk[5 * MIB + 4096 : 5 * MIB + 8192] = os.urandom(4096)  # off any cluster boundary
    disk[-4096:] = b"end of disk\n".ljust(4096, b"\x5c")
    return bytes(disk)


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run(
        [QEMU_IMG, *args], capture_output=True, text=True, timeout=_QEMU_TIMEOUT_SECS, check=False
    )


def check_ok(result: subprocess.CompletedProcess[str], server: RunningServer) -> None:
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}\nstdout: {result.stdout}\n"
        f"stderr: {result.stderr}\nserver log (tail):\n{server.log()[-3000:]}"
    )


@pytest.fixture(scope="module")
def disk(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> ServedDisk:
    """Convert known raw bytes to qcow2 locally and upload the qcow2."""
    work = tmp_path_factory.mktemp("qemu")
    raw_path, qcow2_path = work / "disk.raw", work / "disk.qcow2"
    raw = known_raw_disk()
    raw_path.write_bytes(raw)
    converted = qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw_path), str(qcow2_path))
    check_ok(converted, server)
    qcow2 = qcow2_path.read_bytes()
    assert len(qcow2) < VIRTUAL_SIZE  # holes stay holes: the qcow2 is no raw copy
    image_path = f"/reg/q-{secrets.token_hex(6)}/vm-disk"
    with server.client() as http:
        response = upload(http, f"{image_path}/v1", qcow2)
        assert response.status_code == 201, response.text
    return ServedDisk(server.base_url, image_path, "v1", qcow2, raw)


REFERENCES = ["tag", "blake3", "sha256"]


@pytest.mark.parametrize("reference", REFERENCES)
def test_info_over_http_reports_qcow2_and_virtual_size(
    server: RunningServer, disk: ServedDisk, reference: str
) -> None:
    result = qemu_img("info", "--output=json", disk.url(reference))
    check_ok(result, server)
    info = json.loads(result.stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == VIRTUAL_SIZE


@pytest.mark.parametrize("reference", REFERENCES)
def test_convert_over_http_gives_the_original_raw_bytes(
    server: RunningServer, disk: ServedDisk, reference: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.raw"
    converted = qemu_img(
        "convert", "-m", "1", "-f", "qcow2", "-O", "raw", disk.url(reference), str(out)
    )
    check_ok(converted, server)
    converted = out.read_bytes()
    assert len(converted) == VIRTUAL_SIZE
    assert converted == disk.raw


def test_raw_read_over_http_gives_the_qcow2_bytes(
    server: RunningServer, disk: ServedDisk, tmp_path: Path
) -> None:
    # Read as raw: every byte of the file through the curl driver's Range requests.
    out = tmp_path / "copy.qcow2"
    check_ok(
        qemu_img("convert", "-m", "1", "-f", "raw", "-O", "raw", disk.url("tag"), str(out)), server
    )
    assert out.read_bytes() == disk.qcow2
