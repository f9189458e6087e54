"""``cloudimg sync``: upstream feeds into tags, against a real nginx serving an upstream
tree built here (real qcow2 images, checksum files, signatures made with a test key), a
simplestreams index and a distribution registry holding a containerDisk; on both
catalog backends (the ``server`` fixture)."""

from __future__ import annotations

import json
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudimg.client import UsageError, VerificationError
from cloudimg.client.feeds.checksums import find_checksum
from cloudimg.client.feeds.config import load_feeds
from tests.conftest import RunningServer, upload
from tests.feeds_support import (
    Keys,
    distribution,
    file_sha,
    make_keys,
    nginx,
    publish,
    push_containerdisk,
    qcow2_image,
)
from tests.proxy import proxy
from tests.support import sha256_hex
from tests.test_client import client, failed, ok


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """nginx's URL and the directory it serves."""
    with nginx(tmp_path_factory.mktemp("nginx")) as served:
        yield served


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    made = make_keys(tmp_path_factory.mktemp("keys"))
    yield made
    made.stop_agent()


@pytest.fixture
def feed(upstream: tuple[str, Path]) -> tuple[str, Path]:
    """A directory of the upstream tree no other test uses, and its URL."""
    url, root = upstream
    name = "f-" + secrets.token_hex(4)
    (root / name).mkdir()
    return f"{url}/{name}", root / name


@pytest.fixture
def target() -> str:
    return f"r-{secrets.token_hex(4)}/cloud:latest"


def sync(server: RunningServer, work: Path, *args: str) -> Any:
    return client(
        "sync", "--cache-dir", str(work / "cache"), *args, server=server.base_url, cwd=work
    )


def meta(server: RunningServer, target: str) -> dict[str, Any]:
    repo_image, _, tag = target.partition(":")
    with server.client() as http:
        response = http.get(f"/reg/{repo_image}/{tag}/meta")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def history(server: RunningServer, target: str) -> list[dict[str, Any]]:
    repo_image, _, tag = target.partition(":")
    with server.client() as http:
        data: list[dict[str, Any]] = http.get(f"/reg/{repo_image}/{tag}/history").json()["data"]
    return data


def sums(path: Path, name: str, marker: str = "*") -> str:
    return f"{file_sha(path)} {marker}{name}\n"


def test_a_signed_sha256sums_feed_imports_once_follows_and_refuses_bad_upstreams(
    server: RunningServer, tmp_path: Path, feed: tuple[str, Path], keys: Keys, target: str
) -> None:
    url, directory = feed
    image = qcow2_image(tmp_path / "v1.qcow2", b"v1")
    shutil.copy(image, directory / "cloud.qcow2")
    publish(directory / "SHA256SUMS", sums(image, "cloud.qcow2").encode())
    keys.detach_sign(directory / "SHA256SUMS")
    args = (
        "--checksums", f"{url}/SHA256SUMS", "--file", "cloud.qcow2",
        "--signature", f"{url}/SHA256SUMS.gpg", "--key", str(keys.good), target,
    )  # fmt: skip

    out = ok(sync(server, tmp_path, *args))
    assert out.startswith(f"synced {target} from {url}/cloud.qcow2"), out
    first = meta(server, target)
    assert first["sha256"] == f"sha256:{file_sha(image)}"
    assert first["format"] == "qcow2"  # the server inspected it, as any push
    recorded = first["data"]
    assert recorded["source"] == f"{url}/cloud.qcow2"
    assert recorded["upstream_checksum"] == f"sha256:{file_sha(image)}"
    assert recorded["signed_by"] == keys.good_fingerprint
    assert recorded["upstream_etag"]
    assert not list((tmp_path / "cache").iterdir())  # pushed: the download is gone

    # Nothing changed upstream: nothing downloaded, no new history entry.
    out = ok(sync(server, tmp_path, *args))
    assert out.startswith(f"unchanged {target}: {url}/SHA256SUMS is not modified"), out
    assert len(history(server, target)) == 1

    # Upstream moves: the tag follows, the old image stays in its history.
    image2 = qcow2_image(tmp_path / "v2.qcow2", b"v2")
    shutil.copy(image2, directory / "cloud.qcow2")
    publish(directory / "SHA256SUMS", sums(image2, "cloud.qcow2").encode())
    keys.detach_sign(directory / "SHA256SUMS")
    ok(sync(server, tmp_path, *args))
    assert meta(server, target)["sha256"] == f"sha256:{file_sha(image2)}"
    entries = history(server, target)
    assert len(entries) == 2
    assert first["digest"] in json.dumps(entries)
    moved = meta(server, target)

    # A checksum file (well signed) whose sum the image does not have: nothing pushed.
    image3 = qcow2_image(tmp_path / "v3.qcow2", b"v3")
    shutil.copy(image3, directory / "cloud.qcow2")
    publish(directory / "SHA256SUMS", f"{'ab' * 32} *cloud.qcow2\n".encode())
    keys.detach_sign(directory / "SHA256SUMS")
    line = failed(sync(server, tmp_path, *args), 5)
    assert "not sha256:" + "ab" * 32 in line, line
    assert "nothing was pushed" in line, line
    assert meta(server, target) == moved
    assert not list((tmp_path / "cache").iterdir())

    # The right sum, signed by a key not given: nothing changes, and why is said.
    publish(directory / "SHA256SUMS", sums(image3, "cloud.qcow2").encode())
    keys.detach_sign(directory / "SHA256SUMS", uid="other@test")
    line = failed(sync(server, tmp_path, *args), 5)
    assert "not one of the keys given" in line, line
    # Signed by the right key, then changed: a bad signature.
    keys.detach_sign(directory / "SHA256SUMS")
    publish(directory / "SHA256SUMS", sums(image3, "cloud.qcow2").encode() + b"\n")
    line = failed(sync(server, tmp_path, *args), 5)
    assert "bad signature" in line, line
    assert meta(server, target) == moved
    assert len(history(server, target)) == 2

    # The feed disappears: the tag stays as it was.
    shutil.rmtree(directory)
    line = failed(sync(server, tmp_path, *args), 3)
    assert "is gone (404" in line, line
    assert "the tag is left as it was" in line, line
    assert meta(server, target) == moved


def test_a_clear_signed_fedora_checksum_from_a_feed_file(
    server: RunningServer, tmp_path: Path, feed: tuple[str, Path], keys: Keys, target: str
) -> None:
    """Fedora's CHECKSUM: BSD-style lines and comments, clear-signed; the key file's path
    in the feed file is taken from the feed file's directory."""
    url, directory = feed
    image = qcow2_image(tmp_path / "fedora.qcow2", b"fedora")
    name = "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2"
    shutil.copy(image, directory / name)
    text = (
        f"# {name}: {image.stat().st_size} bytes\n"
        f"SHA256 ({name}) = {file_sha(image)}\n"
        f"SHA256 (other.raw.xz) = {'cd' * 32}\n"
    )
    keys.clear_sign(text, directory / "CHECKSUM")
    shutil.copy(keys.good, tmp_path / "fedora.asc")
    (tmp_path / "fedora.yaml").write_text(
        f"feeds:\n- target: {target}\n  checksums:\n    url: {url}/CHECKSUM\n"
        f"    file: {name}\n  keys: [fedora.asc]\n  meta: {{os: fedora}}\n"
    )
    ok(sync(server, tmp_path, "-f", str(tmp_path / "fedora.yaml")))
    recorded = meta(server, target)
    assert recorded["sha256"] == f"sha256:{file_sha(image)}"
    assert recorded["data"]["signed_by"] == keys.good_fingerprint
    assert recorded["data"]["os"] == "fedora"
    # A line added outside the signed text counts for nothing.
    forged = qcow2_image(tmp_path / "forged.qcow2", b"forged")
    shutil.copy(forged, directory / "evil.qcow2")
    signed = (directory / "CHECKSUM").read_bytes()
    publish(directory / "CHECKSUM", signed + f"SHA256 (evil.qcow2) = {file_sha(forged)}\n".encode())
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        f"target: {target}\nchecksums: {{url: '{url}/CHECKSUM', file: evil.qcow2}}\n"
        "keys: [fedora.asc]\n"
    )
    line = failed(sync(server, tmp_path, "-f", str(evil)), 5)
    assert "lists no checksum of evil.qcow2" in line, line
    assert meta(server, target) == recorded


def test_an_unsigned_sha512sums_feed_compares_by_the_recorded_checksum(
    server: RunningServer, tmp_path: Path, feed: tuple[str, Path], target: str
) -> None:
    """Debian's SHA512SUMS: the registry knows sha256 only, the sync records the sha512."""
    url, directory = feed
    image = qcow2_image(tmp_path / "debian.qcow2", b"debian")
    shutil.copy(image, directory / "debian-12-generic-amd64.qcow2")
    listing = f"{file_sha(image, 'sha512')}  debian-12-generic-amd64.qcow2\n".encode()
    publish(directory / "SHA512SUMS", listing)
    args = ("--checksums", f"{url}/SHA512SUMS", "--file", "debian-12-generic-amd64.qcow2", target)
    ok(sync(server, tmp_path, *args))
    recorded = meta(server, target)["data"]
    assert recorded["upstream_checksum"] == f"sha512:{file_sha(image, 'sha512')}"
    assert "signed_by" not in recorded
    # The checksum file is written again (a new ETag), with the same sums.
    publish(directory / "SHA512SUMS", listing)
    out = ok(sync(server, tmp_path, *args))
    assert out.startswith(f"unchanged {target}: the tag already holds"), out
    assert len(history(server, target)) == 1


def test_a_simplestreams_feed_takes_the_newest_item_of_the_release_and_arch(
    server: RunningServer, tmp_path: Path, feed: tuple[str, Path], keys: Keys, target: str
) -> None:
    """Unsigned (``index.json``), and with keys the clear-signed ``.sjson`` twins."""
    url, directory = feed
    images = {
        version: qcow2_image(tmp_path / f"{version}.qcow2", version.encode())
        for version in ("20240101", "20240201", "arm64", "jammy")
    }

    def product(release: str, arch: str, versions: dict[str, Path]) -> dict[str, Any]:
        items = {}
        for version, image in versions.items():
            path = f"server/{release}/{version}/{arch}.img"
            shutil.copy(image, _placed(directory, path))
            items[version] = {"items": {"disk1.img": {
                "ftype": "disk1.img", "path": path, "sha256": file_sha(image),
                "size": image.stat().st_size}}}  # fmt: skip
        return {"release": release, "arch": arch, "versions": items}

    products = {
        "com.example:server:24.04:amd64": product(
            "noble", "amd64", {v: images[v] for v in ("20240101", "20240201")}
        ),
        "com.example:server:24.04:arm64": product("noble", "arm64", {"20240301": images["arm64"]}),
        "com.example:server:22.04:amd64": product("jammy", "amd64", {"20240401": images["jammy"]}),
    }
    product_text = json.dumps({"format": "products:1.0", "products": products})
    publish(directory / "streams/v1/com.example:download.json", product_text.encode())
    keys.clear_sign(product_text, directory / "streams/v1/com.example:download.sjson")
    index = {"format": "index:1.0", "index": {"com.example:download": {
        "datatype": "image-downloads", "path": "streams/v1/com.example:download.json",
        "products": list(products)}}}  # fmt: skip
    publish(directory / "streams/v1/index.json", json.dumps(index).encode())
    keys.clear_sign(json.dumps(index), directory / "streams/v1/index.sjson")
    args = ("--simplestreams", f"{url}/streams/v1/index.json", "--release", "noble", target)
    ok(sync(server, tmp_path, *args))
    recorded = meta(server, target)
    assert recorded["sha256"] == f"sha256:{file_sha(images['20240201'])}"
    assert recorded["data"]["upstream_version"] == "20240201"
    out = ok(sync(server, tmp_path, *args))
    assert out.startswith(f"unchanged {target}"), out
    assert len(history(server, target)) == 1

    signed = target.replace(":latest", ":signed")
    ok(sync(server, tmp_path, *args[:-1], "--key", str(keys.good), signed))
    assert meta(server, signed)["data"]["signed_by"] == keys.good_fingerprint
    assert meta(server, signed)["sha256"] == recorded["sha256"]
    # A product file signed by a key not given: refused, the tag stays.
    keys.clear_sign(product_text, directory / "streams/v1/com.example:download.sjson", "other@test")
    line = failed(sync(server, tmp_path, *args[:-1], "--key", str(keys.good), signed), 5)
    assert "not one of the keys given" in line, line


def _placed(directory: Path, path: str) -> Path:
    destination = directory / path
    destination.parent.mkdir(parents=True, exist_ok=True)
    return destination


def test_a_download_cut_in_the_middle_resumes(
    server: RunningServer, tmp_path: Path, feed: tuple[str, Path], target: str
) -> None:
    url, directory = feed
    image = qcow2_image(tmp_path / "big.qcow2", b"big", size=4 * 1024 * 1024)
    size = image.stat().st_size
    shutil.copy(image, directory / "cloud.qcow2")
    publish(directory / "SHA256SUMS", sums(image, "cloud.qcow2").encode())
    port = int(httpx.URL(url).port or 80)
    path = httpx.URL(url).path
    with proxy(port, cut_after_body_bytes=1024 * 1024) as cutting:
        base = f"{cutting.url}{path}"
        args = ("--checksums", f"{base}/SHA256SUMS", "--file", "cloud.qcow2", target)
        failed(sync(server, tmp_path, "--retries", "0", *args), 6)
    partials = list((tmp_path / "cache").iterdir())
    assert len(partials) == 1
    kept = partials[0].stat().st_size
    assert 0 < kept < size
    with proxy(port) as whole:
        base = f"{whole.url}{path}"
        args = ("--checksums", f"{base}/SHA256SUMS", "--file", "cloud.qcow2", target)
        out = ok(sync(server, tmp_path, "--retries", "0", *args))
        # Only the rest of the image came again (and the small checksum file).
        assert whole.sent_downstream <= size - kept + 4096, (whole.sent_downstream, kept)
    assert ", resumed at " in out, out
    assert meta(server, target)["sha256"] == f"sha256:{file_sha(image)}"


def test_a_containerdisk_of_another_registry(
    server: RunningServer, tmp_path: Path, target: str
) -> None:
    with distribution(tmp_path / "registry") as port:
        source = f"127.0.0.1:{port}/containerdisks/cloud:v1"
        disk = qcow2_image(tmp_path / "cd1.qcow2", b"cd1")
        push_containerdisk(disk, tmp_path / "layout1", f"docker://{source}")
        args = ("--oci", source, "--insecure", target)
        ok(sync(server, tmp_path, *args))
        recorded = meta(server, target)
        assert recorded["sha256"] == f"sha256:{file_sha(disk)}"
        assert recorded["data"]["upstream_digest"].startswith("sha256:")
        out = ok(sync(server, tmp_path, *args))
        assert out.startswith(f"unchanged {target}: {source} is still sha256:"), out
        disk2 = qcow2_image(tmp_path / "cd2.qcow2", b"cd2")
        push_containerdisk(disk2, tmp_path / "layout2", f"docker://{source}")
        ok(sync(server, tmp_path, *args))
        assert meta(server, target)["sha256"] == f"sha256:{file_sha(disk2)}"
        assert len(history(server, target)) == 2


def test_a_tag_written_while_the_sync_downloads_is_left_alone(
    server: RunningServer, tmp_path: Path, target: str
) -> None:
    """The push is conditional on the tag the sync compared against (If-Match): someone's
    push that lands during the download wins, and the sync says so (412, exit 4)."""
    theirs = qcow2_image(tmp_path / "theirs.qcow2", b"theirs").read_bytes()
    repo_image, _, tag = target.partition(":")

    def meanwhile() -> None:
        with server.client() as http:
            assert upload(http, f"/reg/{repo_image}/{tag}", theirs).status_code == 201

    image = qcow2_image(tmp_path / "ours.qcow2", b"ours")
    files = {"/SHA256SUMS": sums(image, "cloud.qcow2").encode(), "/cloud.qcow2": image.read_bytes()}
    with serving(files, before={"/cloud.qcow2": meanwhile}) as url:
        args = ("--checksums", f"{url}/SHA256SUMS", "--file", "cloud.qcow2", target)
        line = failed(sync(server, tmp_path, *args), 4)
    assert "412" in line, line
    assert meta(server, target)["sha256"] == f"sha256:{sha256_hex(theirs)}"
    assert len(history(server, target)) == 1


@contextmanager
def serving(files: dict[str, bytes], before: dict[str, Callable[[], None]]) -> Iterator[str]:
    """A plain HTTP server of ``files`` that runs ``before[path]`` once before answering
    ``path`` (something that happens upstream or elsewhere during a sync)."""
    pending = dict(before)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hook = pending.pop(self.path, None)
            if hook is not None:
                hook()
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        # Ubuntu's SHA256SUMS: binary-mode marker.
        (f"{'a' * 64} *noble-server-cloudimg-amd64.img\n{'b' * 64} *other.img\n",
         "noble-server-cloudimg-amd64.img", f"sha256:{'a' * 64}"),
        # Debian's SHA512SUMS: two spaces.
        (f"{'C' * 128}  debian-12-generic-amd64.qcow2\n", "debian-12-generic-amd64.qcow2",
         f"sha512:{'c' * 128}"),
        # Fedora's CHECKSUM: comments and BSD lines.
        (f"# f.qcow2: 5 bytes\nSHA256 (f.qcow2) = {'d' * 64}\nSHA256 (g.raw) = {'e' * 64}\n",
         "f.qcow2", f"sha256:{'d' * 64}"),
        # Both sums listed: the stronger is checked.
        (f"SHA256 (f) = {'1' * 64}\nSHA512 (f) = {'2' * 128}\n", "f", f"sha512:{'2' * 128}"),
    ],
)  # fmt: skip
def test_checksum_files_of_each_form(text: str, name: str, expected: str) -> None:
    assert str(find_checksum(text, name, "SUMS")) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"{'a' * 64} *other.img\n", "lists no checksum of x.img"),
        (f"{'a' * 63} *x.img\n", "lists no checksum of x.img"),  # not a sha256
        (f"{'a' * 64} *x.img\n{'b' * 64} *x.img\n", "twice with different checksums"),
    ],
)
def test_checksum_files_that_do_not_say_are_refused(text: str, why: str) -> None:
    with pytest.raises(VerificationError, match=why):
        find_checksum(text, "x.img", "SUMS")


@pytest.mark.parametrize(
    ("document", "why"),
    [
        ("target: team/app:v1\n", "exactly one of checksums, simplestreams, oci"),
        ("target: team/app:v1\nchecksums: {url: u, file: f}\noci: {image: h/n:t}\n", "exactly one"),
        ("target: team/app:v1\nchecksums: {url: u, file: f, signatur: s}\n", "unknown key"),
        ("target: team/app:v1\nchecksums: {url: u}\n", "file must be a non-empty string"),
        ("target: team/app\noci: {image: h/n:t}\n", "is not REPO/IMAGE:TAG"),
        ("target: team/app:v1\noci: {image: h/n:t}\nmeta: {n: 1}\n", "meta maps strings"),
        ("[1, 2", "is not YAML"),
        ("feeds: []\n", "holds no feed"),
    ],
)
def test_a_bad_feed_file_is_a_usage_error(tmp_path: Path, document: str, why: str) -> None:
    path = tmp_path / "feed.yaml"
    path.write_text(document)
    with pytest.raises(UsageError, match=why):
        load_feeds(path)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--oci", "h.example/n:t", "--file", "x", "team/app:v1"), "--file belong(s) to another"),
        (("--checksums", "https://h/SUMS", "team/app:v1"), "--checksums needs --file"),
        (("--oci", "h/n:t", "--simplestreams", "https://h/i.json", "team/app:v1"), "one source"),
        (("--oci", "h.example/n:t"), "name the tag to sync"),
    ],
)
def test_flags_that_make_no_feed_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...], why: str
) -> None:
    line = failed(client("sync", *args, server="http://127.0.0.1:9", cwd=tmp_path), 2)
    assert why in line, line
