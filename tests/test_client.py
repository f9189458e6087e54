"""The client commands against real servers: push, pull, ls, inspect, history, tag, rm.

Every transfer is checked byte for byte and against the digests the server names;
faults (a corrupting or dropping network, no server at all) are made for real by a
proxy in the test (``tests/proxy.py``) or a port that refuses connections.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudimg.client import UsageError, parse_image_ref
from tests.conftest import RunningServer, start_server
from tests.proxy import proxy
from tests.support import blake3_hex, poll, refusing_port, sha256_hex

MIB = 1024 * 1024


def client(
    *args: str,
    server: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m cloudimg ARGS`` with no terminal (stdout, stderr captured)."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CLOUDIMG_") and key != "NETRC"
    }
    environment["HOME"] = str(cwd or Path.cwd())  # no netrc of the person running tests
    if server is not None:
        environment["CLOUDIMG_SERVER"] = server
    environment["CLOUDIMG_PROGRESS_INTERVAL"] = "0.05"
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cloudimg", *args],
        capture_output=True,
        timeout=300,
        env=environment,
        cwd=cwd,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr.decode()}"
    return done.stdout.decode()


def failed(done: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The one-line error of a run that exited ``code``."""
    stderr = done.stderr.decode()
    assert done.returncode == code, f"exit {done.returncode}: {stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def image_bytes(size: int) -> bytes:
    """Random bytes with a run of zeros in the middle (as disk images have)."""
    third = size // 3
    return secrets.token_bytes(third) + bytes(size - 2 * third) + secrets.token_bytes(third)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def name() -> str:
    return "img-" + secrets.token_hex(4)


# -- push and pull ---------------------------------------------------------------------


def test_push_then_pull_a_multi_mib_image_verified(
    server: RunningServer, work: Path, name: str
) -> None:
    data = image_bytes(12 * MIB + 12345)
    (work / "disk.raw").write_bytes(data)
    out = ok(
        client(
            "push", "disk.raw", f"team/{name}:v1", "--meta", "os=debian", "--meta", "arch=arm64",
            server=server.base_url, cwd=work,
        )
    )  # fmt: skip
    assert f"url: {server.base_url}/reg/team/{name}/blake3:{blake3_hex(data)}" in out
    assert f"sha256: sha256:{sha256_hex(data)}" in out

    ok(client("pull", f"team/{name}:v1", "copy.raw", server=server.base_url, cwd=work))
    assert (work / "copy.raw").read_bytes() == data
    assert not list(work.glob(".copy.raw*")), "no partial file is left"

    by_digest = f"team/{name}@sha256:{sha256_hex(data)}"
    ok(client("pull", by_digest, "pinned.raw", server=server.base_url, cwd=work))
    assert (work / "pinned.raw").read_bytes() == data

    meta = json.loads(ok(client("inspect", f"team/{name}:v1", "--json", server=server.base_url)))
    assert meta["meta"] == {"os": "debian", "arch": "arm64"}
    assert meta["digest"] == f"blake3:{blake3_hex(data)}"
    assert meta["size"] == len(data)


def test_a_push_with_format_is_one_raw_upload(server: RunningServer, work: Path, name: str) -> None:
    data = image_bytes(5 * MIB + 7)
    (work / "disk.raw").write_bytes(data)
    out = ok(
        client(
            "push", "disk.raw", f"team/{name}:v1", "--format", "raw", "--meta", "os=Debian ☃",
            server=server.base_url, cwd=work,
        )
    )  # fmt: skip
    assert f"blake3: blake3:{blake3_hex(data)}" in out
    meta = json.loads(ok(client("inspect", f"team/{name}:v1", "--json", server=server.base_url)))
    assert meta["meta"] == {"os": "Debian ☃"}  # in the header, as escaped JSON
    history = json.loads(ok(client("history", f"team/{name}:v1", "--json", server=server.base_url)))
    assert [entry["action"] for entry in history] == ["created"]  # one request, no retag


def test_a_push_to_a_server_without_the_raw_upload_posts(
    server: RunningServer, work: Path, name: str
) -> None:
    data = image_bytes(3 * MIB)
    (work / "disk.raw").write_bytes(data)
    with proxy(server.port, refuse_method="PUT") as older:
        out = ok(
            client(
                "push", "disk.raw", f"team/{name}:v1", "--format", "raw", "--meta", "os=x",
                server=older.url, cwd=work,
            )
        )  # fmt: skip
    assert older.refused == 1
    assert f"blake3: blake3:{blake3_hex(data)}" in out
    meta = json.loads(ok(client("inspect", f"team/{name}:v1", "--json", server=server.base_url)))
    assert meta["meta"] == {"os": "x"}
    ok(client("pull", f"team/{name}:v1", "copy.raw", server=server.base_url, cwd=work))
    assert (work / "copy.raw").read_bytes() == data


def test_pull_to_stdout(server: RunningServer, work: Path, name: str) -> None:
    data = image_bytes(3 * MIB)
    (work / "disk.raw").write_bytes(data)
    ok(client("push", "disk.raw", f"team/{name}:v1", server=server.base_url, cwd=work))
    done = client("pull", f"team/{name}:v1", "-", server=server.base_url, cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    assert b"verified" in done.stderr


def test_an_interrupted_pull_resumes_where_it_stopped(
    server: RunningServer, work: Path, name: str
) -> None:
    data = image_bytes(8 * MIB)
    (work / "disk.raw").write_bytes(data)
    ok(client("push", "disk.raw", f"team/{name}:v1", server=server.base_url, cwd=work))
    with proxy(server.port, cut_after_body_bytes=3 * MIB) as dropping:
        cut = client(
            "pull", f"team/{name}:v1", "copy.raw", "--retries", "0",
            server=dropping.url, cwd=work,
        )  # fmt: skip
    failed(cut, 6)
    assert not (work / "copy.raw").exists()
    partials = list(work.glob(".copy.raw.*.part"))
    assert len(partials) == 1
    assert partials[0].stat().st_size == 3 * MIB

    with proxy(server.port) as counting:
        resumed = client("pull", f"team/{name}:v1", "copy.raw", server=counting.url, cwd=work)
    assert "resumed at 3.0 MiB" in ok(resumed)
    assert (work / "copy.raw").read_bytes() == data
    assert not list(work.glob(".copy.raw.*"))


def test_a_pull_restarts_when_the_tag_moved_meanwhile(
    server: RunningServer, work: Path, name: str
) -> None:
    old, new = image_bytes(6 * MIB), image_bytes(6 * MIB)
    (work / "old.raw").write_bytes(old)
    (work / "new.raw").write_bytes(new)
    ok(client("push", "old.raw", f"team/{name}:latest", server=server.base_url, cwd=work))
    with proxy(server.port, cut_after_body_bytes=2 * MIB) as dropping:
        failed(
            client(
                "pull", f"team/{name}:latest", "copy.raw", "--retries", "0",
                server=dropping.url, cwd=work,
            ),
            6,
        )  # fmt: skip
    ok(client("push", "new.raw", f"team/{name}:latest", server=server.base_url, cwd=work))

    out = ok(client("pull", f"team/{name}:latest", "copy.raw", server=server.base_url, cwd=work))
    assert "resumed" not in out  # If-Range did not match: the whole new image came
    assert (work / "copy.raw").read_bytes() == new
    assert not list(work.glob(".copy.raw.*"))


def test_a_corrupted_download_is_refused_and_leaves_no_file(
    server: RunningServer, work: Path, name: str
) -> None:
    data = image_bytes(4 * MIB)
    (work / "disk.raw").write_bytes(data)
    ok(client("push", "disk.raw", f"team/{name}:v1", server=server.base_url, cwd=work))
    with proxy(server.port, flip_body_byte=MIB + 7) as corrupting:
        done = client("pull", f"team/{name}:v1", "copy.raw", server=corrupting.url, cwd=work)
    line = failed(done, 5)
    assert f"the server named blake3:{blake3_hex(data)}" in line
    assert sorted(p.name for p in work.iterdir() if p.name != ".cache") == ["disk.raw"]


@pytest.mark.parametrize("how", [(), ("--format", "raw")], ids=["resumable", "one-request"])
def test_a_push_corrupted_on_the_way_is_refused_and_stores_nothing(
    server: RunningServer, work: Path, name: str, how: tuple[str, ...]
) -> None:
    (work / "disk.raw").write_bytes(image_bytes(4 * MIB))
    with proxy(server.port, flip_sent_byte=2 * MIB) as corrupting:
        done = client("push", "disk.raw", f"team/{name}:v1", *how, server=corrupting.url, cwd=work)
    assert "the bytes the server received are not" in failed(done, 5)
    failed(client("inspect", f"team/{name}:v1", server=server.base_url), 3)


def test_a_raw_pull_is_sparse(server: RunningServer, work: Path, name: str) -> None:
    size = 64 * MIB
    with (work / "sparse.raw").open("wb") as file:
        file.write(secrets.token_bytes(100_000))
        file.seek(40 * MIB)
        file.write(secrets.token_bytes(100_000))
        file.truncate(size)  # a 64 MiB disk with 200 kB of data
    ok(client("push", "sparse.raw", f"team/{name}:v1", server=server.base_url, cwd=work))
    ok(client("pull", f"team/{name}:v1", "copy.raw", server=server.base_url, cwd=work))
    copy = work / "copy.raw"
    assert copy.read_bytes() == (work / "sparse.raw").read_bytes()
    assert copy.stat().st_size == size
    assert copy.stat().st_blocks * 512 < 2 * MIB, "zero blocks are holes"


# -- browsing and tags -------------------------------------------------------------------


def test_ls_inspect_history_tag_and_rm(server: RunningServer, work: Path, name: str) -> None:
    first, second = image_bytes(MIB), image_bytes(MIB)
    (work / "a.raw").write_bytes(first)
    (work / "b.raw").write_bytes(second)
    url = server.base_url
    ok(client("push", "a.raw", f"shelf/{name}:v1", "--meta", "os=alpine", server=url, cwd=work))
    ok(client("push", "b.raw", f"shelf/{name}:v1", server=url, cwd=work))

    assert "shelf" in json.loads(ok(client("ls", "--json", server=url)))
    images = ok(client("ls", "shelf", server=url)).splitlines()
    assert images[0].split() == ["IMAGE", "TAGS", "SIZE", "UPDATED", "(UTC)"]
    assert next(line for line in images if line.startswith(name)).split()[1:4] == [
        "1",
        "1.0",
        "MiB",
    ]
    table = ok(client("ls", f"shelf/{name}", server=url))
    header, row = table.splitlines()[:2]
    assert header.split()[:3] == ["TAG", "SIZE", "FORMAT"]
    assert row.split()[:4] == ["v1", "1.0", "MiB", "raw"]
    assert f"blake3:{blake3_hex(second)[:12]}" in row

    entries = json.loads(ok(client("history", f"shelf/{name}:v1", "--json", server=url)))
    # A push with --meta is one write: its bytes and metadata in one entry.
    assert [e["action"] for e in entries] == ["moved", "created"]
    assert entries[1]["meta"] == {"os": "alpine"}
    assert entries[1]["digest"] == f"blake3:{blake3_hex(first)}"

    # Roll back to the first bytes, by digest: nothing is uploaded.
    out = ok(client("tag", f"shelf/{name}@blake3:{blake3_hex(first)}", f"shelf/{name}:v1",
                    server=url))  # fmt: skip
    assert f"tagged shelf/{name}:v1 as blake3:{blake3_hex(first)}" in out
    ok(client("tag", f"shelf/{name}:v1", f"shelf/{name}:stable", server=url))
    details = json.loads(ok(client("inspect", f"shelf/{name}:stable", "--json", server=url)))
    assert details["digest"] == f"blake3:{blake3_hex(first)}"
    assert details["meta"] == {"os": "alpine"}  # the metadata it last had with those bytes
    assert details["history"][0]["action"] == "created"  # a retag that creates the tag

    ok(client("rm", f"shelf/{name}:stable", server=url))
    failed(client("inspect", f"shelf/{name}:stable", server=url), 3)
    # The digest stays pinned while v1 names it.
    pinned = ok(client("inspect", f"shelf/{name}@blake3:{blake3_hex(first)}", server=url))
    assert f"sha256:{sha256_hex(first)}" in pinned


# -- exit codes ------------------------------------------------------------------------


def test_exit_codes(server: RunningServer, work: Path, name: str) -> None:
    url = server.base_url
    (work / "disk.raw").write_bytes(image_bytes(MIB))
    assert "not REPO/IMAGE:TAG" in failed(client("pull", "no-tag-here", "x", server=url), 2)
    assert "invalid repo name" in failed(client("ls", "UPPER", server=url), 2)
    assert client("pull", server=url).returncode == 2  # click's usage error
    missing = failed(client("pull", f"team/{name}:nope", "x", server=url, cwd=work), 3)
    assert "404 NOT_FOUND" in missing
    refused = client("push", "disk.raw", f"team/{name}:v1", "--format", "qcow2",
                     server=url, cwd=work)  # fmt: skip
    # Refused before a byte goes: the client runs the server's inspection on the head.
    assert "rule format-mismatch" in failed(refused, 4)
    with refusing_port() as port:
        down = client("ls", "--retries", "1", server=f"http://127.0.0.1:{port}")
    assert "cannot connect" in failed(down, 6)
    assert not (work / "x").exists()


# -- credentials -------------------------------------------------------------------------

WRITE_TOKEN = "client-write-" + secrets.token_hex(8)
READ_PASSWORD = "pw-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Writes need a token, reads Basic credentials (authentication needs one backend)."""
    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "tokens").write_text(f"ci {WRITE_TOKEN}\n")
    (secrets_dir / "credentials").write_text(f"reader:{READ_PASSWORD}\n")
    running = start_server(
        tmp_path_factory.mktemp("protected") / "data",
        "--write-token-file", str(secrets_dir / "tokens"),
        "--read-auth", "basic",
        "--read-credentials-file", str(secrets_dir / "credentials"),
    )  # fmt: skip
    yield running
    running.stop()


def test_credentials_from_the_environment_files_and_netrc(
    protected: RunningServer, work: Path, name: str
) -> None:
    url = protected.base_url
    (work / "disk.raw").write_bytes(image_bytes(MIB))
    no_token = client("push", "disk.raw", f"team/{name}:v1", server=url, cwd=work)
    assert "401 UNAUTH" in failed(
        no_token, 4
    )  # the OCI face says UNAUTHORIZED, /reg UNAUTHENTICATED

    wrong = client("push", "disk.raw", f"team/{name}:v1", server=url, cwd=work,
                   env={"CLOUDIMG_TOKEN": "not-" + WRITE_TOKEN})  # fmt: skip
    failed(wrong, 4)
    assert WRITE_TOKEN.encode() not in wrong.stdout + wrong.stderr

    (work / "token").write_text(WRITE_TOKEN + "\n")
    pushed = client("push", "disk.raw", f"team/{name}:v1", "--token-file", "token",
                    server=url, cwd=work)  # fmt: skip
    ok(pushed)
    history = json.loads(ok(client("history", f"team/{name}:v1", "--json", server=url, cwd=work,
                                   env={"CLOUDIMG_TOKEN": WRITE_TOKEN})))  # fmt: skip
    assert history[0]["actor"] == "ci"  # the token's name, never the token

    failed(client("ls", server=url, cwd=work), 4)  # reads need credentials
    as_reader = {"CLOUDIMG_USER": "reader", "CLOUDIMG_PASSWORD": READ_PASSWORD}
    assert "team" in ok(client("ls", server=url, cwd=work, env=as_reader))

    (work / ".netrc").write_text(f"machine 127.0.0.1 login reader password {READ_PASSWORD}\n")
    (work / ".netrc").chmod(0o600)
    ok(client("pull", f"team/{name}:v1", "copy.raw", server=url, cwd=work))
    assert (work / "copy.raw").read_bytes() == (work / "disk.raw").read_bytes()
    for run in (no_token, wrong, pushed):
        assert READ_PASSWORD.encode() not in run.stdout + run.stderr
        assert WRITE_TOKEN.encode() not in run.stdout + run.stderr


# -- resumable push ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_push_killed_mid_way_resumes_without_sending_the_bytes_again(
    server: RunningServer, work: Path, name: str
) -> None:
    size = 64 * MIB
    data = image_bytes(size)
    (work / "big.raw").write_bytes(data)
    env = {"XDG_CACHE_HOME": str(work / "cache")}
    command = ["push", "big.raw", f"team/{name}:v1", "--chunk-mib", "4", "--quiet"]
    with proxy(server.port) as first:
        environment = {**os.environ, **env, "CLOUDIMG_SERVER": first.url, "HOME": str(work)}
        running = subprocess.Popen(
            [sys.executable, "-m", "cloudimg", *command], cwd=work, env=environment
        )
        assert poll(lambda: first.sent_upstream > 24 * MIB or running.poll() is not None, 120)
        running.kill()  # kill -9, mid-way
        assert running.wait() != 0
        sent_before = first.sent_upstream
    assert sent_before < size, "the push was killed before it sent everything"

    with proxy(server.port) as second:
        out = ok(client(*command, server=second.url, cwd=work, env=env))
    assert "resumed at" in out
    resumed_at = float(out.split("resumed at ")[1].split()[0]) * MIB
    assert resumed_at >= sent_before - 12 * MIB  # at most the chunks in flight are lost
    assert second.sent_upstream < size - resumed_at + MIB  # the rest, and requests' headers
    assert f"blake3:{blake3_hex(data)}" in out
    ok(client("pull", f"team/{name}:v1", "copy.raw", server=server.base_url, cwd=work))
    assert (work / "copy.raw").read_bytes() == data
    assert not list((work / "cache").rglob("*.json")), "a finished push forgets its session"


# -- references (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("team/app:v1", "/team/app/v1"),
        ("team/app:22.04", "/team/app/22.04"),
        ("team/app@blake3:" + "a" * 64, "/team/app/blake3:" + "a" * 64),
        ("team/app@sha256:" + "0" * 64, "/team/app/sha256:" + "0" * 64),
    ],
)
def test_references_name_api_paths(text: str, path: str) -> None:
    ref = parse_image_ref(text)
    assert ref.path == path
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    ["team/app", "team:v1", "team/app:V1", "Team/app:v1", "team/app@md5:abc", "team/app@blake3:xyz",
     "team/app/extra:v1", "tm/app:v1"],
)  # fmt: skip
def test_bad_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_image_ref(text)


def test_a_digest_where_a_tag_is_needed_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="give a tag"):
        parse_image_ref("team/app@blake3:" + "a" * 64, tag_only=True)
