"""Crashes at exact points of the delete and overwrite protocols, made with strace.

``strace -f`` is attached to a running server (after its start-up, whose SQLite WAL
clean-up unlinks files too) with a fault injected into one file-system call of the
protocol (docs/architecture.md, "How a commit and a delete stay safe"):

- ``signal=KILL`` on a call: the kernel kills the server as it enters the call, which
  therefore never runs (a crash right *before* that step);
- ``delay_exit`` on a call: the call has run and the server is held after it; strace logs
  the call, and the test kills the server with SIGKILL then (a crash right *after* it);
- ``delay_enter`` on a call: strace logs the call's arguments as it holds the server
  before it, and the test kills the server when the arguments are the step's.

Either way the server dies of a real SIGKILL with the request half done. After each
crash the files must be as that step leaves them (``_check_left``), so a fault that hit
elsewhere fails the test instead of testing something else. The test then starts a
plain server on the same data root and catalog and downloads every listed tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloudimg.config import Settings
from cloudimg.registry import open_registry
from tests.conftest import RunningServer, start_server, upload
from tests.databases import catalog_url
from tests.maintenance_support import put
from tests.support import blake3_hex, blob_path, random_image

__all__ = [
    "DELETE_POINTS",
    "FREE_AT_ONCE",
    "OVERWRITE_POINTS",
    "STRACE",
    "Crash",
    "FaultPoint",
    "Images",
    "Traced",
    "crash_at",
    "download_every_tag",
    "expected_tags",
    "seed",
    "send_in_background",
    "trace",
    "victim_digest",
    "wait_for_log",
]

STRACE = "/usr/bin/strace"
_FILE_CALLS = "rename,renameat,renameat2,link,linkat,unlink,unlinkat"
_HOLD_US = 600_000_000
"""How long ``delay_exit`` holds the server: far longer than any test waits for the kill."""
_ENTRY_HOLD_US = 5_000_000
"""How long ``delay_enter`` holds each call: the test's margin to kill the server there
(it polls strace's log every 50 ms); a kill that comes late fails the crash checks."""
_TIMEOUT = 60.0
_RENAMES = "rename,renameat,renameat2"
_LINKS = "link,linkat"
_UNLINKS = "unlink,unlinkat"

FREE_AT_ONCE = ("--keep-history", "0", "--qemu-img-check", "off")
"""Server flags under which a delete or an overwrite frees the old bytes in the same
transaction: the protocol the crash tests trace (tag history would hold the bytes).
And no qemu-img cross-check: ``strace -f`` follows the child processes it starts, whose
own file calls would be counted as the server's steps."""


@dataclass(frozen=True)
class FaultPoint:
    """A moment in a protocol at which the server dies, and what it leaves on disk."""

    name: str
    protocol: str
    """``delete`` (DELETE of a tag whose blob no other tag uses) or ``overwrite``
    (upload of other bytes to that tag)."""
    inject: str
    """The value of strace's ``-e inject=``."""
    kill_on: str | None
    """A regex of strace's log: the test kills the server when a line matches (None:
    strace's ``signal=KILL`` does)."""
    committed: bool
    """Whether the catalog change is committed at that moment."""
    trashed: bool
    """The old blob's file is in ``trash/`` at the crash."""
    placed: bool = False
    """Overwrite: the new blob's file is in the blob tree at the crash."""
    staged: bool = False
    """Overwrite: the upload's staging file is still there at the crash."""

    def __str__(self) -> str:
        return f"{self.protocol}:{self.name}"


def _kill_before(calls: str) -> str:
    return f"{calls}:signal=KILL"


def _hold_after(calls: str) -> str:
    return f"{calls}:delay_exit={_HOLD_US}"


def _held(calls: str) -> str:
    """strace's line for a delayed call; after another thread's event it says only
    ``<... rename resumed>``, so the call's paths are checked on disk instead."""
    return rf"\b({calls.replace(',', '|')})\b.*= 0 \(DELAYED\)"


_R, _L, _U = _RENAMES, _LINKS, _UNLINKS
DELETE_POINTS = [
    # Tag row dropped and reference released in the open transaction; file untouched.
    FaultPoint("before-trash-rename", "delete", _kill_before(_R), None, False, False),
    # The blob file is in trash/, the transaction is not committed: the reported bug.
    FaultPoint("after-trash-rename", "delete", _hold_after(_R), _held(_R), False, True),
    # Committed; the trash file is not yet removed (the first unlink of a delete).
    FaultPoint("before-purge", "delete", _kill_before(_U), None, True, True),
    FaultPoint("after-purge", "delete", _hold_after(_U), _held(_U), True, False),
]
OVERWRITE_POINTS = [
    FaultPoint(
        "before-trash-rename", "overwrite", _kill_before(_R), None, False, False, staged=True
    ),
    FaultPoint(
        "after-trash-rename", "overwrite", _hold_after(_R), _held(_R), False, True, staged=True
    ),
    # The old blob is in trash/, the new one is about to be linked into the blob tree.
    FaultPoint("before-place", "overwrite", _kill_before(_L), None, False, True, staged=True),
    FaultPoint(
        "after-place", "overwrite", _hold_after(_L), _held(_L), False, True, True, staged=True
    ),
    # The first unlink of an overwrite drops the staging file's name.
    FaultPoint("after-staging-unlink", "overwrite", _hold_after(_U), _held(_U), False, True, True),
    # Committed; the next unlink removes the old blob's trash file. strace counts calls
    # per thread, and the staging file's unlink may run on another worker thread than
    # the purge, so every unlink is held a while as it starts (strace logs its path
    # then) and the test kills the server at the one of a trash file.
    FaultPoint(
        "before-purge",
        "overwrite",
        f"{_U}:delay_enter={_ENTRY_HOLD_US}",
        r"\bunlink(at)?\(.*/trash/",
        True,
        True,
        True,
    ),
]


@dataclass
class Images:
    """What the test stored: tag path -> bytes, and the bytes of the overwrite."""

    tags: dict[str, bytes]
    victim: str
    """The tag the faulted request deletes or overwrites."""
    replacement: bytes


def seed(data_root: Path, prefix: str) -> Images:
    """Store a victim tag (bytes no other tag has) and a bystander, as uploads do."""
    victim = f"/reg/crash/{prefix}/victim"
    tags = {
        victim: random_image(200_000) + prefix.encode(),
        f"/reg/crash/{prefix}/bystander": random_image(50_000),
    }

    async def store() -> None:
        settings = Settings(data_root=data_root, database_url=catalog_url(data_root))
        async with open_registry(settings, migrate=True) as registry:
            for path, data in tags.items():
                await put(registry.catalog, path.removeprefix("/reg/"), data)

    asyncio.run(store())
    return Images(tags, victim, random_image(120_000) + b"new" + prefix.encode())


@dataclass
class Traced:
    """A running server with strace attached to every thread of it."""

    server: RunningServer
    strace: subprocess.Popen[bytes]
    log: Path
    """strace's output: one line per traced call."""

    def release(self) -> None:
        """Kill strace only: the kernel detaches the server, which goes on from where it was."""
        self.strace.kill()
        self.strace.wait(timeout=_TIMEOUT)

    def kill(self) -> None:
        """kill -9 the server, then strace, and wait until the server is gone.

        A thread that strace holds in a delay dies only when strace lets it go, so strace
        is killed as well (the kernel then detaches the dying threads).
        """
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.server.process.pid, signal.SIGKILL)
        self.strace.kill()
        self.strace.wait(timeout=_TIMEOUT)
        self.server.process.wait(timeout=_TIMEOUT)


def trace(
    server: RunningServer, inject: str | None, calls: str = _FILE_CALLS, path: Path | None = None
) -> Traced:
    """Attach ``strace -f`` to a running server (so its start-up is not traced).

    ``inject`` is the fault (none: only log ``calls``, those naming ``path`` if given).
    """
    log = server.data_root.parent / f"strace-{server.port}.log"
    errors = server.data_root.parent / f"strace-{server.port}.err"
    command = [
        STRACE,
        "-f",
        "-s",
        "4096",
        "-o",
        str(log),
        "-e",
        f"trace={calls}",
        *(["-e", f"inject={inject}"] if inject else []),
        *(["-P", str(path)] if path else []),
        "-p",
        str(server.process.pid),
    ]
    with errors.open("wb") as stderr:
        strace = subprocess.Popen(command, stderr=stderr)
    traced = Traced(server, strace, log)
    # strace reports the attach once it holds every thread of the server.
    deadline = time.monotonic() + _TIMEOUT
    while " attached" not in errors.read_text():
        if strace.poll() is not None or time.monotonic() > deadline:
            traced.kill()
            raise RuntimeError(f"strace did not attach: {errors.read_text()}")
        time.sleep(0.05)
    return traced


def wait_for_log(path: Path, pattern: str, process: subprocess.Popen[bytes]) -> str:
    """Wait until a line of strace's log matches ``pattern``; the line."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if regex.search(line):
                return line
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"strace never logged {pattern!r}:\n{text[-3000:]}")


@dataclass
class Crash:
    """What a crash at a fault point left on disk."""

    point: FaultPoint
    images: Images
    trash: list[str]
    """Names of the files in ``trash/`` right after the crash (earlier crashes' too)."""


def send_in_background(
    server: RunningServer, point: FaultPoint, images: Images
) -> tuple[threading.Thread, list[object]]:
    """Start the point's request (DELETE or overwriting upload) on a thread.

    The list gets the response, or the transport error of a server that died under it.
    """
    answers: list[object] = []

    def request() -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=_TIMEOUT * 2) as http:
                if point.protocol == "delete":
                    answers.append(http.delete(images.victim))
                else:
                    answers.append(upload(http, images.victim, images.replacement))
        except httpx.TransportError as exc:
            answers.append(exc)

    sender = threading.Thread(target=request)
    sender.start()
    return sender, answers


def crash_at(
    point: FaultPoint, data_root: Path, images: Images, traced: Traced | None = None
) -> Crash:
    """Run the point's request against a traced server and crash it there.

    ``traced`` is a server already under strace with the point's injection; by default
    one is started on ``data_root``.
    """
    traced = traced or trace(start_server(data_root, *FREE_AT_ONCE), point.inject)
    server = traced.server
    staging_before = set((data_root / "staging").iterdir())
    sender, answers = send_in_background(server, point, images)
    try:
        if point.kill_on is not None:
            wait_for_log(traced.log, point.kill_on, server.process)
        else:
            server.process.wait(timeout=_TIMEOUT)  # strace's SIGKILL ends the server
    finally:
        traced.kill()
        sender.join(timeout=_TIMEOUT)
    assert answers, f"{point}: the request neither ended nor failed"
    assert isinstance(answers[0], httpx.TransportError), (
        f"{point}: the request was answered, the crash came too late: {answers}\n{server.log()}"
    )
    trash = sorted(p.name for p in (data_root / "trash").iterdir())
    staged = set((data_root / "staging").iterdir()) - staging_before
    crash = Crash(point, images, trash)
    _check_left(crash, data_root, bool(staged))
    return crash


def _check_left(crash: Crash, data_root: Path, staged: bool) -> None:
    """The crash came where the point says: the files are as that step leaves them."""
    point, images = crash.point, crash.images
    old = blake3_hex(images.tags[images.victim])
    new = blake3_hex(images.replacement)
    left = {
        "trashed": any(name.split(".")[0] == old for name in crash.trash),
        "placed": blob_path(data_root, new).exists(),
        "staged": staged,
    }
    wanted = {"trashed": point.trashed, "placed": point.placed, "staged": point.staged}
    assert left == wanted, f"{point}: the crash left {left}, the step leaves {wanted}"


def download_every_tag(server: RunningServer) -> dict[str, bytes | str]:
    """GET and HEAD every tag the listings name: path -> bytes, or what went wrong."""
    found: dict[str, bytes | str] = {}
    with server.client() as http:
        for repo in http.get("/reg/").json()["data"]:
            for image in http.get(f"/reg/{repo}").json()["data"]:
                for tag in http.get(f"/reg/{repo}/{image}").json()["data"]:
                    path = f"/reg/{repo}/{image}/{tag}"
                    head = http.head(path)
                    got = http.get(path)
                    if head.status_code != 200 or got.status_code != 200:
                        found[path] = f"HEAD {head.status_code}, GET {got.status_code}: {got.text}"
                    elif int(head.headers["content-length"]) != len(got.content):
                        found[path] = "HEAD's Content-Length is not the body's length"
                    else:
                        found[path] = got.content
    return found


def expected_tags(crash: Crash) -> dict[str, bytes]:
    """What every tag must download after the crash, given whether the change committed."""
    tags = dict(crash.images.tags)
    if crash.point.committed:
        if crash.point.protocol == "delete":
            del tags[crash.images.victim]
        else:
            tags[crash.images.victim] = crash.images.replacement
    return tags


def victim_digest(crash: Crash) -> str:
    return blake3_hex(crash.images.tags[crash.images.victim])
