"""docs/client.md and the README: their examples, run in order against a real server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "client.md"
README = ROOT / "README.md"
_DOC_SERVER = "http://127.0.0.1:8080"
_README_SERVER = "http://localhost:8080"


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


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def readme_session() -> str:
    """The README's quick start, then its push and pull examples, as one shell would run them.

    Of the quick start, the venv's creation and ``pip install`` are left out (the test's
    ``.venv`` is this checkout's, installed already), and ``cloudimg serve`` becomes
    ``cloudimg --version`` (the test's server stands in for it): what remains, the
    activation, must put ``cloudimg`` on the shell's ``PATH`` for both.
    """
    blocks = sh_blocks(README.read_text())
    (quick_start,) = [b for b in blocks if "pip install ." in b and " serve" in b]
    (examples,) = [b for b in blocks if "cloudimg push" in b]
    steps = []
    for step in (s.strip() for s in quick_start.strip().split("&&")):
        if step == "python3 -m venv .venv" or "pip install" in step:
            continue
        if step.endswith("cloudimg serve"):
            step = step.removesuffix(" serve") + " --version"
        steps.append(step)
    return "\n".join(steps) + "\n" + examples


@pytest.mark.skipif(
    shutil.which("qemu-img") is None or not list(Path("/usr/lib").glob("*/qemu/block-curl.so")),
    reason="the README's qemu-img reads over HTTP: qemu-img and its curl driver (qemu-utils, "
    "qemu-block-extra)",
)
def test_the_readme_examples_run_as_written(server: RunningServer, tmp_path: Path) -> None:
    """In one shell with a ``PATH`` that has no ``cloudimg``, in the quick start's directory.

    The README's server is ``localhost:8080``: its URLs name the test's server instead,
    and so does ``CLOUDIMG_SERVER`` for the client (whose default is that same URL).
    """
    (tmp_path / ".venv").symlink_to(sys.prefix)  # this checkout's venv, as the quick start's
    image = tmp_path / "original.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    shutil.copy(image, tmp_path / "jammy.qcow2")
    script = "set -euo pipefail\n" + readme_session().replace(_README_SERVER, server.base_url)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLOUDIMG_", "VIRTUAL_ENV"))
    }
    environment.update(
        PATH="/usr/local/bin:/usr/bin:/bin",  # no cloudimg until the README activates the venv
        HOME=str(tmp_path),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        CLOUDIMG_SERVER=server.base_url,
    )
    assert shutil.which("cloudimg", path=environment["PATH"]) is None
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cloudimg, version" in done.stdout  # the quick start's cloudimg
    assert "file format: qcow2" in done.stdout  # qemu-img read it back over HTTP
    assert (tmp_path / "jammy.qcow2").read_bytes() == image.read_bytes()
    with server.client() as http:
        meta = http.get("/reg/images/ubuntu/22.04/meta").json()
    assert meta["data"] == {"os": "ubuntu"}
    assert meta["format"] == "qcow2"
