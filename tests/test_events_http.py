"""Change events over HTTP, on both catalog backends: a real server delivers them to a
real receiver on loopback (the Python example of docs/events.md, run as written, which
verifies each signature), in order, after retries, to dead letters and back; every
write path produces its event and a refused write none; ``/reg/_events`` pages and
long-polls; ``/metrics`` counts per endpoint."""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, serve_module, upload, upload_raw
from tests.maintenance_support import cli, cli_json
from tests.oci_support import EMPTY, artifact_manifest, push_blob, put_manifest
from tests.support import assert_error, blake3_hex, random_image, wait_until

_DOCS = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def docs_receiver() -> dict[str, Any]:
    """The receiver example of docs/events.md, executed as a module (not as __main__)."""
    text = _DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    [example] = [b for b in blocks if "class Receiver" in b]
    namespace: dict[str, Any] = {"__name__": "docs_events_example"}
    exec(compile(example, str(_DOCS), "exec"), namespace)
    return namespace


@dataclass
class Receiver:
    """The docs' receiver on a loopback port, recording what each path took."""

    url: str
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refuse: dict[str, int] = field(default_factory=dict)
    """Path: how many more requests its handler fails (500), -1: all."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self, path: str, subject_prefix: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [
                e
                for p, e in self.received
                if p == path and str(e["subject"]).startswith(subject_prefix)
            ]


def start_receiver(secret: str) -> tuple[Receiver, ThreadingHTTPServer]:
    example = docs_receiver()
    example["SECRET"] = secret
    local = threading.local()
    box: list[Receiver] = []

    def handle(event: dict[str, Any]) -> None:
        receiver = box[0]
        with receiver.lock:
            left = receiver.refuse.get(local.path, 0)
            if left:
                receiver.refuse[local.path] = left - 1 if left > 0 else -1
                raise RuntimeError("refused by the test")
            receiver.received.append((local.path, event))

    example["handle"] = handle
    base: type[BaseHTTPRequestHandler] = example["Receiver"]

    class Routed(base):  # type: ignore[valid-type,misc]
        def do_POST(self) -> None:
            local.path = self.path
            super().do_POST()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Routed)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    receiver = Receiver(f"http://127.0.0.1:{httpd.server_address[1]}")
    box.append(receiver)
    return receiver, httpd


@dataclass
class Setup:
    server: RunningServer
    receiver: Receiver


def events_config(directory: Path, receiver: Receiver, secret: str, lease_secs: float = 3) -> Path:
    (directory / "hook-secret").write_text(secret + "\n")
    config = {
        "source": "https://registry.test",
        "retry_initial_secs": 0.1,
        "retry_max_secs": 0.5,
        "lease_secs": lease_secs,
        "endpoints": [
            {"name": "all", "url": f"{receiver.url}/all", "secret_file": "hook-secret"},
            {
                "name": "deletes",
                "url": f"{receiver.url}/deletes",
                "secret_file": "hook-secret",
                "types": ["io.cloudimg.tag.deleted"],
            },
            {
                "name": "doomed",
                "url": f"{receiver.url}/doomed",
                "secret_file": "hook-secret",
                "subjects": ["doomed-*"],
                "dead_letter_after_secs": 1,
            },
        ],
    }
    path = directory / "events.json"
    path.write_text(json.dumps(config))
    return path


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Setup]:
    secret = new_secret()
    receiver, httpd = start_receiver(secret)
    config = events_config(tmp_path_factory.mktemp("events"), receiver, secret)
    try:
        for server in serve_module(tmp_path_factory, backend, "--events-config", str(config)):
            yield Setup(server, receiver)
    finally:
        httpd.shutdown()


@pytest.fixture
def http(setup: Setup) -> Iterator[httpx.Client]:
    with setup.server.client() as client:
        yield client


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["type"]).removeprefix("io.cloudimg.") for e in events]


def wait_for(receiver: Receiver, path: str, prefix: str, count: int) -> list[dict[str, Any]]:
    wait_until(lambda: len(receiver.events(path, prefix)) >= count, f"{count} events at {path}")
    return receiver.events(path, prefix)


def test_every_write_path_delivers_its_event_in_order(
    setup: Setup, http: httpx.Client, repo: str
) -> None:
    first, second, disk = random_image(3000), random_image(3001), random_image(3002)
    base = f"/reg/{repo}/fedora"
    assert upload(http, f"{base}/v1", first, {"os": "fedora"}).status_code == 201
    assert upload_raw(http, f"{base}/v1", second).status_code == 201
    retag = {"digest": f"blake3:{blake3_hex(first)}"}
    assert http.post(f"{base}/v2/retag", json=retag).status_code == 201
    retag = {"digest": f"blake3:{blake3_hex(second)}"}
    assert http.post(f"{base}/v2/retag", json=retag).status_code == 201
    assert http.put(f"{base}/v2/immutable").status_code == 200
    assert http.delete(f"{base}/v2/immutable").status_code == 200
    assert http.delete(f"{base}/v2").status_code == 200
    push_blob(http, f"{repo}/fedora", EMPTY)
    push_blob(http, f"{repo}/fedora", disk)
    assert put_manifest(http, f"{repo}/fedora", "v3", artifact_manifest(disk)).status_code == 201
    expected = [
        ("tag.created", f"{repo}/fedora:v1"),
        ("tag.moved", f"{repo}/fedora:v1"),
        ("tag.created", f"{repo}/fedora:v2"),
        ("tag.retagged", f"{repo}/fedora:v2"),
        ("tag.immutability.set", f"{repo}/fedora:v2"),
        ("tag.immutability.released", f"{repo}/fedora:v2"),
        ("tag.deleted", f"{repo}/fedora:v2"),
        ("tag.created", f"{repo}/fedora:v3"),
    ]
    got = wait_for(setup.receiver, "/all", repo, len(expected))
    assert [(t, e["subject"]) for t, e in zip(_types(got), got, strict=True)] == expected
    assert [e["sequence"] for e in got] == sorted(e["sequence"] for e in got)
    created = got[0]
    assert created["specversion"] == "1.0"
    assert created["source"] == "https://registry.test"
    assert created["datacontenttype"] == "application/json"
    assert created["data"]["digest"] == f"blake3:{blake3_hex(first)}"
    assert created["data"]["format"] == "raw"
    assert created["data"]["size"] == 3000
    assert created["data"]["metadata"] == {"os": "fedora"}
    assert got[-1]["data"]["digest"] == f"blake3:{blake3_hex(disk)}"
    # The filtered endpoint took the delete alone; the pull answers the same events.
    deletes = wait_for(setup.receiver, "/deletes", repo, 1)
    assert [(e["type"], e["id"]) for e in deletes] == [(got[6]["type"], got[6]["id"])]
    pulled = http.get("/reg/_events", params={"after": got[0]["sequence"] - 1, "limit": 1000})
    mine = [e for e in pulled.json()["data"] if e["subject"].startswith(repo)]
    assert mine == got


def test_import_legacy_delivers_a_created_event(setup: Setup, repo: str, tmp_path: Path) -> None:
    source = tmp_path / "old"
    entry = source / repo / "ubuntu" / "2204"
    entry.mkdir(parents=True)
    (entry / "image.bin").write_bytes(random_image(2500))
    (entry / "meta.json").write_text('{"os": "ubuntu"}')
    root = str(setup.server.data_root)
    cli("import-legacy", "--data-root", root, "--from", str(source), check=0)
    [event] = wait_for(setup.receiver, "/all", repo, 1)
    assert (event["type"], event["subject"]) == ("io.cloudimg.tag.created", f"{repo}/ubuntu:2204")
    assert event["data"]["metadata"] == {"os": "ubuntu"}


def test_refused_writes_deliver_nothing(setup: Setup, http: httpx.Client, repo: str) -> None:
    path = f"/reg/{repo}/fedora/v1"
    assert upload(http, path, random_image(1000)).status_code == 201
    stale = upload_raw(http, path, random_image(1001), headers={"If-Match": '"blake3:00"'})
    assert_error(stale, 412, "FAILED_PRECONDITION")
    taken = upload_raw(http, path, random_image(1002), headers={"If-None-Match": "*"})
    assert_error(taken, 412, "FAILED_PRECONDITION")
    assert http.put(f"{path}/immutable").status_code == 200
    assert_error(http.delete(path), 409, "TAG_IMMUTABLE")
    assert_error(upload(http, path, random_image(1003)), 409, "TAG_IMMUTABLE")
    assert upload_raw(http, f"/reg/{repo}/fedora/marker", random_image(900)).status_code == 201
    # The marker's event comes after every earlier one (in order): nothing else came.
    wait_for(setup.receiver, "/all", f"{repo}/fedora:marker", 1)
    got = setup.receiver.events("/all", repo)
    assert _types(got) == ["tag.created", "tag.immutability.set", "tag.created"]


def test_an_endpoint_down_gets_its_events_after_retries(
    setup: Setup, http: httpx.Client, repo: str
) -> None:
    with setup.receiver.lock:
        setup.receiver.refuse["/all"] = 3
    assert upload_raw(http, f"/reg/{repo}/fedora/v1", random_image(1000)).status_code == 201
    assert upload_raw(http, f"/reg/{repo}/fedora/v1", random_image(1001)).status_code == 201
    got = wait_for(setup.receiver, "/all", repo, 2)
    assert _types(got) == ["tag.created", "tag.moved"]
    assert setup.receiver.refuse["/all"] == 0
    assert _metric(http, "failed_total", "all") >= 3
    assert _metric(http, "delivered_total", "all") >= 2
    metrics = http.get("/metrics").text
    assert re.search(r'^cloudimg_events_pending\{endpoint="deletes"\} \S+$', metrics, re.M)


def _metric(http: httpx.Client, name: str, endpoint: str) -> float:
    text = http.get("/metrics").text
    found = re.search(rf'^cloudimg_events_{name}\{{endpoint="{endpoint}"\}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def _dead_letters(setup: Setup) -> list[dict[str, Any]]:
    report = cli_json("events", "dead-letters", "--data-root", str(setup.server.data_root))
    letters: list[dict[str, Any]] = report["dead_letters"]
    return letters


def test_dead_letter_after_its_time_then_resent(setup: Setup, http: httpx.Client) -> None:
    repo = "doomed-" + secrets.token_hex(4)
    with setup.receiver.lock:
        setup.receiver.refuse["/doomed"] = -1
    assert upload_raw(http, f"/reg/{repo}/fedora/v1", random_image(1000)).status_code == 201
    # /metrics (cheap) says when; then the command lists it.
    wait_until(lambda: _metric(http, "dead_lettered_total", "doomed") >= 1, "a dead letter")
    [dead] = [d for d in _dead_letters(setup) if d["subject"] == f"{repo}/fedora:v1"]
    assert dead["endpoint"] == "doomed"
    assert dead["type"] == "io.cloudimg.tag.created"
    assert dead["attempts"] >= 1
    assert setup.receiver.events("/doomed", repo) == []
    with setup.receiver.lock:
        setup.receiver.refuse["/doomed"] = 0
    # The endpoint moved on: the next event comes, the dead letter does not.
    assert upload_raw(http, f"/reg/{repo}/fedora/v2", random_image(1001)).status_code == 201
    [later] = wait_for(setup.receiver, "/doomed", repo, 1)
    assert later["subject"] == f"{repo}/fedora:v2"
    root = str(setup.server.data_root)
    missing = cli("events", "resend", "--data-root", root, "999999", check=1)
    assert "999999" in missing.stderr
    cli("events", "resend", "--data-root", root, str(dead["id"]), check=0)
    got = wait_for(setup.receiver, "/doomed", repo, 2)
    assert got[1]["id"] == dead["event_id"]
    wait_until(lambda: not _dead_letters(setup), "the resent dead letter dropped")


def test_pull_pages_and_long_polls(setup: Setup, http: httpx.Client, repo: str) -> None:
    for n in range(3):
        path = f"/reg/{repo}/fedora/v{n}"
        assert upload_raw(http, path, random_image(1000 + n)).status_code == 201
    latest = http.get("/reg/_events", params={"after": 0, "limit": 1000}).json()
    mine = [e for e in latest["data"] if e["subject"].startswith(repo)]
    assert len(mine) == 3
    start = mine[0]["sequence"] - 1
    page = http.get("/reg/_events", params={"after": start, "limit": 2}).json()
    assert [e["id"] for e in page["data"]] == [e["id"] for e in mine[:2]]
    assert page["next"] == mine[1]["sequence"]
    rest = http.get("/reg/_events", params={"after": page["next"], "limit": 1}).json()
    assert rest["data"][0]["id"] == mine[2]["id"]
    newest = http.get("/reg/_events", params={"after": 0, "limit": 1000}).json()["next"]
    empty = http.get("/reg/_events", params={"after": newest}).json()
    assert empty == {"success": True, "data": [], "next": newest}
    answers: list[dict[str, Any]] = []

    def long_poll() -> None:
        with setup.server.client() as other:
            params = {"after": newest, "wait": 60}
            answers.append(other.get("/reg/_events", params=params).json())

    poller = threading.Thread(target=long_poll)
    poller.start()
    assert upload_raw(http, f"/reg/{repo}/fedora/late", random_image(999)).status_code == 201
    poller.join()
    [answer] = answers
    assert [e["subject"] for e in answer["data"]] == [f"{repo}/fedora:late"]
    for bad in ({"after": -1}, {"limit": 0}, {"limit": 1001}, {"wait": 61}):
        assert_error(http.get("/reg/_events", params=bad), 400, "INVALID_ARGUMENT")


def test_a_bad_events_config_stops_serve_before_it_listens(tmp_path: Path) -> None:
    config = tmp_path / "events.json"
    config.write_text(json.dumps({"endpoints": [{"name": "x", "url": "ftp://h/"}]}))
    done = cli("serve", "--data-root", str(tmp_path / "data"), "--events-config", str(config))
    assert done.returncode == 2
    assert "--events-config" in done.stderr
    assert "url must be http(s)" in done.stderr
    assert not (tmp_path / "data").exists()


def test_several_workers_deliver_through_one_of_them(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """--workers 2: each worker runs a deliverer, the lease lets one send; every event
    arrives, and exactly once (two senders would repeat them)."""
    secret = new_secret()
    receiver, httpd = start_receiver(secret)
    try:
        # A long lease: no hand-over (which may repeat an event) on a busy machine.
        config = events_config(tmp_path, receiver, secret, lease_secs=60)
        running = server_factory("--workers", "2", "--events-config", str(config))
        with running.client() as http:
            for n in range(6):
                response = upload_raw(http, f"/reg/vms/fedora/t{n}", random_image(1000 + n))
                assert response.status_code == 201
        got = wait_for(receiver, "/all", "vms/", 6)
        assert sorted(e["subject"] for e in got) == [f"vms/fedora:t{n}" for n in range(6)]
        assert len({e["id"] for e in got}) == len(got)
    finally:
        httpd.shutdown()
