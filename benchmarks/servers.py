"""The server under test and the references, each started as a child process on a free port.

- ``cloudimg serve`` (Granian), or the same app under uvicorn (``--server uvicorn``);
- the bare ASGI app of ``bare_app.py`` under Granian (the upload's work and nothing else);
- nginx: WebDAV ``PUT`` into a directory, and ``sendfile`` of cloudimg's blob files;
- distribution 2.8 (Debian's ``docker-registry``) with filesystem storage.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from clients import call, free_port, wait_for_http
from harness import BENCH_DIR, Children, process_tree

from cloudimg.blobstore.filesystem import FilesystemBlobStore


@dataclass
class Server:
    """A running child process serving HTTP on ``port``."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    root: Path

    @property
    def pids(self) -> list[int]:
        """The process and its children (nginx's worker, Granian's workers)."""
        return process_tree(self.process.pid)


def _start(
    children: Children,
    name: str,
    command: list[str],
    port: int,
    root: Path,
    log_path: Path,
    ready_path: str,
    env: dict[str, str] | None = None,
) -> Server:
    with log_path.open("ab") as log_file:
        process = children.start(
            command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        wait_for_http(port, ready_path, process, log_path)
    except BaseException:
        children.stop(process)
        raise
    return Server(name, process, port, log_path, root)


def start_cloudimg(
    children: Children, kind: str, data_root: Path, workdir: Path, *serve_args: str
) -> Server:
    """``cloudimg serve`` (kind ``granian``, with ``serve_args``) or uvicorn with
    ``uvicorn_app.py`` (which has no such flags)."""
    port = free_port()
    if kind == "granian":
        command = [
            sys.executable, "-m", "cloudimg", "serve",
            "--listener-addr", f"127.0.0.1:{port}", "--data-root", str(data_root), *serve_args,
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "uvicorn", "--factory",
            "--app-dir", str(BENCH_DIR), "uvicorn_app:app_factory",
            "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    env = {"CLOUDIMG_DATA_ROOT": str(data_root)}
    log_path = workdir / f"cloudimg-{data_root.name}.log"
    return _start(children, "cloudimg", command, port, data_root, log_path, "/healthz", env)


def blob_file(data_root: Path, blake3_hex: str) -> Path:
    """Where cloudimg keeps a blob: asked of the blob store, which owns the layout."""
    return FilesystemBlobStore(data_root).blob_path(blake3_hex)


def raw_put_supported(server: Server) -> bool:
    """Whether this cloudimg has ``PUT /reg/{repo}/{image}/{tag}`` (a 405 says it has not)."""
    path = "/reg/bench-probe/probe/put"
    status, body = call(server.port, "PUT", path, b"probe")
    if status in (404, 405):
        return False
    if status != 201:
        raise RuntimeError(f"PUT probe answered {status}: {body[:300]!r}")
    call(server.port, "DELETE", path)
    return True


def start_bare_app(children: Children, workdir: Path) -> Server:
    """``bare_app.py`` under Granian: one worker, HTTP/1 and asyncio, as ``cloudimg serve``."""
    port = free_port()
    root = workdir / "bare"
    root.mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--http", "1",
        "--no-ws", "--workers", "1", "--loop", "asyncio",
        "--host", "127.0.0.1", "--port", str(port),
        "--working-dir", str(BENCH_DIR), "--no-log", "bare_app:app",
    ]  # fmt: skip
    log_path = workdir / "bare.log"
    return _start(children, "bare", command, port, root, log_path, "/", {"BARE_APP_DIR": str(root)})


def find_nginx(option: str | None) -> str | None:
    for candidate in (option, shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def start_nginx(children: Children, binary: str, workdir: Path, blobs_of: Path) -> Server:
    """nginx: WebDAV ``PUT`` under ``/dav/``, ``sendfile`` of ``blobs_of``'s blobs under ``/b/``.

    ``/b/<blake3 hex>`` is the blob file of that digest in the cloudimg data root
    ``blobs_of``; nginx is told its directory by the blob store.
    """
    home = workdir / "nginx"
    root = home / "dav"
    root.mkdir(parents=True, exist_ok=True)
    blobs_dir = FilesystemBlobStore(blobs_of).blobs_dir
    port = free_port()
    # As root, nginx's workers would switch to "nobody", who cannot enter our 0700 temp dirs.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {home / kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = f"""
daemon off;
worker_processes 1;
pid {home / "nginx.pid"};
error_log {home / "error.log"} warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    client_max_body_size 0;
    # The body lands in a temp file on the same file system, then is renamed into place.
    client_body_temp_path {root}/.tmp;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /dav/ {{
            dav_methods PUT;
            create_full_put_path on;
        }}
        location ~ "^/b/([0-9a-f]{{2}})([0-9a-f]+)$" {{
            alias {blobs_dir}/$1/$2;
        }}
    }}
}}
"""
    config_path = home / "nginx.conf"
    config_path.write_text(config)
    command = [binary, "-p", str(home), "-c", str(config_path), "-e", str(home / "error.log")]
    return _start(children, "nginx", command, port, root, home / "stderr.log", "/")


def start_registry(children: Children, binary: str, workdir: Path) -> Server:
    """distribution (``docker-registry``) with filesystem storage, no auth, no cache."""
    home = workdir / "registry"
    root = home / "storage"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = f"""
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""
    config_path = home / "config.yml"
    config_path.write_text(config)
    log_path = home / "registry.log"
    return _start(
        children, "registry", [binary, "serve", str(config_path)], port, root, log_path, "/v2/"
    )
