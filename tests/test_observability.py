"""/metrics and the access log, against real ``cloudimg serve`` processes.

Byte counters are checked against the exact bytes that crossed the socket (the
multipart body this test builds, the image it downloads, a range of it); the gc
figures against a real ``cloudimg gc`` run in another process on the same data root;
the logs by parsing every line the server wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudimg.logs import JsonFormatter, TextFormatter, redact, request_id_var
from tests.conftest import RunningServer, start_server, upload, upload_raw
from tests.maintenance_support import cli
from tests.support import random_image, upload_body, wait_until

ROUTE = "/reg/{repo}/{image}/{tag}"
SECRET = "secret-token-xyz"
_POLL_DEADLINE = 30.0


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape(dict[str, float]):
    """``/metrics`` parsed: unlabelled samples by name, every sample in ``labelled``."""

    labelled: Samples


def scrape(http: httpx.Client) -> Scrape:
    """``/metrics``, parsed with prometheus_client's own parser (a format error fails)."""
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    result = Scrape()
    result.labelled = {}
    for family in text_string_to_metric_families(response.text):
        for name, labels, value, *_ in family.samples:
            result.labelled[(name, frozenset(labels.items()))] = value
            if not labels:
                result[name] = value
    return result


def sample(samples: Scrape, name: str, **labels: str) -> float:
    """The value of ``name`` with exactly ``labels`` (0 when the series does not exist yet)."""
    return samples.labelled.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "data", "--log-format", "json")
    yield running
    running.stop()


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def access_lines(server: RunningServer) -> list[dict[str, object]]:
    """Every access record in the log; every line of the log must be one JSON object."""
    records = []
    for line in server.log().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)  # a line that is not JSON fails here
        assert isinstance(record, dict)
        if record.get("logger") == "cloudimg.access":
            records.append(record)
    return records


# -- metrics ------------------------------------------------------------------------


def test_upload_counts_the_exact_body_bytes_received(http: httpx.Client) -> None:
    data = secrets.token_bytes(300_000)
    body, content_type = upload_body(data, {"os": "test"})
    before = scrape(http)
    response = http.post("/reg/obs/img/v1", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 201
    after = scrape(http)
    received = "cloudimg_http_received_bytes_total"
    assert sample(after, received, route=ROUTE) - sample(before, received, route=ROUTE) == len(body)
    requests = "cloudimg_http_requests_total"
    labels = {"method": "POST", "route": ROUTE, "status": "201"}
    assert sample(after, requests, **labels) - sample(before, requests, **labels) == 1
    histogram = "cloudimg_http_request_duration_seconds_count"
    assert sample(after, histogram, method="POST", route=ROUTE) == 1


@pytest.mark.parametrize("how", ["put", "post"])
def test_each_upload_stage_counts_its_bytes_and_cpu(http: httpx.Client, how: str) -> None:
    data = random_image(9 * 1024 * 1024 + 123)  # over two batches of the staging writer
    before = scrape(http)
    if how == "put":
        response = upload_raw(http, "/reg/obs/img/v1", data, {"os": "test"})
    else:
        response = upload(http, "/reg/obs/img/v1", data)
    assert response.status_code == 201, response.text
    after = scrape(http)
    for stage in ("write", "blake3", "sha256", "inspect", "receive"):
        taken = "cloudimg_upload_stage_bytes_total"
        spent = "cloudimg_upload_stage_cpu_seconds_total"
        assert sample(after, taken, stage=stage) - sample(before, taken, stage=stage) == len(data)
        assert sample(after, spent, stage=stage) > sample(before, spent, stage=stage), stage


def test_downloads_count_the_exact_body_bytes_sent(http: httpx.Client) -> None:
    data = secrets.token_bytes(1_500_000)
    assert upload(http, "/reg/obs/img/v1", data).status_code == 201
    sent = "cloudimg_http_sent_bytes_total"
    before = sample(scrape(http), sent, route=ROUTE)
    whole = http.get("/reg/obs/img/v1")
    assert whole.content == data
    part = http.get("/reg/obs/img/v1", headers={"Range": "bytes=1000-200999"})
    assert part.status_code == 206
    head = http.head("/reg/obs/img/v1")
    assert head.status_code == 200
    after = scrape(http)
    assert sample(after, sent, route=ROUTE) - before == len(data) + 200_000
    requests = "cloudimg_http_requests_total"
    assert sample(after, requests, method="GET", route=ROUTE, status="200") == 1
    assert sample(after, requests, method="GET", route=ROUTE, status="206") == 1
    assert sample(after, requests, method="HEAD", route=ROUTE, status="200") == 1


def test_unknown_paths_share_one_route_label(http: httpx.Client) -> None:
    for path in ("/nothing-here", "/reg/a/b/c/d/e"):
        assert http.get(path).status_code == 404
    after = scrape(http)
    requests = "cloudimg_http_requests_total"
    assert sample(after, requests, method="GET", route="unmatched", status="404") == 2
    assert not any("nothing-here" in str(key) for key in after.labelled)


def test_storage_figures_show_deduplication(http: httpx.Client) -> None:
    data = secrets.token_bytes(250_000)
    other = secrets.token_bytes(1_000)
    for tag in ("v1", "v2", "v3"):
        assert upload(http, f"/reg/obs/img/{tag}", data).status_code == 201
    assert upload(http, "/reg/obs/other/v1", other).status_code == 201
    figures = scrape(http)
    assert figures["cloudimg_catalog_up"] == 1
    assert figures["cloudimg_blobs_stored"] == 2
    assert figures["cloudimg_tags"] == 4
    assert figures["cloudimg_stored_bytes"] == len(data) + len(other)
    assert figures["cloudimg_logical_bytes"] == 3 * len(data) + len(other)
    assert figures["cloudimg_deduplicated_bytes_saved"] == 2 * len(data)
    assert http.delete("/reg/obs/img/v1").status_code == 200
    assert scrape(http)["cloudimg_deduplicated_bytes_saved"] == len(data)


def test_uploads_in_flight(http: httpx.Client, server: RunningServer) -> None:
    data = secrets.token_bytes(64 * 1024)
    body, content_type = upload_body(data, {})
    half = len(body) // 2
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[:half]
        release.wait(timeout=_POLL_DEADLINE)
        yield body[half:]

    result: list[int] = []

    def post() -> None:
        with server.client() as other:
            response = other.post(
                "/reg/obs/img/slow", content=slow_body(), headers={"Content-Type": content_type}
            )
            result.append(response.status_code)

    uploader = threading.Thread(target=post)
    uploader.start()
    try:
        wait_until(lambda: scrape(http)["cloudimg_uploads_in_flight"] == 1, "one upload in flight")
    finally:
        release.set()
        uploader.join()
    assert result == [201]
    assert scrape(http)["cloudimg_uploads_in_flight"] == 0


def test_downloads_in_flight(http: httpx.Client, server: RunningServer) -> None:
    data = secrets.token_bytes(32 * 1024 * 1024)  # more than the socket buffers hold
    assert upload(http, "/reg/obs/img/big", data).status_code == 201
    with server.client() as other, other.stream("GET", "/reg/obs/img/big") as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()  # kept: a dropped iterator closes the response
        assert next(chunks)
        wait_until(
            lambda: scrape(http)["cloudimg_downloads_in_flight"] == 1, "one download in flight"
        )
    wait_until(lambda: scrape(http)["cloudimg_downloads_in_flight"] == 0, "no download in flight")


def test_gc_runs_in_another_process_reach_metrics(
    http: httpx.Client, server: RunningServer
) -> None:
    figures = scrape(http)
    assert figures["cloudimg_gc_runs_total"] == 0
    assert figures["cloudimg_gc_last_run_timestamp_seconds"] == 0
    # Debris of a crashed upload: a staging file nobody holds.
    debris = server.data_root / "staging" / "crashed-upload"
    debris.write_bytes(b"x" * 12_345)
    for _ in range(2):
        cli("gc", "--grace", "0", "--data-root", str(server.data_root), check=0)
    figures = scrape(http)
    assert figures["cloudimg_gc_runs_total"] == 2
    assert figures["cloudimg_gc_failed_runs_total"] == 0
    assert figures["cloudimg_gc_freed_bytes_total"] == 12_345
    assert figures["cloudimg_gc_last_run_freed_bytes"] == 0
    assert figures["cloudimg_gc_last_run_success"] == 1
    assert figures["cloudimg_gc_last_run_timestamp_seconds"] > 0
    assert not debris.exists()


def test_gc_dry_run_is_not_counted(http: httpx.Client, server: RunningServer) -> None:
    cli("gc", "--dry-run", "--data-root", str(server.data_root), check=0)
    assert scrape(http)["cloudimg_gc_runs_total"] == 0


def test_metrics_stay_out_of_the_openapi_document(http: httpx.Client) -> None:
    assert "/metrics" not in http.get("/docs/openapi.json").json()["paths"]


# -- logs ---------------------------------------------------------------------------


def test_one_json_access_line_per_request_with_its_fields(
    http: httpx.Client, server: RunningServer
) -> None:
    data = secrets.token_bytes(10_000)
    body, content_type = upload_body(data, {"k": "v"})
    posted = http.post(
        "/reg/logs/img/v1",
        content=body,
        headers={"Content-Type": content_type, "X-Request-ID": "upload-0001"},
    )
    assert posted.status_code == 201
    assert posted.headers["x-request-id"] == "upload-0001"
    got = http.get("/reg/logs/img/v1", headers={"X-Request-ID": "download-0002"})
    assert got.status_code == 200
    missing = http.get("/reg/logs/img/nope", headers={"X-Request-ID": "bad id with spaces"})
    assert missing.status_code == 404
    generated = missing.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)

    # The access line is written after the response went out: wait for the last one (by
    # its id: the module's server has logged earlier tests' requests too).
    wait_until(
        lambda: any(line["request_id"] == generated for line in access_lines(server)),
        "the 404's access line is written",
    )
    lines = access_lines(server)
    by_id = {line["request_id"]: line for line in lines}
    assert len(by_id) == len(lines), "one access line per request, each with its own id"
    up = by_id["upload-0001"]
    assert up["method"] == "POST"
    assert up["path"] == "/reg/logs/img/v1"
    assert up["route"] == ROUTE
    assert up["status"] == 201
    assert up["bytes_received"] == len(body)
    assert isinstance(up["duration_ms"], float | int)
    assert up["level"] == "info"
    down = by_id["download-0002"]
    assert (down["status"], down["bytes_sent"], down["bytes_received"]) == (200, len(data), 0)
    assert by_id[generated]["status"] == 404


def test_no_token_in_the_log(tmp_path: Path) -> None:
    tokens = tmp_path / "write-tokens"
    tokens.write_text("another-token-0123456789\n")
    server = start_server(
        tmp_path / "data",
        "--write-token-file",
        str(tokens),
        env={"CLOUDIMG_LOG_FORMAT": "json"},  # the variable works as the flag does
    )
    try:
        auth = {"Authorization": f"Bearer {SECRET}", "X-Request-ID": "with-token"}
        with server.client() as http:
            assert http.get("/reg", headers=auth).status_code == 200
            assert http.get("/reg/nope", headers=auth).status_code == 404
            files = {"meta": (None, "{}"), "img": ("image.bin", b"bytes")}
            refused = http.post("/reg/logs/img/v1", files=files, headers=auth)
            assert refused.status_code == 401
            assert http.delete("/reg/logs/img/v1", headers=auth).status_code == 401
            basic = {"Authorization": "Basic c2VjcmV0LXRva2VuLXh5ejpwdw=="}
            assert http.get("/reg", headers=basic).status_code == 200
    finally:
        server.stop()
    log = server.log()
    assert access_lines(server), "the server wrote access lines"
    assert SECRET not in log
    assert "c2VjcmV0LXRva2VuLXh5ejpwdw" not in log


def test_text_log_format(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--log-format", "text")
    try:
        with server.client() as http:
            assert http.get("/reg", headers={"X-Request-ID": "text-0001"}).status_code == 200
    finally:
        server.stop()
    line = next(line for line in server.log().splitlines() if "request_id=text-0001" in line)
    assert "cloudimg.access" in line
    assert "status=200" in line
    assert "route=/reg" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_formatters_mask_credentials_and_carry_the_request_id() -> None:
    assert redact(f"Authorization: Bearer {SECRET}") == "Authorization: Bearer [REDACTED]"
    assert SECRET not in redact(f"basic {SECRET}, more")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "got %s", (SECRET,), None)
    token = request_id_var.set("rid-1")
    try:
        entry = json.loads(JsonFormatter().format(record))
        text = TextFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert entry["request_id"] == "rid-1"
    assert entry["message"] == f"got {SECRET}"  # a bare value is not a credential
    with_bearer = logging.LogRecord("x", logging.ERROR, __file__, 1, "Bearer %s", (SECRET,), None)
    assert SECRET not in JsonFormatter().format(with_bearer)
    assert "request_id=rid-1" in text


def test_multiprocess_directory_is_emptied_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_4242.db").write_bytes(b"stale")
    server = start_server(tmp_path / "data", env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    try:
        assert not (directory / "counter_4242.db").exists()
        with server.client() as http:
            assert upload(http, "/reg/mproc/img/v1", b"abc").status_code == 201
            figures = scrape(http)
        requests = "cloudimg_http_requests_total"
        assert sample(figures, requests, method="POST", route=ROUTE, status="201") == 1
        assert list(directory.glob("*.db")), "the live figures went through the directory"
    finally:
        server.stop()
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None


def test_workers_sum_their_figures_through_the_multiprocess_directory(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    server = start_server(
        tmp_path / "data",
        "--workers",
        "2",
        "--log-format",
        "json",
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    try:
        with server.client() as http:
            for _ in range(20):  # new connections: the kernel spreads them over the workers
                assert httpx.get(f"{server.base_url}/healthz", timeout=30).status_code == 200
            requests = "cloudimg_http_requests_total"
            for _ in range(4):  # whichever worker answers, it reports every worker's count
                figures = scrape(http)
                assert sample(figures, requests, method="GET", route="/healthz", status="200") >= 20
    finally:
        server.stop()
    assert len({p.name.rsplit("_", 1)[-1] for p in directory.glob("counter_*.db")}) >= 1
    assert access_lines(server), "workers log as JSON too"
