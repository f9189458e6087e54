"""Shared fixtures: real ``cloudimg serve`` processes on real sockets, real files.

The server fixtures run on each catalog backend (``backend``: SQLite, PostgreSQL), so a
test that uses them runs twice with the same code; ``tests/databases.py`` creates the
PostgreSQL databases, or skips with the reason when no server answers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from hypothesis import HealthCheck, settings

from tests.databases import BACKENDS, catalog_database, catalog_url, registered_url
from tests.support import listening_port

if TYPE_CHECKING:
    from tests.object_store import SeaweedFS

_START_TIMEOUT = 30.0

# No timing in a test, Hypothesis's included: its per-example deadline (200 ms by default)
# and its "too slow" health check (data generation past a second) fail whenever the
# machine is busy, as it is with pytest-xdist's workers beside servers. A test's own
# ``@settings(suppress_health_check=[...])`` replaces this list: name too_slow there too.
settings.register_profile("cloudimg", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cloudimg")


def free_port() -> int:
    """A TCP port nobody listens on right now, for a program that must be told its port.

    Only for one that cannot bind port 0 and say which port it got (a PostgreSQL server
    started by a test): the port is released here, so another process could take it
    before the program binds it. ``cloudimg serve`` binds port 0 (``start_server``,
    ``support.listening_port``); a port that must refuse connections is
    ``support.refusing_port``.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A ``cloudimg serve`` child process and where to reach it."""

    process: subprocess.Popen[bytes]
    base_url: str
    data_root: Path
    log_path: Path
    port: int
    extra_args: list[str] = field(default_factory=list)
    database_url: str = ""
    """The catalog the server uses (its data root's registered database or SQLite file)."""

    def client(self, **kwargs: object) -> httpx.Client:
        # The server closes a keep-alive connection idle for --read-header-timeout-secs
        # (2 s); a client that reuses one near that moment races the close, so the pool
        # lets go of idle connections sooner, as a well-behaved client does.
        kwargs.setdefault("limits", httpx.Limits(keepalive_expiry=1.0))
        return httpx.Client(base_url=self.base_url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """kill -9: what a crash or an OOM kill does."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def staging_files(self) -> list[Path]:
        staging = self.data_root / "staging"
        return sorted(staging.iterdir()) if staging.exists() else []

    def blob_files(self) -> list[Path]:
        return sorted(p for p in (self.data_root / "blobs").rglob("*") if p.is_file())


def start_server(data_root: Path, *args: str, env: dict[str, str] | None = None) -> RunningServer:
    """Start ``python -m cloudimg serve`` on a free port and wait until /healthz answers.

    The server uses the catalog database registered for ``data_root``, if any.
    """
    data_root.mkdir(parents=True, exist_ok=True)
    registered = registered_url(data_root)
    if registered is not None:
        args = ("--database-url", registered, *args)
    # The server binds port 0 and logs the port it got: no window in which a server
    # started in parallel could take a port picked for this one.
    log_path = data_root.parent / f"server-{secrets.token_hex(4)}.log"
    command = [
        sys.executable,
        "-m",
        "cloudimg",
        "serve",
        "--listener-addr",
        "127.0.0.1:0",
        "--data-root",
        str(data_root),
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    deadline = time.monotonic() + _START_TIMEOUT
    server: RunningServer | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{_text(log_path)}")
        if server is None:
            server = _listening(process, log_path, data_root, list(args))
        elif _healthy(server):
            return server
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"server did not answer in {_START_TIMEOUT}s:\n{_text(log_path)}")


def _text(log_path: Path) -> str:
    return log_path.read_text(errors="replace")


def _listening(
    process: subprocess.Popen[bytes], log_path: Path, data_root: Path, args: list[str]
) -> RunningServer | None:
    """The server, once its log names the port it listens on."""
    port = listening_port(_text(log_path))
    if port is None:
        return None
    base_url = f"http://127.0.0.1:{port}"
    return RunningServer(process, base_url, data_root, log_path, port, args, catalog_url(data_root))


def _healthy(server: RunningServer) -> bool:
    try:
        return httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS per pytest-xdist worker, for every module that asks for it.

    Defined here, once: a module that imported the fixture function had a definition of
    its own, and each such module started its own SeaweedFS, all left running until the
    session ended (up to nine per worker, and their stops at the end).
    """
    from tests.object_store import start_seaweedfs  # boto3: only for a worker that needs it

    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The catalog backend of this run of the module's tests: ``sqlite`` or ``postgresql``."""
    return str(request.param)


def serve_module(
    tmp_path_factory: pytest.TempPathFactory, backend: str, *args: str
) -> Iterator[RunningServer]:
    """A server for a module's tests on its own data root and catalog, started with ``args``.

    Modules whose tests are about the old server's freeing of a tag's old bytes at once
    override ``server`` with ``serve_module(..., "--keep-history", "0")``.
    """
    root = tmp_path_factory.mktemp("server") / "data"
    with catalog_database(backend, root):
        running = start_server(root, *args)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[RunningServer]:
    """One server per test module and backend, on its own data root and catalog."""
    yield from serve_module(tmp_path_factory, backend)


@pytest.fixture
def server_factory(tmp_path: Path, backend: str) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with custom flags; all are stopped at the end of the test.

    Each new data root gets a new catalog of the backend; servers given the same
    ``data_root`` share its catalog.
    """
    started: list[RunningServer] = []
    with ExitStack() as databases:

        def factory(
            *args: str, data_root: Path | None = None, env: dict[str, str] | None = None
        ) -> RunningServer:
            root = data_root or tmp_path / f"data-{len(started)}"
            databases.enter_context(catalog_database(backend, root))
            running = start_server(root, *args, env=env)
            started.append(running)
            return running

        try:
            yield factory
        finally:
            for running in started:
                running.stop()


@pytest.fixture
def catalog_root(tmp_path: Path, backend: str) -> Iterator[Path]:
    """A data root whose catalog is a new database of the backend (found from the root)."""
    root = tmp_path / "data"
    with catalog_database(backend, root):
        yield root


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture
def repo() -> str:
    """A repository name no other test uses."""
    return "r-" + secrets.token_hex(6)


def upload(
    http: httpx.Client,
    path: str,
    data: bytes,
    meta: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """POST an image the way the old server's clients do (multipart ``meta`` + ``img``)."""
    files = {
        "meta": ("meta.json", json.dumps(meta or {}).encode(), "application/json"),
        "img": ("image.bin", data, "application/octet-stream"),
    }
    return http.post(path, files=files, params=params)


def upload_raw(
    http: httpx.Client,
    path: str,
    data: bytes,
    meta: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """PUT an image as the raw body, its metadata (if any) in the ``Cloudimg-Meta`` header."""
    sent = {"content-type": "application/octet-stream", **(headers or {})}
    if meta is not None:
        sent["cloudimg-meta"] = json.dumps(meta)
    return http.put(path, content=data, params=params, headers=sent)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the tests that share a module-scoped fixture (a server, a SeaweedFS bucket, a
    browser) on one pytest-xdist worker, with ``--dist loadgroup`` (``pyproject.toml``).

    With plain ``load`` every worker that runs one of a module's tests starts the
    module's servers again: up to three times per backend with ``-n 3``. The tests that
    share nothing are still handed out one by one. ``backend`` alone is a parameter,
    not shared state, and does not group.
    """
    for item in items:
        # pytest keeps an item's fixture definitions on _fixtureinfo (no public accessor);
        # without it the tests only lose the grouping, which is speed, not correctness.
        info = getattr(item, "_fixtureinfo", None)
        definitions = getattr(info, "name2fixturedefs", {})
        shared = any(
            name != "backend" and defs[-1].scope in ("module", "package")
            for name, defs in definitions.items()
        )
        if shared and isinstance(item, pytest.Function):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
