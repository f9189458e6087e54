"""Real small volumes for full-disk tests: a tmpfs mounted for the test, filled for real."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "free_bytes", "tmpfs"]


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str = "32m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mount_point``; skips the test where mounting is not allowed."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(volume: Path, name: str = "filler") -> Path:
    """Write a file until the volume is full; returns it (delete it to free the space)."""
    filler = volume / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (256 * 1024, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def free_bytes(volume: Path) -> int:
    """Bytes an unprivileged writer may still write to ``volume``."""
    stat = os.statvfs(volume)
    return stat.f_bavail * stat.f_frsize
