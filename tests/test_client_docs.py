"""docs/client.md: every example on the page, run in order against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer

DOC = Path(__file__).parent.parent / "docs" / "client.md"
_DOC_SERVER = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def backend() -> str:
    """The examples show the client, not a backend."""
    return "sqlite"


def examples() -> str:
    """The ``sh`` blocks of the page, in order, as one script."""
    return "\n".join(re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S))


def test_the_page_names_every_client_command() -> None:
    script = examples()
    for command in ("push", "pull", "ls", "inspect", "history", "tag", "rm"):
        assert re.search(rf"^cloudimg {command} ", script, flags=re.M), command


def test_every_example_runs(server: RunningServer, tmp_path: Path) -> None:
    script = "set -euo pipefail\n" + examples().replace(_DOC_SERVER, server.base_url)
    bin_dir = str(Path(sys.executable).parent)
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("CLOUDIMG_")
    }
    environment.update(
        PATH=f"{bin_dir}:{environment['PATH']}",
        HOME=str(tmp_path),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "pushed team/app:v1 (64.0 MiB)" in out
    assert f"url: {server.base_url}/reg/team/app/blake3:" in out
    assert "exit 3\n" in out
    assert "exit 4\n" in out
    assert (tmp_path / "app.raw").read_bytes() == (tmp_path / "disk.raw").read_bytes()
    assert (tmp_path / "app.raw").stat().st_blocks * 512 < 1024 * 1024  # written sparse
    for shown in re.findall(r"^Error: .*$", DOC.read_text(), flags=re.M):
        assert shown in done.stderr  # the page shows the errors as they are
