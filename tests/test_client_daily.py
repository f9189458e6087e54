"""The client for daily use, against real servers: pull's destination, immutability,
credentials and ``--server`` said plainly, what is missing, what history holds, and one
history entry per push.

The commands run as ``python -m cloudimg`` subprocesses (``tests/test_client.py``'s
helpers); the HTTP API is read with httpx where a test checks what the server says.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server
from tests.proxy import proxy
from tests.support import blake3_hex, random_image, sha256_hex
from tests.test_client import client, failed, ok

MIB = 1024 * 1024
TOKEN = "daily-write-" + secrets.token_hex(8)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def name() -> str:
    return "img-" + secrets.token_hex(4)


def push(server: str, work: Path, data: bytes, ref: str, *args: str) -> str:
    (work / "push.raw").write_bytes(data)
    return ok(client("push", "push.raw", ref, *args, server=server, cwd=work))


def actions(server: str, ref: str) -> list[str]:
    entries = json.loads(ok(client("history", ref, "--json", server=server)))
    return [entry["action"] for entry in entries]


# -- pull: the destination ---------------------------------------------------------------


def test_a_pull_into_a_missing_directory_is_one_line_and_exit_2(
    server: RunningServer, work: Path, name: str
) -> None:
    push(server.base_url, work, random_image(MIB), f"team/{name}:v1")
    done = client("pull", f"team/{name}:v1", str(work / "no" / "dir" / "x.img"),
                  server=server.base_url, cwd=work)  # fmt: skip
    line = failed(done, 2)
    assert f"the directory {work / 'no' / 'dir'} does not exist" in line
    assert b"Traceback" not in done.stderr
    (work / "file").write_bytes(b"")
    under_a_file = client("pull", f"team/{name}:v1", "file/x.img", server=server.base_url, cwd=work)
    assert "is not a directory" in failed(under_a_file, 2)
    os.mkfifo(work / "fifo")
    assert "not a regular file" in failed(
        client("pull", f"team/{name}:v1", "fifo", server=server.base_url, cwd=work), 2
    )


def test_a_pull_over_another_file_is_refused_unless_forced(
    server: RunningServer, work: Path, name: str
) -> None:
    data = random_image(2 * MIB)
    push(server.base_url, work, data, f"team/{name}:v1")
    mine = random_image(MIB)
    (work / "copy.raw").write_bytes(mine)
    refused = failed(client("pull", f"team/{name}:v1", "copy.raw", server=server.base_url,
                            cwd=work), 2)  # fmt: skip
    assert f"copy.raw exists and holds other bytes than team/{name}:v1" in refused
    assert "--force" in refused
    assert (work / "copy.raw").read_bytes() == mine
    ok(client("pull", f"team/{name}:v1", "copy.raw", "--force", server=server.base_url, cwd=work))
    assert (work / "copy.raw").read_bytes() == data


def test_a_pull_of_bytes_the_file_already_has_downloads_nothing(
    server: RunningServer, work: Path, name: str
) -> None:
    data = random_image(3 * MIB)
    push(server.base_url, work, data, f"team/{name}:v1")
    ok(client("pull", f"team/{name}:v1", "copy.raw", server=server.base_url, cwd=work))
    before = (work / "copy.raw").stat()
    for ref in (f"team/{name}:v1", f"team/{name}@sha256:{sha256_hex(data)}"):
        with proxy(server.port) as counting:
            out = ok(client("pull", ref, "copy.raw", server=counting.url, cwd=work))
        assert f"copy.raw already holds {ref} (blake3:{blake3_hex(data)})" in out
        assert "nothing to download" in out
        assert counting.sent_downstream < 64 * 1024  # a /meta or a HEAD, not the image
    after = (work / "copy.raw").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(work.glob(".copy.raw*"))


# -- immutability ------------------------------------------------------------------------


def test_immutable_and_release_and_where_it_shows(
    server: RunningServer, work: Path, name: str
) -> None:
    url, ref = server.base_url, f"team/{name}:v1"
    push(url, work, random_image(MIB), ref)
    with server.client() as http:
        assert http.get(f"/reg/team/{name}/v1/meta").json()["immutable"] is False

    assert ok(client("immutable", ref, server=url)) == f"{ref} is immutable\n"
    assert ok(client("immutable", ref, server=url)) == f"{ref} was immutable already\n"
    with server.client() as http:
        meta = http.get(f"/reg/team/{name}/v1/meta").json()
    assert (meta["immutable"], meta["immutable_rule"]) == (True, None)
    assert "immutable:    yes\n" in ok(client("inspect", ref, server=url))
    assert json.loads(ok(client("inspect", ref, "--json", server=url)))["immutable"] is True
    header, row = ok(client("ls", f"team/{name}", server=url)).splitlines()[:2]
    assert header.split()[-1] == "IMMUTABLE"
    assert row.split()[-1] == "yes"
    assert json.loads(ok(client("ls", f"team/{name}", "--json", server=url)))[0]["immutable"]

    assert "409 TAG_IMMUTABLE" in failed(client("rm", ref, server=url), 4)
    (work / "other.raw").write_bytes(random_image(MIB))
    pushed = failed(client("push", "other.raw", ref, server=url, cwd=work), 4)
    assert "not sent, the tag is immutable" in pushed  # said before a byte goes

    assert ok(client("immutable", "--release", ref, server=url)) == f"released {ref}\n"
    assert ok(client("immutable", "--release", ref, server=url)) == f"{ref} was not immutable\n"
    assert "immutable:    no\n" in ok(client("inspect", ref, server=url))
    assert actions(url, ref)[:2] == ["released", "immutable"]
    ok(client("rm", ref, server=url))


def test_a_tag_an_operators_rule_protects_shows_the_rule(
    server_factory: Callable[..., RunningServer], work: Path
) -> None:
    server = server_factory("--immutable-tags", "rules/*/v*")
    push(server.base_url, work, random_image(MIB), "rules/img:v1")
    with server.client() as http:
        meta = http.get("/reg/rules/img/v1/meta").json()
    assert (meta["immutable"], meta["immutable_rule"]) == (True, "rules/*/v*")
    shown = ok(client("inspect", "rules/img:v1", server=server.base_url))
    assert "immutable:    yes (rule rules/*/v*)\n" in shown
    refused = failed(client("immutable", "--release", "rules/img:v1", server=server.base_url), 4)
    assert "409 TAG_IMMUTABLE" in refused
    assert "rule=rules/*/v*" in refused


# -- credentials and --server said plainly ----------------------------------------------


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Writes need a token (authentication needs one backend)."""
    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "tokens").write_text(f"ci {TOKEN}\n")
    running = start_server(
        tmp_path_factory.mktemp("protected") / "data",
        "--write-token-file",
        str(secrets_dir / "tokens"),
    )
    yield running
    running.stop()


def test_a_wrong_token_is_said_to_be_rejected(
    protected: RunningServer, work: Path, name: str
) -> None:
    url = protected.base_url
    (work / "disk.raw").write_bytes(random_image(MIB))
    wrong = {"CLOUDIMG_TOKEN": "not-" + TOKEN}
    runs = []
    # The resumable push writes to the OCI face first, whose 401 says nothing of tokens.
    runs.append(client("push", "disk.raw", f"team/{name}:v1", server=url, cwd=work, env=wrong))
    line = failed(runs[-1], 4)
    assert "the server rejected the write token from CLOUDIMG_TOKEN (401 " in line
    runs.append(client("push", "disk.raw", f"team/{name}:v1", "--format", "raw",
                       server=url, cwd=work, env=wrong))  # fmt: skip
    assert "the server rejected the write token from CLOUDIMG_TOKEN (401 " in failed(runs[-1], 4)
    (work / "token").write_text("not-" + TOKEN + "\n")
    runs.append(client("rm", f"team/{name}:v1", "--token-file", "token", server=url, cwd=work))
    line = failed(runs[-1], 4)
    assert "the server rejected the write token from --token-file token (401 UNAUTH" in line
    runs.append(client("push", "disk.raw", f"team/{name}:v1", server=url, cwd=work))
    line = failed(runs[-1], 4)
    assert "no credentials were sent" in line
    assert "rejected" not in line
    for run in runs:
        assert TOKEN.encode() not in run.stdout + run.stderr


def test_a_server_given_as_host_and_port_is_http(server: RunningServer, work: Path) -> None:
    listed = ok(client("ls", "--server", f"127.0.0.1:{server.port}"))
    assert listed.startswith("REPOSITORY")
    with_path = ok(client("ls", "--json", "--server", f"127.0.0.1:{server.port}/reg/"))
    assert isinstance(json.loads(with_path), list)
    for bad in ("ftp://127.0.0.1/", "http://"):
        assert "is not an http:// or https:// URL" in failed(client("ls", "--server", bad), 2)


@pytest.mark.parametrize("path", ["/v2", "/images"])
def test_a_server_url_that_is_no_registry_is_named(
    server: RunningServer, work: Path, name: str, path: str
) -> None:
    url = server.base_url + path
    said = f"{url} does not answer as a cloudimg registry (GET {url} gave "
    for command in (("ls",), ("ls", "team"), ("inspect", f"team/{name}:v1"),
                    ("pull", f"team/{name}:v1", "x.raw")):  # fmt: skip
        line = failed(client(*command, server=url, cwd=work), 2)
        assert said in line, command
    (work / "disk.raw").write_bytes(random_image(MIB))
    assert said in failed(client("push", "disk.raw", f"team/{name}:v1", server=url, cwd=work), 2)
    assert not (work / "x.raw").exists()
    failed(client("inspect", f"team/{name}:v1", server=server.base_url), 3)  # nothing pushed


def test_not_found_names_what_is_missing(server: RunningServer, work: Path, name: str) -> None:
    url = server.base_url
    push(url, work, random_image(MIB), f"team/{name}:v1")
    missing = {
        f"nosuch-{name}/disk:v1": "repository not found (repo=nosuch-",
        f"team/no-{name}:v1": f"image not found (image=no-{name}, repo=team)",
        f"team/{name}:v9": f"tag not found (image={name}, repo=team, tag=v9)",
    }
    for ref, said in missing.items():
        for command in (("pull", ref, "x.raw"), ("inspect", ref), ("rm", ref),
                        ("immutable", ref)):  # fmt: skip
            line = failed(client(*command, server=url, cwd=work), 3)
            assert f"404 NOT_FOUND: {said}" in line, (command, line)


# -- what history holds ----------------------------------------------------------------


def test_rm_du_and_gc_say_what_history_holds_and_how_to_free_it(
    server_factory: Callable[..., RunningServer], work: Path
) -> None:
    server = server_factory()
    url = server.base_url
    storage = ("--data-root", str(server.data_root), "--database-url", server.database_url)
    first, second = random_image(MIB), random_image(2 * MIB)
    push(url, work, first, "team/app:v1")
    push(url, work, second, "team/app:v1")

    out = ok(client("rm", "team/app:v1", server=url)).splitlines()
    assert out[0] == "deleted team/app:v1"
    assert out[1].startswith("its history still holds 2 image(s), 3.0 MiB, downloadable by")
    assert "gc does not free them: `cloudimg rm team/app:v1 --purge-history`" in out[1]

    hint = "gc does not free them: `cloudimg rm REPO/IMAGE:TAG --purge-history`"
    du = ok(client("du", *storage))
    assert "held only by tag history: 2 blob(s), 3.0 MiB\n  " + hint in du
    gc = ok(client("gc", *storage, "--quiet"))
    assert "held only by tag history: 2 blob(s), 3.0 MiB; " + hint in gc
    assert "freed 0 B" in gc

    purged = ok(client("rm", "team/app:v1", "--purge-history", server=url))
    assert purged == "deleted team/app:v1 and its history\n"
    assert "tag history" not in ok(client("gc", *storage, "--quiet"))
    assert hint not in ok(client("du", *storage))


def test_rm_of_a_tag_whose_history_holds_nothing_says_nothing_more(
    server_factory: Callable[..., RunningServer], work: Path
) -> None:
    server = server_factory("--keep-history", "0")
    push(server.base_url, work, random_image(MIB), "team/app:v1")
    assert ok(client("rm", "team/app:v1", server=server.base_url)) == "deleted team/app:v1\n"


# -- history entries ---------------------------------------------------------------------


def test_a_retag_that_creates_a_tag_records_created(
    server: RunningServer, work: Path, name: str
) -> None:
    url = server.base_url
    data = random_image(MIB)
    push(url, work, data, f"team/{name}:v1")
    ok(client("tag", f"team/{name}:v1", f"team/{name}:stable", server=url))
    assert actions(url, f"team/{name}:stable") == ["created"]
    ok(client("tag", f"team/{name}@blake3:{blake3_hex(data)}", f"team/{name}:v1", server=url))
    assert actions(url, f"team/{name}:v1") == ["retagged", "created"]  # an existing tag
    with server.client() as http:  # the API the same
        retag = http.post(
            f"/reg/team/{name}/api/retag", json={"digest": f"blake3:{blake3_hex(data)}"}
        )
        assert retag.status_code == 201
        history = http.get(f"/reg/team/{name}/api/history").json()["data"]
    assert [entry["action"] for entry in history] == ["created"]


def test_a_push_with_metadata_is_one_history_entry(
    server_factory: Callable[..., RunningServer], work: Path
) -> None:
    server = server_factory()
    url = server.base_url
    first, second = random_image(2 * MIB), random_image(MIB)
    push(url, work, first, "team/app:v1", "--meta", "os=debian")
    entries = json.loads(ok(client("history", "team/app:v1", "--json", server=url)))
    assert [(e["action"], e["meta"]) for e in entries] == [("created", {"os": "debian"})]
    push(url, work, second, "team/app:v1", "--meta", "os=trixie", "--chunk-mib", "1")
    push(url, work, second, "team/app:v1", "--meta", "os=forky")  # the same bytes
    entries = json.loads(ok(client("history", "team/app:v1", "--json", server=url)))
    assert [(e["action"], e["meta"]) for e in entries] == [
        ("moved", {"os": "forky"}),
        ("moved", {"os": "trixie"}),
        ("created", {"os": "debian"}),
    ]
    assert entries[1]["digest"] == f"blake3:{blake3_hex(second)}"
    push(url, work, first, "team/app:v2")  # no metadata: still one entry
    details = json.loads(ok(client("inspect", "team/app:v2", "--json", server=url)))
    assert [e["action"] for e in details["history"]] == ["created"]
    assert details["meta"] == {}
    ok(client("pull", "team/app:v1", "copy.raw", server=url, cwd=work))
    assert (work / "copy.raw").read_bytes() == second
    assert server.staging_files() == [], "no upload session is left behind"


def test_a_push_to_a_server_without_the_commit_by_retag_takes_two_writes(
    server_factory: Callable[..., RunningServer], work: Path
) -> None:
    """A server that answers the retag of a finished upload 404 or 405 (older than that
    commit) gets the manifest and then the metadata by a retag of the stored bytes: the
    two entries of before."""
    server = server_factory()
    data = random_image(MIB)
    with proxy(
        server.port, refuse_method="POST", refuse_path_suffix="/retag", refuse_at_most=1
    ) as older:
        push(older.url, work, data, "team/app:v1", "--meta", "os=x")
        assert older.refused == 1
    entries = json.loads(ok(client("history", "team/app:v1", "--json", server=server.base_url)))
    assert [(e["action"], e["meta"]) for e in entries] == [
        ("retagged", {"os": "x"}),
        ("created", {}),
    ]


def test_a_push_inspection_refuses_leaves_nothing(
    server_factory: Callable[..., RunningServer], work: Path
) -> None:
    server = server_factory("--allowed-formats", "qcow2")
    (work / "disk.raw").write_bytes(random_image(MIB))
    done = client("push", "disk.raw", "team/app:v1", "--meta", "os=x",
                  server=server.base_url, cwd=work)  # fmt: skip
    assert "422 IMAGE_REFUSED" in failed(done, 4)
    with server.client() as http:
        assert http.get("/reg/team/app/v1/meta").status_code == 404
        assert http.get("/reg/team/app/v1/history").status_code == 404
    assert server.staging_files() == []


def test_the_retag_of_a_finished_upload_over_http(
    server: RunningServer, work: Path, name: str
) -> None:
    """What the push does, in plain HTTP: a /v2 upload session, then the /reg retag."""
    data = random_image(MIB)
    digest = f"sha256:{sha256_hex(data)}"
    with server.client() as http:
        start = http.post(f"/v2/team/{name}/blobs/uploads/")
        assert start.status_code == 202
        done = http.put(start.headers["Location"], params={"digest": digest}, content=data)
        assert done.status_code == 201
        retag = http.post(f"/reg/team/{name}/v1/retag", json={"digest": digest, "meta": {"a": "b"}})
        assert retag.status_code == 201, retag.text
        assert retag.headers["ETag"] == f'"blake3:{blake3_hex(data)}"'
        assert http.get(f"/reg/team/{name}/v1").content == data
        meta = http.get(f"/reg/team/{name}/v1/meta").json()
        assert (meta["data"], meta["format"]) == ({"a": "b"}, "raw")
        assert http.get(start.headers["Location"]).status_code == 404  # the upload is used up
        assert [e["action"] for e in http.get(f"/reg/team/{name}/v1/history").json()["data"]] == [
            "created"
        ]
        # Neither stored nor uploaded: 404, as before.
        unknown = f"sha256:{sha256_hex(random_image(1000))}"
        assert http.post(f"/reg/team/{name}/v1/retag", json={"digest": unknown}).status_code == 404
