"""Defence in depth: the real qemu-img confirms what inspection accepted, before the commit.

The inspection restates qemu's probing and parsing (:mod:`cloudimg.images.qemu_probe`,
:mod:`cloudimg.images.qemu_open`); this asks qemu-img itself, with ``info
--output=json`` and no ``-f`` (as CDI converts), on the staged bytes, and refuses when
it sees another format or virtual size, a backing file, a data file, or an extent that
is not the image itself. It runs only on images inspection has accepted, so qemu-img
never gets one that names another file by cloudimg's reading of it; and it runs
confined as Nova runs it: ``prlimit`` caps its address space and CPU time, a timeout
ends it, its environment is empty, it works in an empty directory and is given the
bytes as an inherited file descriptor (``/dev/fd/N``), not a path of the server's.

A blob store whose staged bytes are no readable file (an object store mid-upload) gives
no descriptor: there the probe rule alone holds (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from typing import Any, Final

from cloudimg.blobstore import BlobReader
from cloudimg.images.policy import Inspection
from cloudimg.images.rules import refuse

__all__ = ["cross_check", "find_qemu_img"]

_LOG = logging.getLogger(__name__)
_MEMORY_LIMIT: Final = 1024**3
"""Address space qemu-img may take (Nova's limit for the same command)."""
_CPU_SECONDS: Final = 30
_TIMEOUT_SECONDS: Final = 60.0


def find_qemu_img() -> str | None:
    """The qemu-img on ``PATH``, or None."""
    return shutil.which("qemu-img")


def _command(qemu_img: str, path: str) -> list[str]:
    command = [qemu_img, "info", "--output=json", "--force-share", path]
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return command
    return [prlimit, f"--as={_MEMORY_LIMIT}", f"--cpu={_CPU_SECONDS}", "--", *command]


def _info(qemu_img: str, fd: int) -> dict[str, Any]:
    path = f"/dev/fd/{fd}"
    with tempfile.TemporaryDirectory(prefix="cloudimg-qemu-img-") as empty:
        try:
            done = subprocess.run(
                _command(qemu_img, path),
                pass_fds=(fd,),
                cwd=empty,
                env={"LC_ALL": "C"},
                capture_output=True,
                timeout=_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            refuse("qemu-img-disagrees", "qemu-img did not answer in time on these bytes")
    if done.returncode != 0:
        _LOG.warning("qemu-img info refused a staged image: %s", done.stderr[-400:])
        refuse("qemu-img-disagrees", "qemu-img could not open what inspection accepted")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def _other_files(info: dict[str, Any], path: str) -> list[str]:
    """Names of files besides the image that qemu-img reports it would read."""
    names = [info.get("backing-filename"), info.get("full-backing-filename")]
    specific = info.get("format-specific", {}).get("data", {})
    names.append(specific.get("data-file"))
    names += [extent.get("filename") for extent in specific.get("extents", [])]
    return [name for name in names if name is not None and name != path]


def cross_check(qemu_img: str | None, reader: BlobReader, inspection: Inspection) -> None:
    """Refuse (``qemu-img-disagrees``) unless qemu-img sees ``inspection`` in ``reader``'s
    bytes and nothing else. Blocking: run it on a thread. A no-op without ``qemu_img``
    or when the reader is no file."""
    fd = reader.fileno()
    if qemu_img is None or fd is None:
        return
    info = _info(qemu_img, fd)
    seen = (info.get("format"), info.get("virtual-size"))
    expected = ("raw" if inspection.format == "iso" else inspection.format, inspection.virtual_size)
    if seen != expected:
        _LOG.warning("qemu-img sees %s where inspection recorded %s", seen, expected)
        refuse(
            "qemu-img-disagrees",
            f"qemu-img sees {seen[0]} of {seen[1]} bytes where inspection read "
            f"{expected[0]} of {expected[1]} bytes",
            format=inspection.format,
        )
    if _other_files(info, f"/dev/fd/{fd}"):
        refuse("qemu-img-disagrees", "qemu-img would read another file besides the image")
