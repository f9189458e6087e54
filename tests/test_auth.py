"""Authentication: bearer tokens for writes, Basic for reads, credential files that rotate.

Servers are real ``cloudimg serve`` processes started with the flags; credential files
are real files, rotated by rewriting them and by the symlink swap kubelet does for a
mounted Secret. The credential file class is also exercised directly.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cloudimg.api.credentials import CredentialSet, parse_basic_credentials, parse_tokens
from cloudimg.api.secret_file import SecretFile
from tests.conftest import RunningServer, start_server, upload
from tests.support import random_image, wait_until

WRITE_TOKEN = "wt-0123456789abcdef-writer"
OTHER_TOKEN = "wt-fedcba9876543210-other"
WRONG_TOKEN = "wt-not-a-token-at-all-xyz"
READ_USER, READ_PASSWORD = "cdi-importer", "pw:with-colon-4711"
WRONG_PASSWORD = "pw-wrong-0815"
SECRETS = [WRITE_TOKEN, OTHER_TOKEN, WRONG_TOKEN, READ_PASSWORD, WRONG_PASSWORD]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def assert_no_secret_in_log(server: RunningServer) -> None:
    log = server.log()
    for secret in SECRETS:
        assert secret not in log, "a secret reached the server log"


def assert_nothing_stored(
    server: RunningServer, http: httpx.Client, repo: str, blobs_before: list[Path]
) -> None:
    assert http.get(f"/reg/{repo}", headers=bearer(WRITE_TOKEN)).status_code == 404
    assert server.blob_files() == blobs_before
    assert server.staging_files() == []


def serve_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudimg", "serve", "--listener-addr", "127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend() -> str:
    """Authentication happens before the catalog is touched: one backend is enough."""
    return "sqlite"


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets")
    (path / "tokens").write_text(f"# writers\n\n  {WRITE_TOKEN}  \n{OTHER_TOKEN}\n")
    (path / "credentials").write_text(f"# readers\n{READ_USER}:{READ_PASSWORD}\n")
    return path


@pytest.fixture(scope="module")
def write_server(
    tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path
) -> Iterator[RunningServer]:
    """Writes need a token; reads are open."""
    running = start_server(
        tmp_path_factory.mktemp("write") / "data",
        "--write-token-file",
        str(secrets_dir / "tokens"),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def read_server(
    tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path
) -> Iterator[RunningServer]:
    """Writes need a token, reads need Basic credentials (from the environment here)."""
    running = start_server(
        tmp_path_factory.mktemp("read") / "data",
        env={
            "CLOUDIMG_WRITE_TOKEN_FILE": str(secrets_dir / "tokens"),
            "CLOUDIMG_READ_AUTH": "basic",
            "CLOUDIMG_READ_CREDENTIALS_FILE": str(secrets_dir / "credentials"),
        },
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stored_image(read_server: RunningServer) -> str:
    """An image on the read-protected server, uploaded with a write token."""
    with read_server.client(headers=bearer(WRITE_TOKEN)) as http:
        assert upload(http, "/reg/protected/disk/v1", b"protected bytes").status_code == 201
    return "/reg/protected/disk/v1"


# -- parsing and comparing ---------------------------------------------------------------


def test_tokens_skip_blanks_and_comments_and_strip_whitespace() -> None:
    tokens = parse_tokens("# a comment\n\n   tok-a  \n\ttok-b\r\n  # indented comment\n")
    assert len(tokens) == 2
    assert tokens.matches("tok-a")
    assert tokens.matches("tok-b")
    assert not tokens.matches(" tok-a")
    assert not tokens.matches("tok")
    assert not tokens.matches("# a comment")
    assert not tokens.matches("")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  \n"])
def test_a_token_file_without_tokens_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="no token"):
        parse_tokens(text)


def test_a_token_line_with_three_words_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError, match="line 2") as caught:
        parse_tokens("good\nname secret-a secret-b\n")
    assert "secret-a" not in str(caught.value)


def test_a_token_line_may_name_its_token() -> None:
    tokens = parse_tokens("# ci\nci-pipeline secret-a\nsecret-b\n")
    assert tokens.match("secret-a") == (True, "ci-pipeline")
    assert tokens.match("secret-b") == (True, None)
    assert tokens.match("ci-pipeline") == (False, None)  # a name is not a token


def test_a_bad_token_name_is_refused_without_showing_the_token() -> None:
    with pytest.raises(ValueError, match="line 1") as caught:
        parse_tokens("na{me} secret-a\n")
    assert "secret-a" not in str(caught.value)


def test_basic_credentials_split_at_the_first_colon() -> None:
    credentials = parse_basic_credentials("# readers\nalice:pa:ss\n bob:x \n")
    assert credentials.matches("alice:pa:ss")
    assert credentials.matches("bob:x")
    assert not credentials.matches("alice:pa")
    assert not credentials.matches("alice")


@pytest.mark.parametrize("line", ["no-colon-secret", ":no-user-secret", "user-secret:"])
def test_a_malformed_credentials_line_is_refused_without_showing_it(line: str) -> None:
    with pytest.raises(ValueError, match="line 2") as caught:
        parse_basic_credentials(f"ok:fine\n{line}\n")
    assert "secret" not in str(caught.value)


def test_credential_set_keeps_digests_not_secrets() -> None:
    credentials = CredentialSet.of(["plain-secret"])
    assert all(len(digest) == 32 for digest in credentials.digests)
    assert b"plain-secret" not in b"".join(credentials.digests)
    assert credentials.matches("plain-secret")


# -- the credential file ------------------------------------------------------------------


def kubelet_secret(root: Path, name: str, content: str, generation: int) -> Path:
    """Write a Secret the way kubelet's atomic writer does; return the path a pod reads.

    ``root/name -> ..data/name`` and ``..data -> ..<generation>``; a new generation is a
    new directory and an atomic rename of a fresh ``..data_tmp`` symlink over ``..data``.
    """
    version = root / f"..gen_{generation}"
    version.mkdir()
    (version / name).write_text(content)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(version.name)
    os.replace(tmp_link, root / "..data")
    visible = root / name
    if not visible.is_symlink():
        visible.symlink_to(f"..data/{name}")
    if generation > 1:
        shutil.rmtree(root / f"..gen_{generation - 1}")
    return visible


def test_secret_file_reloads_a_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("first-token\n")
    secret = SecretFile(path, parse_tokens, what="write tokens", recheck_interval=0)
    assert secret.get().matches("first-token")
    path.write_text("second-token-is-longer\n")
    assert secret.get().matches("second-token-is-longer")
    assert not secret.get().matches("first-token")


def test_secret_file_follows_a_kubelet_symlink_swap(tmp_path: Path) -> None:
    path = kubelet_secret(tmp_path, "tokens", "gen-one\n", 1)
    secret = SecretFile(path, parse_tokens, what="write tokens", recheck_interval=0)
    assert secret.get().matches("gen-one")
    kubelet_secret(tmp_path, "tokens", "gen-two\n", 2)  # same size, new file
    assert secret.get().matches("gen-two")
    assert not secret.get().matches("gen-one")


def test_secret_file_rechecks_only_after_its_interval(tmp_path: Path) -> None:
    now = [100.0]
    path = tmp_path / "tokens"
    path.write_text("old-token\n")
    secret = SecretFile(
        path, parse_tokens, what="write tokens", recheck_interval=5, clock=lambda: now[0]
    )
    path.write_text("new-token\n")
    now[0] += 4
    assert secret.get().matches("old-token")
    now[0] += 1
    assert secret.get().matches("new-token")


@pytest.mark.parametrize("breakage", ["deleted", "emptied", "not utf-8", "malformed"])
def test_secret_file_keeps_the_last_good_value_when_the_file_breaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, breakage: str
) -> None:
    path = tmp_path / "credentials"
    path.write_text("reader:good-password\n")
    secret = SecretFile(path, parse_basic_credentials, what="read credentials", recheck_interval=0)
    if breakage == "deleted":
        path.unlink()
    elif breakage == "emptied":
        path.write_text("# nothing left\n")
    elif breakage == "not utf-8":
        path.write_bytes(b"reader:\xff\xfeleaked-password\n")
    else:
        path.write_text("reader:new-password\nleaked-password\n")
    with caplog.at_level(logging.WARNING, logger="cloudimg.api.secret_file"):
        assert secret.get().matches("reader:good-password")
        assert secret.get().matches("reader:good-password")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per failure, not once per request
    assert "keeping the previous" in warnings[0].getMessage()
    message = warnings[0].getMessage().replace(str(path), "")
    assert "good-password" not in message
    assert "leaked" not in message
    assert "\\xff" not in warnings[0].getMessage()
    path.write_text("reader:repaired-password\n")
    assert secret.get().matches("reader:repaired-password")
    assert not secret.get().matches("reader:good-password")


@pytest.mark.parametrize("content", [None, "", "# comment only\n"])
def test_secret_file_refuses_a_missing_or_empty_file_at_start(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=r"cannot stat|no token"):
        SecretFile(path, parse_tokens, what="write tokens")


# -- start-up errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--write-token-file", "{dir}/missing"], "--write-token-file"),
        (["--write-token-file", "{dir}/empty"], "--write-token-file"),
        (["--read-auth", "basic", "--write-token-file", "{dir}/tokens"], "--read-auth"),
        (["--read-auth", "basic", "--read-credentials-file", "{dir}/creds"], "--read-auth"),
        (
            ["--read-credentials-file", "{dir}/creds", "--write-token-file", "{dir}/tokens"],
            "--read-credentials-file",
        ),
        (
            [
                *("--read-auth", "basic", "--write-token-file", "{dir}/tokens"),
                *("--read-credentials-file", "{dir}/bad-creds"),
            ],
            "--read-credentials-file",
        ),
    ],
)
def test_bad_auth_configuration_stops_the_start(tmp_path: Path, args: list[str], flag: str) -> None:
    (tmp_path / "empty").write_text("# no tokens yet\n")
    (tmp_path / "tokens").write_text(f"{WRITE_TOKEN}\n")
    (tmp_path / "creds").write_text(f"{READ_USER}:{READ_PASSWORD}\n")
    (tmp_path / "bad-creds").write_text(f"{READ_USER}:{READ_PASSWORD}\n{WRONG_PASSWORD}\n")
    result = serve_command(
        "--data-root", str(tmp_path / "data"), *(a.format(dir=tmp_path) for a in args)
    )
    assert result.returncode != 0
    assert flag in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching the data root
    for secret in SECRETS:
        assert secret not in result.stderr + result.stdout


# -- writes need a bearer token -----------------------------------------------------------


def test_upload_without_a_token_is_401_and_stores_nothing(write_server: RunningServer) -> None:
    blobs_before = write_server.blob_files()
    with write_server.client() as http:
        response = upload(http, "/reg/anon/disk/v1", b"anonymous bytes")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="cloudimg"'
        assert response.json()["status"] == "UNAUTHENTICATED"
        assert_nothing_stored(write_server, http, "anon", blobs_before)


def test_upload_with_a_wrong_token_is_401_invalid_token_and_stores_nothing(
    write_server: RunningServer,
) -> None:
    blobs_before = write_server.blob_files()
    with write_server.client(headers=bearer(WRONG_TOKEN)) as http:
        response = upload(http, "/reg/wrong/disk/v1", b"wrong bytes")
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        assert challenge == 'Bearer realm="cloudimg", error="invalid_token"'
        assert response.json()["status"] == "UNAUTHENTICATED"
        assert WRONG_TOKEN not in response.text
        assert_nothing_stored(write_server, http, "wrong", blobs_before)
    assert_no_secret_in_log(write_server)


@pytest.mark.parametrize(
    "authorization",
    [
        f"Basic {base64.b64encode(f'x:{WRITE_TOKEN}'.encode()).decode()}",
        f"Token {WRITE_TOKEN}",
        "Bearer",
        f"Bearer  {WRITE_TOKEN} extra",
        f"Bearer {WRITE_TOKEN}x",
        f"Bearer {WRITE_TOKEN[:-1]}",
        f"{WRITE_TOKEN}",
    ],
)
def test_upload_with_unusable_credentials_is_401(
    write_server: RunningServer, authorization: str
) -> None:
    blobs_before = write_server.blob_files()
    with write_server.client(headers={"Authorization": authorization}) as http:
        response = upload(http, "/reg/unusable/disk/v1", b"bytes")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Bearer realm="cloudimg"')
        assert_nothing_stored(write_server, http, "unusable", blobs_before)


def test_each_listed_token_may_upload_and_reads_stay_open(
    write_server: RunningServer, repo: str
) -> None:
    for token, tag in [(WRITE_TOKEN, "v1"), (OTHER_TOKEN, "v2")]:
        with write_server.client(headers=bearer(token)) as http:
            assert upload(http, f"/reg/{repo}/disk/{tag}", tag.encode() * 9).status_code == 201
    with write_server.client() as http:
        assert http.get("/reg").status_code == 200
        assert http.get(f"/reg/{repo}/disk").json()["data"] == ["v1", "v2"]
        assert http.get(f"/reg/{repo}/disk/v1").content == b"v1" * 9
        assert http.head(f"/reg/{repo}/disk/v1").headers["content-length"] == "18"
        assert http.get(f"/reg/{repo}/disk/v2/meta").status_code == 200
        # Wrong credentials on a read do not matter while reads are open.
        assert http.get("/reg", headers=bearer(WRONG_TOKEN)).status_code == 200
    # Without a policy too, each accepted write is audited once, naming the credential.
    audit = f"accepted push of {repo}/disk by unnamed token: upload of blake3:"
    assert write_server.log().count(audit) == 2
    assert_no_secret_in_log(write_server)


def test_delete_needs_a_token(write_server: RunningServer, repo: str) -> None:
    path = f"/reg/{repo}/disk/v1"
    with write_server.client() as http:
        assert upload(http, path, b"to delete").status_code == 401
    with write_server.client(headers=bearer(WRITE_TOKEN)) as http:
        assert upload(http, path, b"to delete").status_code == 201
    with write_server.client() as http:
        anonymous = http.delete(path)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == 'Bearer realm="cloudimg"'
        assert http.delete(path, headers=bearer(WRONG_TOKEN)).status_code == 401
        assert http.get(path).content == b"to delete"
        assert http.delete(path, headers=bearer(OTHER_TOKEN)).status_code == 200
        assert http.get(path).status_code == 404


def test_probes_and_docs_stay_open(write_server: RunningServer) -> None:
    with write_server.client() as http:
        assert http.options("/reg/abc/def/v1").status_code == 204
        assert http.get("/healthz").status_code == 200
        assert http.get("/docs/openapi.json").status_code == 200


def test_connection_serves_the_next_request_after_a_refused_upload(
    write_server: RunningServer,
) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", write_server.port, timeout=30)
    try:
        body = random_image(300_000)
        connection.request(
            "POST", "/reg/anon/disk/v1", body=body, headers={"content-type": "text/plain"}
        )
        refused = connection.getresponse()
        refused.read()
        assert refused.status == 401
        if (refused.getheader("connection") or "").lower() != "close":
            connection.request("GET", "/healthz")
            assert connection.getresponse().status == 200
    finally:
        connection.close()


@pytest.fixture(scope="module")
def impatient_server(
    tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path
) -> Iterator[RunningServer]:
    """Writes need a token; a request body may send nothing for one second."""
    running = start_server(
        tmp_path_factory.mktemp("impatient") / "data",
        "--write-token-file",
        str(secrets_dir / "tokens"),
        "--read-body-timeout-secs",
        "1",
    )
    yield running
    running.stop()


def stalled_upload(server: RunningServer, headers: dict[str, str]) -> bytes:
    """POST announcing 100,000 bytes of body and sending a few; the whole answer.

    The socket's own timeout only tells a server that never answers from one that does.
    """
    fields = {
        "Host": f"127.0.0.1:{server.port}",
        "Content-Type": "multipart/form-data; boundary=stall",
        "Content-Length": "100000",
        **headers,
    }
    head = "POST /reg/stalled/disk/v1 HTTP/1.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields.items()) + "\r\n"
    first = b'--stall\r\nContent-Disposition: form-data; name="img"\r\n\r\nabc'
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + first)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (bearer(WRONG_TOKEN), 401),
        (basic(READ_USER, READ_PASSWORD), 401),
        (bearer(WRITE_TOKEN), 408),
    ],
    ids=["no-token", "wrong-token", "basic", "valid-token"],
)
def test_a_stalled_body_is_answered_after_the_body_timeout(
    impatient_server: RunningServer, headers: dict[str, str], status: int
) -> None:
    """The guard drains a refused body with the same body timeout as an upload, so a
    client that stops sending cannot hold the request (and its connection) forever."""
    answer = stalled_upload(impatient_server, headers)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert b'"status":"' in answer
    assert impatient_server.staging_files() == []
    with impatient_server.client() as http:
        assert http.get("/reg").json()["data"] == []


def test_a_refused_write_waiting_for_100_continue_is_answered_at_once(
    write_server: RunningServer,
) -> None:
    """The client has sent no body yet: the 401 comes without waiting for one."""
    answer = stalled_upload(write_server, {"Expect": "100-continue"})
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    assert b"100 Continue" not in answer


# -- reads need Basic credentials with --read-auth basic ------------------------------------


def test_reads_without_credentials_get_a_basic_challenge(
    read_server: RunningServer, stored_image: str
) -> None:
    with read_server.client() as http:
        for method, path in [
            ("GET", "/reg"),
            ("GET", "/reg/protected"),
            ("GET", "/reg/protected/disk"),
            ("GET", stored_image),
            ("HEAD", stored_image),
            ("GET", f"{stored_image}/meta"),
            ("HEAD", f"{stored_image}/meta"),
            ("OPTIONS", stored_image),
        ]:
            response = http.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"] == 'Basic realm="cloudimg", charset="UTF-8"'
            if method == "GET":
                assert response.json()["status"] == "UNAUTHENTICATED"


def test_reads_with_basic_credentials_or_a_write_token(
    read_server: RunningServer, stored_image: str
) -> None:
    for headers in [basic(READ_USER, READ_PASSWORD), bearer(WRITE_TOKEN), bearer(OTHER_TOKEN)]:
        with read_server.client(headers=headers) as http:
            assert http.get("/reg").json()["data"] == ["protected"]
            assert http.get(stored_image).content == b"protected bytes"
            assert http.head(stored_image).headers["content-length"] == "15"
            ranged = http.get(stored_image, headers={"Range": "bytes=0-8"})
            assert ranged.status_code == 206
            assert ranged.content == b"protected"


def test_httpx_basic_auth_reads(read_server: RunningServer, stored_image: str) -> None:
    with read_server.client(auth=(READ_USER, READ_PASSWORD)) as http:
        assert http.get(stored_image).content == b"protected bytes"


@pytest.mark.parametrize(
    "headers",
    [
        basic(READ_USER, WRONG_PASSWORD),
        basic("someone-else", READ_PASSWORD),
        basic(READ_USER, READ_PASSWORD.partition(":")[0]),
        bearer(WRONG_TOKEN),
        {"Authorization": "Basic not-base64!"},
    ],
)
def test_reads_with_wrong_credentials_are_401(
    read_server: RunningServer, stored_image: str, headers: dict[str, str]
) -> None:
    with read_server.client(headers=headers) as http:
        response = http.get(stored_image)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic ")
        assert b"protected bytes" not in response.content


def test_read_credentials_may_not_write(read_server: RunningServer, stored_image: str) -> None:
    with read_server.client(headers=basic(READ_USER, READ_PASSWORD)) as http:
        response = upload(http, "/reg/readers/disk/v1", b"reader bytes")
        assert response.status_code == 403
        assert response.json()["status"] == "PERMISSION_DENIED"
        assert http.delete(stored_image).status_code == 403
        assert http.get(stored_image).content == b"protected bytes"
        assert http.get("/reg/readers").status_code == 404


def test_probes_and_docs_stay_open_with_read_auth(read_server: RunningServer) -> None:
    with read_server.client() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/docs/openapi.json").status_code == 200
        assert http.get("/docs/openapi-3.1.json").status_code == 200


QEMU_IMG = "/usr/bin/qemu-img"
_QEMU_PATH = "/reg/qemu-auth/disk/v1"


def run_qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [QEMU_IMG, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if "Unknown protocol" in result.stderr or "Unknown driver" in result.stderr:
        pytest.skip("qemu-img has no http driver (Debian: qemu-block-extra)")
    return result


@pytest.fixture(scope="module")
def qemu_disk(read_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A qcow2 disk on the read-protected server; returns the raw bytes it holds."""
    if not os.access(QEMU_IMG, os.X_OK):
        pytest.skip(f"{QEMU_IMG} is not installed")
    work = tmp_path_factory.mktemp("qemu-auth")
    raw, qcow2 = work / "disk.raw", work / "disk.qcow2"
    raw.write_bytes(os.urandom(64 * 1024) + b"\0" * (1024 * 1024 - 64 * 1024))
    converted = run_qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    assert converted.returncode == 0, converted.stderr
    with read_server.client(headers=bearer(WRITE_TOKEN)) as http:
        assert upload(http, _QEMU_PATH, qcow2.read_bytes()).status_code == 201
    return raw.read_bytes()


def test_qemu_img_reads_with_credentials_in_the_url(
    read_server: RunningServer, qemu_disk: bytes, tmp_path: Path
) -> None:
    host = read_server.base_url.removeprefix("http://")
    # READ_PASSWORD holds a colon, which a URL's userinfo carries percent-encoded.
    password = READ_PASSWORD.replace(":", "%3A")
    url = f"http://{READ_USER}:{password}@{host}{_QEMU_PATH}"
    out = tmp_path / "out.raw"
    result = run_qemu_img("convert", "-m", "1", "-f", "qcow2", "-O", "raw", url, str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == qemu_disk
    assert_no_secret_in_log(read_server)


def test_qemu_img_reads_with_a_password_secret(
    read_server: RunningServer, qemu_disk: bytes, tmp_path: Path
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(READ_PASSWORD)
    options = ",".join(
        [
            "driver=qcow2",
            "file.driver=http",
            f"file.url={read_server.base_url}{_QEMU_PATH}",
            f"file.username={READ_USER}",
            "file.password-secret=sec0",
        ]
    )
    out = tmp_path / "out.raw"
    secret = f"secret,id=sec0,file={password_file}"
    result = run_qemu_img(
        "convert", "-m", "1", "--object", secret, "--image-opts", options, "-O", "raw", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == qemu_disk


def test_qemu_img_without_credentials_is_refused(
    read_server: RunningServer, qemu_disk: bytes
) -> None:
    result = run_qemu_img("info", f"{read_server.base_url}{_QEMU_PATH}")
    assert result.returncode != 0
    assert "401" in result.stderr


# -- rotation without restart ---------------------------------------------------------------


def can_upload(server: RunningServer, token: str, path: str) -> bool:
    with server.client(headers=bearer(token)) as http:
        status = upload(http, path, b"rotation bytes").status_code
    assert status in (201, 401), status
    return status == 201


def test_a_rewritten_token_file_takes_effect_without_restart(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{WRITE_TOKEN}\n")
    running = server_factory("--write-token-file", str(tokens))
    assert can_upload(running, WRITE_TOKEN, "/reg/rot/disk/v1")
    assert not can_upload(running, OTHER_TOKEN, "/reg/rot/disk/v2")
    tokens.write_text(f"# rotated\n{OTHER_TOKEN}\n")
    wait_until(lambda: can_upload(running, OTHER_TOKEN, "/reg/rot/disk/v2"), "new token works")
    assert not can_upload(running, WRITE_TOKEN, "/reg/rot/disk/v3")
    assert_no_secret_in_log(running)


def test_a_kubelet_symlink_swap_takes_effect_without_restart(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    mount = tmp_path / "secret-volume"
    mount.mkdir()
    tokens = kubelet_secret(mount, "tokens", f"{WRITE_TOKEN}\n", 1)
    running = server_factory("--write-token-file", str(tokens))
    assert can_upload(running, WRITE_TOKEN, "/reg/swap/disk/v1")
    kubelet_secret(mount, "tokens", f"{OTHER_TOKEN}\n", 2)
    wait_until(lambda: can_upload(running, OTHER_TOKEN, "/reg/swap/disk/v2"), "new token works")
    assert not can_upload(running, WRITE_TOKEN, "/reg/swap/disk/v3")
    assert_no_secret_in_log(running)


def test_a_token_file_that_disappears_keeps_the_last_tokens(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{WRITE_TOKEN}\n")
    running = server_factory("--write-token-file", str(tokens))
    tokens.unlink()

    def warned_and_still_accepted() -> bool:
        # The file is checked on requests: each attempt is one.
        accepted = can_upload(running, WRITE_TOKEN, "/reg/gone/disk/v1")
        assert accepted  # the last good tokens stay
        return "keeping the previous" in running.log()

    wait_until(warned_and_still_accepted, "a warning in the log")
    # It never fails open:
    assert not can_upload(running, WRONG_TOKEN, "/reg/gone/disk/v2")
    with running.client() as http:
        assert upload(http, "/reg/gone/disk/v3", b"anonymous").status_code == 401
    tokens.write_text(f"{OTHER_TOKEN}\n")
    wait_until(lambda: can_upload(running, OTHER_TOKEN, "/reg/gone/disk/v4"), "new token works")
    assert not can_upload(running, WRITE_TOKEN, "/reg/gone/disk/v5")
    assert_no_secret_in_log(running)


def test_rewritten_read_credentials_take_effect_without_restart(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    tokens, credentials = tmp_path / "tokens", tmp_path / "credentials"
    tokens.write_text(f"{WRITE_TOKEN}\n")
    credentials.write_text(f"{READ_USER}:{READ_PASSWORD}\n")
    running = server_factory(
        "--write-token-file",
        str(tokens),
        "--read-auth",
        "basic",
        "--read-credentials-file",
        str(credentials),
    )

    def reads(password: str) -> bool:
        with running.client(headers=basic(READ_USER, password)) as http:
            status = http.get("/reg").status_code
        assert status in (200, 401), status
        return status == 200

    assert reads(READ_PASSWORD)
    credentials.write_text(f"{READ_USER}:{WRONG_PASSWORD}\n")
    wait_until(lambda: reads(WRONG_PASSWORD), "the new password works")
    assert not reads(READ_PASSWORD)
    assert_no_secret_in_log(running)
