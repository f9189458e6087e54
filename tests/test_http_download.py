"""Downloads as VM clients make them (docs/api.md), on a real server and socket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from functools import cached_property
from pathlib import Path

import blake3
import httpx
import pytest

from tests.conftest import RunningServer, serve_module, upload
from tests.maintenance_support import legacy_put, open_test_catalog
from tests.support import assert_error, blob_path, random_image, wait_until

SIZE = 100_003
BIG = 64 * 1024 * 1024
HUGE = 128 * 1024 * 1024
# A small client receive buffer keeps a paused download genuinely in progress: the
# server runs no further ahead of the test than Granian's, hyper's and the socket's
# buffers allow (about 11 MiB).
_SMALL_RCVBUF = 64 * 1024
_FD_WAIT_SECS = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[RunningServer]:
    """This module's server runs with ``--keep-history 0``: a tag's old bytes go as soon as
    no tag names them, as with the old server (retention: tests/test_http_history.py)."""
    yield from serve_module(tmp_path_factory, backend, "--keep-history", "0")


@dataclass(frozen=True)
class Image:
    """An uploaded image: where it lives and what it holds."""

    repo: str
    path: str
    data: bytes

    @cached_property
    def blake3(self) -> str:
        return blake3.blake3(self.data).hexdigest()

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return f'"blake3:{self.blake3}"'

    def by_digest(self, algorithm: str) -> str:
        hex_digest = self.blake3 if algorithm == "blake3" else self.sha256
        return self.path.rsplit("/", 1)[0] + f"/{algorithm}:{hex_digest}"


def put(client: httpx.Client, path: str, data: bytes) -> Image:
    response = upload(client, path, data)
    assert response.status_code == 201, response.text
    return Image(path.split("/")[2], path, data)


@pytest.fixture
def image(client: httpx.Client, repo: str) -> Image:
    return put(client, f"/reg/{repo}/disk/v1", random_image(SIZE))


@pytest.fixture
def slow_client(server: RunningServer) -> Iterator[httpx.Client]:
    """A client whose socket buffers little, so the server waits for the test's reads."""
    options = [(socket.SOL_SOCKET, socket.SO_RCVBUF, _SMALL_RCVBUF)]
    transport = httpx.HTTPTransport(socket_options=options)
    with httpx.Client(base_url=server.base_url, timeout=60, transport=transport) as http:
        yield http


def http_date(response: httpx.Response, shift: timedelta = timedelta()) -> str:
    when = parsedate_to_datetime(response.headers["last-modified"]) + shift
    return format_datetime(when, usegmt=True)


# -- HEAD and whole GET ---------------------------------------------------------------


def test_head_announces_size_and_validators_without_a_body(
    client: httpx.Client, image: Image
) -> None:
    response = client.head(image.path)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == image.etag
    assert parsedate_to_datetime(response.headers["last-modified"]).tzinfo is not None
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b""


@pytest.mark.parametrize("range_header", ["bytes=0-9", "bytes=999999999-"])
def test_head_ignores_range(client: httpx.Client, image: Image, range_header: str) -> None:
    # RFC 9110 section 14.2: range handling is defined for GET only.
    response = client.head(image.path, headers={"Range": range_header})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert "content-range" not in response.headers


def test_get_sends_the_uploaded_bytes(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.content == image.data


def test_etag_is_the_blake3_of_the_bytes(client: httpx.Client, image: Image) -> None:
    expected = '"blake3:' + blake3.blake3(image.data).hexdigest() + '"'
    assert client.get(image.path).headers["etag"] == expected


def test_repr_digest_is_the_sha256_of_the_bytes(client: httpx.Client, image: Image) -> None:
    encoded = base64.b64encode(hashlib.sha256(image.data).digest()).decode()
    assert client.get(image.path).headers["repr-digest"] == f"sha-256=:{encoded}:"


def test_tag_download_is_not_cached_as_immutable(client: httpx.Client, image: Image) -> None:
    # A tag moves; only a digest reference names bytes forever.
    assert "immutable" not in client.get(image.path).headers.get("cache-control", "")


@pytest.fixture
def empty(server: RunningServer, backend: str, repo: str) -> Image:
    """An empty image, as the old server or an early version stored one: uploads refuse
    them now (``empty-image``), but downloads of those stored before must still work."""

    async def plant() -> None:
        async with open_test_catalog(server.data_root, backend) as catalog:
            await legacy_put(catalog, f"{repo}/empty/v1", b"")

    asyncio.run(plant())
    return Image(repo, f"/reg/{repo}/empty/v1", b"")


def test_zero_byte_upload_is_refused(client: httpx.Client, repo: str) -> None:
    response = upload(client, f"/reg/{repo}/empty/v1", b"")
    assert assert_error(response, 422, "IMAGE_REFUSED")["context"]["rule"] == "empty-image"


def test_zero_byte_image_downloads_empty(client: httpx.Client, empty: Image) -> None:
    response = client.get(empty.path)
    assert response.status_code == 200
    assert response.headers["content-length"] == "0"
    assert response.content == b""


def test_zero_byte_image_head(client: httpx.Client, empty: Image) -> None:
    response = client.head(empty.path)
    assert response.status_code == 200
    assert response.headers["content-length"] == "0"


def test_suffix_range_of_zero_byte_image_sends_it_whole(client: httpx.Client, empty: Image) -> None:
    # RFC 9110 section 14.1.1: the only satisfiable range of an empty representation.
    response = client.get(empty.path, headers={"Range": "bytes=-10"})
    assert response.status_code == 200
    assert response.content == b""


def test_first_position_range_of_zero_byte_image_is_unsatisfiable(
    client: httpx.Client, empty: Image
) -> None:
    response = client.get(empty.path, headers={"Range": "bytes=0-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */0"


# -- Range ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=100-199", 100, 199),
        ("bytes=0-0", 0, 0),
        ("bytes=99000-", 99_000, SIZE - 1),
        ("bytes=-500", SIZE - 500, SIZE - 1),
        ("bytes=50000-999999", 50_000, SIZE - 1),
        ("bytes=-999999", 0, SIZE - 1),
    ],
    ids=["a-b", "first-byte", "a-", "-n", "last-clamped", "suffix-longer-than-image"],
)
def test_single_range_gets_206(
    client: httpx.Client, image: Image, header: str, first: int, last: int
) -> None:
    response = client.get(image.path, headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.content == image.data[first : last + 1]


def test_range_with_a_huge_last_position_gets_206(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"Range": "bytes=10-" + "9" * 5000})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 10-{SIZE - 1}/{SIZE}"
    assert response.content == image.data[10:]


def test_unsatisfiable_range_gets_416(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"Range": f"bytes={SIZE}-"})
    assert_error(response, 416, "OUT_OF_RANGE")
    assert response.headers["content-range"] == f"bytes */{SIZE}"


def test_zero_suffix_gets_416(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"Range": "bytes=-0"})
    assert_error(response, 416, "OUT_OF_RANGE")
    assert response.headers["content-range"] == f"bytes */{SIZE}"


def test_multiple_ranges_get_the_whole_body(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"Range": "bytes=0-9,20-29"})
    assert response.status_code == 200
    assert "content-range" not in response.headers
    assert response.content == image.data


def test_malformed_range_gets_the_whole_body(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"Range": "bytes=oops"})
    assert response.status_code == 200
    assert response.content == image.data


# -- conditional requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["{etag}", "W/{etag}", "*", '"blake3:other", {etag}'],
    ids=["strong", "weak", "star", "in-a-list"],
)
def test_if_none_match_gets_304(client: httpx.Client, image: Image, header: str) -> None:
    response = client.get(image.path, headers={"If-None-Match": header.format(etag=image.etag)})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == image.etag


@pytest.mark.parametrize(
    ("header", "status"),
    [("If-None-Match", 304), ("If-Match", 412), ("Range", 416)],
)
def test_an_answer_without_a_body_leaves_the_blob_closed(
    client: httpx.Client, server: RunningServer, image: Image, header: str, status: int
) -> None:
    """The download path opens the blob before it evaluates the request: one that sends
    no bytes must close it again, or every conditional GET would leak a descriptor."""
    # The server's background hashing of the new blob's containerDisk layer holds it open
    # for a while too (longer on a busy machine): a manifest request waits for its end.
    assert client.head(f"/v2/{image.repo}/disk/manifests/v1", timeout=120).status_code == 200
    value = {"If-None-Match": image.etag, "If-Match": '"blake3:other"', "Range": f"bytes={SIZE}-"}
    for _ in range(3):
        response = client.get(image.path, headers={header: value[header]})
        assert response.status_code == status
    assert not _has_open(server.process.pid, blob_path(server.data_root, image.blake3))


def test_if_none_match_with_another_etag_gets_200(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"If-None-Match": '"blake3:other"'})
    assert response.status_code == 200
    assert response.content == image.data


def test_if_range_with_the_etag_honours_range(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"Range": "bytes=0-9", "If-Range": image.etag})
    assert response.status_code == 206
    assert response.content == image.data[:10]


def test_if_range_with_last_modified_honours_range(client: httpx.Client, image: Image) -> None:
    last_modified = client.head(image.path).headers["last-modified"]
    response = client.get(image.path, headers={"Range": "bytes=0-9", "If-Range": last_modified})
    assert response.status_code == 206
    assert response.content == image.data[:10]


@pytest.mark.parametrize(
    "if_range",
    ['"blake3:other"', "W/{etag}", "Thu, 01 Jan 2015 00:00:00 GMT", "not a date"],
    ids=["other-etag", "weak-etag", "old-date", "garbage"],
)
def test_if_range_that_fails_sends_everything(
    client: httpx.Client, image: Image, if_range: str
) -> None:
    headers = {"Range": "bytes=0-9", "If-Range": if_range.format(etag=image.etag)}
    response = client.get(image.path, headers=headers)
    assert response.status_code == 200
    assert "content-range" not in response.headers
    assert response.content == image.data


def test_if_match_mismatch_gets_412(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"If-Match": '"blake3:other"'})
    assert_error(response, 412, "FAILED_PRECONDITION")


def test_if_match_with_the_etag_gets_200(client: httpx.Client, image: Image) -> None:
    response = client.get(image.path, headers={"If-Match": image.etag})
    assert response.status_code == 200
    assert response.content == image.data


def test_if_unmodified_since_an_old_date_gets_412(client: httpx.Client, image: Image) -> None:
    headers = {"If-Unmodified-Since": "Thu, 01 Jan 2015 00:00:00 GMT"}
    assert_error(client.get(image.path, headers=headers), 412, "FAILED_PRECONDITION")


@pytest.mark.parametrize("shift_secs", [0, 1], ids=["at", "after"])
def test_if_modified_since_at_or_after_last_modified_gets_304(
    client: httpx.Client, image: Image, shift_secs: int
) -> None:
    since = http_date(client.head(image.path), timedelta(seconds=shift_secs))
    response = client.get(image.path, headers={"If-Modified-Since": since})
    assert response.status_code == 304
    assert response.content == b""


def test_if_modified_since_before_last_modified_gets_200(
    client: httpx.Client, image: Image
) -> None:
    since = http_date(client.head(image.path), timedelta(seconds=-1))
    response = client.get(image.path, headers={"If-Modified-Since": since})
    assert response.status_code == 200
    assert response.content == image.data


@pytest.mark.parametrize(
    "since",
    ["yesterday", "Mon, 01 Feb 2024 00:00:00 +99999999999999999999", "Mon, 99 Feb 2024 0:0:0 GMT"],
    ids=["words", "huge-offset", "bad-day"],
)
def test_if_modified_since_that_is_no_date_is_ignored(
    client: httpx.Client, image: Image, since: str
) -> None:
    response = client.get(image.path, headers={"If-Modified-Since": since})
    assert response.status_code == 200
    assert response.content == image.data


def test_if_none_match_overrides_if_modified_since(client: httpx.Client, image: Image) -> None:
    headers = {
        "If-None-Match": '"blake3:other"',
        "If-Modified-Since": http_date(client.head(image.path)),
    }
    assert client.get(image.path, headers=headers).status_code == 200


# -- digest references ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_digest_reference_serves_the_bytes_immutably(
    client: httpx.Client, image: Image, algorithm: str
) -> None:
    response = client.get(image.by_digest(algorithm))
    assert response.status_code == 200
    assert response.content == image.data
    assert response.headers["etag"] == image.etag
    assert "immutable" in response.headers["cache-control"]


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_digest_reference_answers_head_and_range(
    client: httpx.Client, image: Image, algorithm: str
) -> None:
    assert client.head(image.by_digest(algorithm)).headers["content-length"] == str(SIZE)
    response = client.get(image.by_digest(algorithm), headers={"Range": "bytes=-7"})
    assert response.status_code == 206
    assert response.content == image.data[-7:]


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_digest_reference_is_404_under_another_image(
    client: httpx.Client, image: Image, algorithm: str
) -> None:
    other = put(client, f"/reg/{image.repo}/other/v1", random_image(1000))
    reference = image.by_digest(algorithm).rsplit("/", 1)[1]
    wrong_image = other.path.rsplit("/", 1)[0] + "/" + reference
    assert_error(client.get(wrong_image), 404, "NOT_FOUND")


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_digest_reference_is_404_once_the_tag_is_deleted(
    client: httpx.Client, image: Image, algorithm: str
) -> None:
    put(client, f"/reg/{image.repo}/disk/keep", random_image(1000))  # the image stays
    assert client.delete(image.path).status_code == 200
    assert_error(client.get(image.by_digest(algorithm)), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "reference",
    ["blake3:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64, "blake3:", ":" + "0" * 64],
    ids=["short-hex", "md5", "upper-case", "empty-hex", "no-algorithm"],
)
def test_malformed_digest_reference_is_400(
    client: httpx.Client, image: Image, reference: str
) -> None:
    assert_error(client.get(f"/reg/{image.repo}/disk/{reference}"), 400, "INVALID_ARGUMENT")


# -- large downloads in progress -------------------------------------------------------------


@pytest.fixture
def big(client: httpx.Client, repo: str) -> Image:
    return put(client, f"/reg/{repo}/big/v1", random_image(BIG))


def _download_while_deleting(
    slow_client: httpx.Client,
    client: httpx.Client,
    server: RunningServer,
    big: Image,
    headers: dict[str, str],
    expected: bytes,
) -> None:
    """Start the download, delete the tag while most of it is still unsent, finish it."""
    received = bytearray()
    with slow_client.stream("GET", big.path, headers=headers) as response:
        assert response.status_code == (206 if "Range" in headers else 200)
        chunks = response.iter_bytes()
        while len(received) < 1024 * 1024:
            received += next(chunks)
        assert client.delete(big.path).status_code == 200
        assert not blob_path(server.data_root, big.blake3).exists()  # gone from the store
        assert client.get(big.path).status_code == 404
        assert len(received) < len(expected) // 2  # so the download really was in progress
        for chunk in chunks:
            received += chunk
    assert len(received) == len(expected)
    assert bytes(received) == expected


def test_range_download_survives_a_delete_of_its_tag(
    slow_client: httpx.Client, client: httpx.Client, server: RunningServer, big: Image
) -> None:
    # An odd first position: the streamed chunks do not line up with the read size.
    first = 1_000_001
    headers = {"Range": f"bytes={first}-"}
    _download_while_deleting(slow_client, client, server, big, headers, big.data[first:])


def test_whole_download_survives_a_delete_of_its_tag(
    slow_client: httpx.Client, client: httpx.Client, server: RunningServer, big: Image
) -> None:
    # The blob was opened before the first byte went out, so the delete cannot take
    # the bytes away.
    _download_while_deleting(slow_client, client, server, big, {}, big.data)


def _read_chars(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/<pid>/io")


def _has_open(pid: int, path: Path) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue  # closed while we looked
    return False


@pytest.fixture
def huge(client: httpx.Client, repo: str) -> Image:
    # One random MiB repeated: cheap to make, and still a blob no other test shares.
    image = put(client, f"/reg/{repo}/huge/v1", random_image(1024 * 1024) * (HUGE // (1024 * 1024)))
    # The server hashes a new blob's containerDisk layer in the background (docs/oci.md),
    # reading all of it: a test counting what the server reads must start after that. A
    # manifest request waits for that hashing to end.
    manifest = client.head(f"/v2/{repo}/huge/manifests/v1", timeout=120)
    assert manifest.status_code == 200, manifest.text
    return image


def test_aborted_range_download_stops_reading_the_blob(
    slow_client: httpx.Client, server: RunningServer, huge: Image
) -> None:
    """A client that goes away must not leave the server reading the rest of the range.

    The server may still read what the buffers between it and the socket hold (about
    11 MiB here) and what it reads before Granian's disconnect notice reaches Python
    (a few milliseconds); without the disconnect watch it reads all of the range.
    """
    pid = server.process.pid
    if not Path(f"/proc/{pid}/io").exists():
        pytest.skip("needs Linux /proc/<pid>/io to count what the server reads")
    path = blob_path(server.data_root, huge.blake3)
    before = _read_chars(pid)
    with slow_client.stream("GET", huge.path, headers={"Range": "bytes=0-"}) as response:
        assert response.status_code == 206
        chunks = response.iter_raw()  # keep it: a dropped iterator closes the response
        next(chunks)
        assert _has_open(pid, path)
    # The client is gone. The server closes the blob when its download ends; wait for that.
    wait_until(lambda: not _has_open(pid, path), "the server closes the blob", _FD_WAIT_SECS)
    read = _read_chars(pid) - before
    assert read < HUGE * 3 // 4, f"the server read {read} bytes of an abandoned {HUGE}-byte range"
