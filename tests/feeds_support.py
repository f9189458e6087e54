"""What the feed tests build: an upstream tree served by a real nginx, real qcow2 images,
checksum files, OpenPGP keys and signatures made with ``gpg``, a distribution registry."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.images import QEMU_IMG, qemu_img
from tests.oci_support import container_manifest, packed, sha256_digest, tar_layer

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
GPG = shutil.which("gpg")
REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")


def _wait(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited {process.returncode}: {log.read_text()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{url} did not answer: {log.read_text()}")


@contextmanager
def nginx(home: Path) -> Iterator[tuple[str, Path]]:
    """nginx serving ``home/tree`` (static files: ETag, Last-Modified, Range) on loopback."""
    if NGINX is None:
        pytest.skip("nginx not found (Debian: nginx)")
    root = home / "tree"
    root.mkdir(parents=True)
    port = free_port()
    # As root, nginx's workers would switch to "nobody", who cannot enter 0700 temp dirs.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {home / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = home / "nginx.conf"
    config.write_text(f"""
daemon off;
worker_processes 1;
pid {home / "nginx.pid"};
error_log {home / "error.log"} warn;
{user}
events {{ worker_connections 64; }}
http {{
    access_log {home / "access.log"};
    default_type application/octet-stream;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    log = home / "stderr.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [NGINX, "-p", str(home), "-c", str(config), "-e", str(home / "error.log")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/", process, log)
        yield url, root
    finally:
        process.terminate()
        process.wait(timeout=15)


@dataclass
class Keys:
    """A GNUPGHOME holding the secret keys the tests sign with, and their public keys."""

    home: Path
    good: Path
    """The public key the operator gives (an armoured file)."""
    other: Path
    good_fingerprint: str

    def gpg(self, *args: str, uid: str = "feed@test") -> None:
        assert GPG is not None
        subprocess.run(
            [GPG, "--homedir", str(self.home), "--batch", "--yes", "--pinentry-mode",
             "loopback", "--passphrase", "", "--local-user", uid, *args],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def stop_agent(self) -> None:
        """End the gpg-agent that making and using the keys started (it outlives gpg)."""
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run(
                [gpgconf, "--homedir", str(self.home), "--kill", "gpg-agent"],
                check=False, capture_output=True, timeout=30,
            )  # fmt: skip

    def detach_sign(self, path: Path, uid: str = "feed@test") -> Path:
        signature = path.with_name(path.name + ".gpg")
        self.gpg("--detach-sign", "--output", str(signature), str(path), uid=uid)
        return signature

    def clear_sign(self, text: str, out: Path, uid: str = "feed@test") -> None:
        plain = out.with_name(out.name + ".plain")
        plain.write_text(text)
        self.gpg("--clearsign", "--output", str(out), str(plain), uid=uid)
        plain.unlink()
        publish(out, out.read_bytes())  # a new modification time: a new ETag


def make_keys(home: Path) -> Keys:
    """Two keys made here: ``feed@test`` (given to the sync) and ``other@test`` (not)."""
    if GPG is None:
        pytest.skip("gpg not found (Debian: gnupg)")
    gnupg = home / "gnupg"
    gnupg.mkdir(mode=0o700, parents=True)
    fingerprints = {}
    for uid in ("feed@test", "other@test"):
        subprocess.run(
            [GPG, "--homedir", str(gnupg), "--batch", "--passphrase", "", "--quick-gen-key",
             f"Feed Test <{uid}>", "ed25519", "sign", "never"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        listing = subprocess.run(
            [GPG, "--homedir", str(gnupg), "--batch", "--with-colons", "--list-keys", uid],
            check=True, capture_output=True, timeout=60, text=True,
        ).stdout  # fmt: skip
        fingerprints[uid] = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        exported = subprocess.run(
            [GPG, "--homedir", str(gnupg), "--batch", "--armor", "--export", uid],
            check=True, capture_output=True, timeout=60,
        ).stdout  # fmt: skip
        (home / f"{uid}.asc").write_bytes(exported)
    return Keys(gnupg, home / "feed@test.asc", home / "other@test.asc", fingerprints["feed@test"])


def qcow2_image(path: Path, seed: bytes, size: int = 2 * 1024 * 1024) -> Path:
    """A real qcow2 file whose data is ``size`` bytes derived from ``seed`` (distinct
    seeds, distinct images; incompressible, so the file is about ``size``)."""
    if QEMU_IMG is None:
        pytest.skip("qemu-img not found (Debian: qemu-utils)")
    raw = path.with_suffix(".raw")
    data = bytearray()
    counter = 0
    while len(data) < size:
        data += hashlib.sha512(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    raw.write_bytes(bytes(data[:size]))
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", raw, path)
    raw.unlink()
    return path


_clock = [time.time() - 100_000]


def publish(path: Path, content: bytes) -> Path:
    """Write an upstream file with a modification time later than any before it, as a
    mirror's files get (nginx's ETag is the time and size: two versions of a checksum
    file written in one second would share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    _clock[0] += 10
    os.utime(path, (_clock[0], _clock[0]))
    return path


def file_sha(path: Path, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


@contextmanager
def distribution(home: Path) -> Iterator[int]:
    """distribution 2.8 (Debian's ``docker-registry``) on a loopback port, no auth."""
    if REGISTRY is None:
        pytest.skip("docker-registry not found (Debian: docker-registry)")
    home.mkdir(parents=True)
    port = free_port()
    config = home / "config.yml"
    config.write_text(f"""
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {home / "storage"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
""")
    log = home / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [REGISTRY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait(f"http://127.0.0.1:{port}/v2/", process, log)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


def push_containerdisk(disk: Path, layout: Path, target: str) -> None:
    """A containerDisk (``disk/disk.qcow2`` in an uncompressed tar layer) written as an
    OCI layout, then copied by skopeo, gzip-compressed, to ``target`` (docker://...)."""
    if SKOPEO is None:
        pytest.skip("skopeo not found (Debian: skopeo)")
    layer = packed(tar_layer(disk.read_bytes()), "tar")
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
         "diff_ids": [sha256_digest(layer)]}}
    ).encode()  # fmt: skip
    manifest = container_manifest(layer, "application/vnd.oci.image.layer.v1.tar", config)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for blob in (layer, config, manifest):
        (blobs / sha256_digest(blob).removeprefix("sha256:")).write_bytes(blob)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256_digest(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    subprocess.run(
        [SKOPEO, "copy", "--dest-tls-verify=false", "--dest-compress",
         "--dest-compress-format", "gzip", f"oci:{layout}:v1", target],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
