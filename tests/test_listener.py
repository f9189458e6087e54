"""Where ``cloudimg serve`` listens: every listener form, one registry per address.

Each test runs real ``cloudimg serve`` processes; the quick-start test runs it exactly
as README.md does, from a fresh ``pip install .``, with no flags in an empty directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import upload
from tests.support import listening_port

ROOT = Path(__file__).resolve().parent.parent
_NOT_SOURCES = shutil.ignore_patterns("__pycache__", "*.egg-info")
_START_TIMEOUT = 60.0
_README_PORT = 8080


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _serve_command(*args: str, executable: str | None = None) -> list[str]:
    if executable is not None:
        return [executable, "serve", *args]
    return [sys.executable, "-m", "cloudimg", "serve", *args]


@contextmanager
def _serving(
    command: list[str], host: str, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[int]:
    """Run ``command`` until ``/healthz`` answers 200 at ``host``; the port it listens on.

    The command's listener address has port 0: the port is read from the log.
    """
    log = cwd / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        port = None
        while port is None or not _healthy(f"http://{host}:{port}/healthz"):
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer at {host}:{port}:\n{log.read_text()}")
            port = listening_port(log.read_text())
            time.sleep(0.1)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    output = log.read_text()
    assert "Traceback" not in output, output
    assert "experimental" not in output, output


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _refused(address: str, data_root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a server on ``address`` that must refuse to start."""
    return subprocess.run(
        _serve_command("--listener-addr", address, "--data-root", str(data_root), *extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _connects(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        return sock.connect_ex((host, port)) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_host_name_binds_its_first_address_ipv4_first(tmp_path: Path, workers: str) -> None:
    (first, *_rest) = sorted(
        {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)},
        key=lambda host: ":" in host,
    )
    command = _serve_command(
        "--listener-addr", "localhost:0", "--workers", workers, "--data-root", "data"
    )
    with _serving(command, "localhost", tmp_path) as port:
        assert _connects(first, port)
        if ":" not in first and _has_ipv6_loopback():
            assert not _connects("::1", port)  # one address, as Go's net.Listen
    assert f"Listening at: http://{first}:{port}" in (tmp_path / "serve.log").read_text()


def test_ipv4_address(tmp_path: Path) -> None:
    command = _serve_command("--listener-addr", "127.0.0.1:0", "--data-root", "data")
    with _serving(command, "127.0.0.1", tmp_path):
        pass


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_bracketed_ipv6_address(tmp_path: Path, workers: str) -> None:
    command = _serve_command(
        "--listener-addr", "[::1]:0", "--workers", workers, "--data-root", "data"
    )
    with _serving(command, "[::1]", tmp_path) as port:
        assert not _connects("127.0.0.1", port)  # an IPv6 address is IPv6 only


@pytest.mark.parametrize("workers", ["1", "2"])
def test_empty_host_listens_on_every_interface(tmp_path: Path, workers: str) -> None:
    command = _serve_command("--listener-addr", ":0", "--workers", workers, "--data-root", "data")
    with _serving(command, "127.0.0.1", tmp_path) as port:
        if _has_ipv6_loopback():
            assert httpx.get(f"http://[::1]:{port}/healthz", timeout=10).status_code == 200


def test_listener_from_the_environment(tmp_path: Path) -> None:
    with _serving(
        _serve_command("--data-root", "data"),
        "127.0.0.1",
        tmp_path,
        env={"CLOUDIMG_LISTENER_ADDR": "localhost:0"},
    ):
        pass


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nonsense", "host:port"),
        ("::1:8080", "[::1]:8080"),
        ("[localhost]:8080", "IPv6"),
        ("no-such-host.invalid:8080", "does not resolve"),
        ("192.0.2.1:8080", "192.0.2.1:8080"),  # TEST-NET-1: not an address of this machine
    ],
)
def test_bad_listener_is_one_line_and_touches_nothing(
    tmp_path: Path, address: str, message: str
) -> None:
    result = _refused(address, tmp_path / "data")
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "data").exists()


def _assert_refused_in_use(address: str, data_root: Path, *extra: str) -> None:
    result = _refused(address, data_root, *extra)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert address in line
    assert "in use" in line
    assert not data_root.exists()  # refused before the data root or catalog was touched


@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_registry_on_the_same_address_is_refused(tmp_path: Path, workers: str) -> None:
    first = tmp_path / "first"
    first.mkdir()
    command = _serve_command("--listener-addr", "127.0.0.1:0", "--workers", workers)
    with _serving(command, "127.0.0.1", first) as port:
        address = f"127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://{address}") as http:
            assert upload(http, "/reg/first/disk/v1", b"first registry").status_code == 201
            repo = http.get("/reg").json()
            assert repo["data"] == ["first"]
        _assert_refused_in_use(address, tmp_path / "second")
        _assert_refused_in_use(address, tmp_path / "second", "--workers", "2")
        # Every client still reaches the first registry only.
        with httpx.Client(headers={"Connection": "close"}) as http:
            for _ in range(20):
                assert http.get(f"http://{address}/reg").json() == repo


@pytest.mark.parametrize("reuse_port", [False, True])
def test_port_taken_by_another_program_is_one_line(tmp_path: Path, reuse_port: bool) -> None:
    """Another program on the port, also one that allows sharing it (SO_REUSEPORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        if reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        _assert_refused_in_use(f"127.0.0.1:{port}", tmp_path / "data")
        _assert_refused_in_use(f"localhost:{port}", tmp_path / "data")
        _assert_refused_in_use(f":{port}", tmp_path / "data")


def _readme_quick_start() -> str:
    """The README's quick-start command line."""
    readme = (ROOT / "README.md").read_text()
    (line,) = [text for text in readme.splitlines() if "pip install ." in text and "serve" in text]
    return line


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_readme_quick_start_from_an_install(tmp_path: Path) -> None:
    """``pip install .`` into a new venv, then ``cloudimg serve`` as the README runs it."""
    line = _readme_quick_start()
    assert line.endswith("&& cloudimg serve"), line  # no flags: the defaults
    assert ". .venv/bin/activate" in line, line  # the cloudimg of the venv the line makes
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "src", "migrations"):
        if (ROOT / name).is_dir():
            # Not the bytecode caches (nor the editable install's metadata, rebuilt by
            # the build anyway): other test processes, pytest-xdist's workers and the
            # servers they start, write them meanwhile, and a file listed here may be
            # gone (renamed into place) by the time it is copied.
            shutil.copytree(ROOT / name, source / name, ignore=_NOT_SOURCES)
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(source)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    workdir = tmp_path / "empty"
    workdir.mkdir()
    executable = str(venv / "bin" / "cloudimg")
    # Exactly the README: no flags, localhost:8080. That port is the machine's, not the
    # test's: when another program (another test run, a developer's server) has it, or
    # takes it between the check and the server's bind, the same defaults but the port.
    elsewhere = _serve_command("--listener-addr", "localhost:0", executable=executable)
    if _port_is_free(_README_PORT):
        try:
            _quick_start_serves(_serve_command(executable=executable), workdir)
            return
        except pytest.fail.Exception:
            if "in use" not in (workdir / "serve.log").read_text():
                raise
    _quick_start_serves(elsewhere, workdir)


def _quick_start_serves(command: list[str], workdir: Path) -> None:
    with _serving(command, "localhost", workdir) as port:
        assert httpx.get(f"http://localhost:{port}/readyz", timeout=10).status_code == 200
        assert httpx.get(f"http://localhost:{port}/reg", timeout=10).status_code == 200
    assert (workdir / "data" / "catalog.sqlite3").is_file()  # ./data, the default data root


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid``."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            found.add(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_while_workers_start_stops_every_worker(tmp_path: Path) -> None:
    """A worker still starting must not swallow the stop (it inherits the parent's handler)."""
    log = tmp_path / "serve.log"
    command = _serve_command(
        "--listener-addr", "127.0.0.1:0", "--workers", "2", "--data-root", "data"
    )
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while "Spawning worker-2" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.005)
        workers = _children(process.pid)
        process.send_signal(signal.SIGTERM)  # worker 2 is starting now
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            workers |= _children(process.pid)  # worker 2 may fork only now
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        outlived = sorted(pid for pid in workers if _alive(pid))
        for pid in outlived:
            os.kill(pid, signal.SIGKILL)
    assert not outlived, f"workers {outlived} outlived the server:\n{log.read_text()}"
    assert workers, "no worker process was seen"
