"""The record ``cloudimg gc`` leaves on the data root for the servers' ``/metrics``.

gc runs in another process (a CronJob in the cluster), so its figures cannot live in
the server's memory. Each run that changes things adds itself to a small JSON file,
``<data-root>/gc-last-run.json``: running totals (runs, failed runs, bytes freed) and
the last run's figures. ``/metrics`` reads it at scrape time. The data root is the one
place every server and every gc of a registry share, whatever the catalog backend.

The file is replaced atomically (temporary file, fsync, rename) under an exclusive
``flock`` of the data root directory, so overlapping gc runs add up and a reader
never sees half a file. A missing or unreadable file reads as "no gc ran yet".
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["GC_RECORD_NAME", "GcRecord", "read_gc_record", "record_gc_run"]

GC_RECORD_NAME: Final = "gc-last-run.json"
"""File name under the data root (temporary files start with it too)."""


@dataclass(frozen=True, slots=True)
class GcRecord:
    """Totals of the gc runs on a data root, and the last run."""

    runs_total: int = 0
    failed_runs_total: int = 0
    """Runs that reported problems (``cloudimg gc`` exited 1)."""
    bytes_freed_total: int = 0
    last_run_timestamp: float = 0.0
    """Unix time at which the last run finished."""
    last_run_duration_seconds: float = 0.0
    last_run_bytes_freed: int = 0
    last_run_ok: bool = True


def _path(data_root: Path) -> Path:
    return data_root / GC_RECORD_NAME


def read_gc_record(data_root: Path) -> GcRecord | None:
    """The record on ``data_root``, or None when no gc recorded a run (or it is unreadable)."""
    try:
        raw = json.loads(_path(data_root).read_text())
        fields = {f.name for f in dataclasses.fields(GcRecord)}
        return GcRecord(**{k: v for k, v in raw.items() if k in fields})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record_gc_run(
    data_root: Path, *, ok: bool, bytes_freed: int, duration_seconds: float
) -> GcRecord:
    """Add one finished gc run to the record on ``data_root`` and return the new record."""
    with _locked(data_root):
        old = read_gc_record(data_root) or GcRecord()
        new = GcRecord(
            runs_total=old.runs_total + 1,
            failed_runs_total=old.failed_runs_total + (0 if ok else 1),
            bytes_freed_total=old.bytes_freed_total + bytes_freed,
            last_run_timestamp=time.time(),
            last_run_duration_seconds=duration_seconds,
            last_run_bytes_freed=bytes_freed,
            last_run_ok=ok,
        )
        target = _path(data_root)
        temporary = target.with_name(f"{GC_RECORD_NAME}.tmp-{secrets.token_hex(4)}")
        try:
            with temporary.open("w") as out:
                json.dump(dataclasses.asdict(new), out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(target)
        finally:
            temporary.unlink(missing_ok=True)
    return new
