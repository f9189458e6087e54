"""Progress as a person and a log see it: a bar on a terminal (under tmux), plain lines
otherwise, nothing with ``--quiet``; reports stay alone on stdout."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloudimg.cli.progress import ProgressDisplay
from tests.conftest import RunningServer
from tests.maintenance_support import cli
from tests.support import poll
from tests.test_client import MIB, client, image_bytes, ok

_PLAIN = re.compile(
    r"[a-z ]+: [0-9.]+( [KMGT]?i?B)? of [0-9.]+( [KMGT]?i?B)? \((\d+)%\)"
    r"(, [0-9.]+( [KMGT]?i?B)?/s, (\d+s|\?) left| in [0-9.]+s, [0-9.]+( [KMGT]?i?B)?/s)"
)
"""``hashed: 1.5 MiB of 4.0 MiB (37%), 2.0 MiB/s, 1s left`` or ``... (100%) in 2.0s, ...``."""


def plain_lines(stderr: str) -> list[str]:
    """The lines of ``stderr``, each checked to be a plain progress line (no \\r, no escapes)."""
    assert "\r" not in stderr
    assert "\x1b" not in stderr
    lines = stderr.splitlines()
    for line in lines:
        assert _PLAIN.fullmatch(line), line
    return lines


# -- the display itself ------------------------------------------------------------------


def test_plain_lines_per_task_and_one_final_line() -> None:
    stream = io.StringIO()
    with ProgressDisplay(interval=1e-9, stream=stream) as show:
        show("hashed", 0, 4 * MIB, "bytes")
        show("hashed", MIB, 4 * MIB, "bytes")
        show("checked", 3, 3, "items")
        show("hashed", 4 * MIB, 4 * MIB, "bytes")
        show("hashed", 4 * MIB, 4 * MIB, "bytes")  # the end is told once
    lines = plain_lines(stream.getvalue())
    assert lines[0].startswith("hashed: 0 B of 4.0 MiB (0%)")
    assert lines[1].startswith("hashed: 1.0 MiB of 4.0 MiB (25%)")
    assert lines[2].startswith("checked: 3 of 3 (100%) in ")
    assert lines[3].startswith("hashed: 4.0 MiB of 4.0 MiB (100%) in ")
    assert len(lines) == 4


def test_quiet_shows_nothing() -> None:
    stream = io.StringIO()
    with ProgressDisplay(quiet=True, interval=1e-9, stream=stream) as show:
        show("hashed", MIB, MIB, "bytes")
    assert stream.getvalue() == ""


# -- maintenance commands off a terminal ---------------------------------------------------


@pytest.fixture(scope="module")
def backend() -> str:
    """What is shown does not depend on the catalog's backend."""
    return "sqlite"


def test_maintenance_commands_log_plain_lines_and_keep_stdout_for_the_report(
    server: RunningServer, tmp_path: Path
) -> None:
    (tmp_path / "disk.raw").write_bytes(image_bytes(3 * MIB))
    ok(client("push", "disk.raw", "prog/disk:v1", server=server.base_url, cwd=tmp_path))
    root = str(server.data_root)
    interval = ("--progress-interval", "0.001")

    fsck = cli("fsck", "--data-root", root, "--checksum", "--json", *interval, check=0)
    assert json.loads(fsck.stdout)["ok"] is True  # stdout is the report alone
    tasks = [line.split(":")[0] for line in plain_lines(fsck.stderr)]
    assert "checked" in tasks
    assert "hashed" in tasks
    assert any(
        line.startswith("hashed: 3.0 MiB of 3.0 MiB (100%)") for line in fsck.stderr.splitlines()
    )

    gc = cli("gc", "--data-root", root, "--dry-run", "--json", *interval, check=0)
    json.loads(gc.stdout)
    gc_tasks = {line.split(":")[0] for line in plain_lines(gc.stderr)}
    assert {"trash", "staging", "refcounts", "orphans"} <= gc_tasks

    du = cli("du", "--data-root", root, "--json", *interval, check=0)
    json.loads(du.stdout)
    assert {line.split(":")[0] for line in plain_lines(du.stderr)} == {"catalog", "repositories"}

    quiet = cli("fsck", "--data-root", root, "--checksum", "--quiet", check=0)
    assert quiet.stderr == ""
    assert quiet.stdout.splitlines()[-1].startswith("fsck done")


def test_import_legacy_logs_bytes_imported(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy" / "repo-a" / "image-a" / "v1"
    legacy.mkdir(parents=True)
    (legacy / "image.bin").write_bytes(secrets.token_bytes(MIB))
    (legacy / "meta.json").write_text("{}")
    done = cli(
        "import-legacy", "--data-root", str(tmp_path / "data"), "--from", str(tmp_path / "legacy"),
        "--progress-interval", "0.001",
        check=0,
    )  # fmt: skip
    logs = re.compile(r"\d{4}-\d\d-\d\d .* INFO alembic")  # the catalog's creation, logged
    progress = "\n".join(line for line in done.stderr.splitlines() if not logs.match(line))
    assert plain_lines(progress)[-1].startswith("imported: 1.0 MiB of 1.0 MiB (100%)")


def test_a_push_off_a_terminal_logs_plain_lines(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "disk.raw").write_bytes(image_bytes(8 * MIB))
    done = client(
        "push",
        "disk.raw",
        "prog/plain:v1",
        "--chunk-mib",
        "1",
        server=server.base_url,
        cwd=tmp_path,
    )
    assert ok(done).startswith("pushed prog/plain:v1 (8.0 MiB)")
    lines = plain_lines(done.stderr.decode())
    assert lines[-1].startswith("pushed: 8.0 MiB of 8.0 MiB (100%) in ")


# -- a person at a terminal ----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_push_under_tmux_shows_a_bar_with_rate_and_a_final_line(
    server: RunningServer, tmp_path: Path
) -> None:
    (tmp_path / "disk.raw").write_bytes(image_bytes(24 * MIB))
    session = "cloudimg-" + secrets.token_hex(4)
    command = (
        f"{sys.executable} -m cloudimg push disk.raw prog/tty:v1 --chunk-mib 2; "
        "echo exit=$?; sleep 60"
    )
    environment = {
        "CLOUDIMG_SERVER": server.base_url,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TERM": "xterm-256color",
    }
    tmux = ["tmux", "-L", session]  # a server of its own: no person's session is touched
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "30", "-c", str(tmp_path),
         *[arg for key, value in environment.items() for arg in ("-e", f"{key}={value}")],
         command],
        check=True, env={**os.environ, "TMUX": ""},
    )  # fmt: skip
    try:

        def pane() -> str:
            return subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip

        assert poll(lambda: "exit=" in pane(), 120), pane()
        screen = pane()
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    assert "exit=0" in screen, screen
    bar = next(line for line in screen.splitlines() if line.startswith("pushed "))
    assert "━" in bar  # the bar itself
    assert "100%" in bar
    assert "24.0/24.0 MiB" in bar
    assert re.search(r"[0-9.]+ [kMG]?B/s", bar), bar  # the rate
    assert "pushed prog/tty:v1 (24.0 MiB)" in screen  # the final line
    assert "url: " in screen
