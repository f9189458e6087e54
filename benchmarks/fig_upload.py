"""Issue 12, targets 1 and 2 (upload): cloudimg's uploads against three references.

Every round uploads the same source (stamped anew, so every upload is a new blob) once
to each side, in an order that rotates from round to round, each from the same state
(dirty pages synced, free memory warmed: ``harness.before_write``):

- cloudimg ``POST`` (multipart) and, when the server has it, ``PUT`` (raw body), with the
  server pinned to one core and the client on the other, and unpinned;
- the bare ASGI app (``bare_app.py``) pinned the same way: the reference of target 1;
- nginx WebDAV ``PUT`` and an fsync of the written file, unpinned: target 1;
- distribution's monolithic blob upload (``POST`` then ``PUT ?digest=``), unpinned:
  target 2.

A ratio is cloudimg's throughput over the reference's in the same round; the figure is
the median of those per-round ratios.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clients import Response, call, exchange, upload_multipart, upload_raw
from harness import (
    GiB,
    Row,
    before_write,
    cpu_seconds,
    log,
    median,
    pinned,
    rate_text,
    ratio_row,
    skipped,
    stamp_source,
    warm_page_cache,
)
from servers import Server, raw_put_supported

REPO, IMAGE = "bench", "disk"
PINNED_TARGET = 0.9
NGINX_TARGET = 0.7
REGISTRY_TARGET = 2.0
SERVER_CPU, CLIENT_CPU = 1, 0

_STAGE_METRIC = re.compile(
    r'^cloudimg_upload_stage_cpu_seconds_total\{[^}]*stage="([^"]+)"[^}]*\}\s+(\S+)', re.M
)


def stage_cpu(server: Server) -> dict[str, float]:
    """The upload helper's per-stage CPU counters in ``/metrics`` (empty when absent)."""
    status, body = call(server.port, "GET", "/metrics")
    if status != 200:
        return {}
    totals: dict[str, float] = {}
    for stage, value in _STAGE_METRIC.findall(body.decode(errors="replace")):
        totals[stage] = totals.get(stage, 0.0) + float(value)
    return totals


@dataclass
class Side:
    """One way of uploading the source: who receives it, how, pinned or not."""

    name: str
    server: Server
    send: Callable[[Path, str], Response]
    pinned: bool
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)

    def rate(self, size: int) -> float:
        return size / median(self.seconds)

    def cpu_per_gib(self, size: int) -> float:
        return median(self.cpu) * GiB / size


@dataclass
class Uploads:
    """Everything the upload rounds produced, for the rows and for later figures."""

    size: int
    sides: dict[str, Side]
    last_tag: str
    raw_put: bool
    registry_digest: str | None


def _expect(response: Response, status: int, what: str) -> Response:
    if response.status != status:
        raise RuntimeError(f"{what} answered {response.status}: {response.body[:500]!r}")
    return response


def _cloudimg_post(server: Server) -> Callable[[Path, str], Response]:
    def send(source: Path, tag: str) -> Response:
        path = f"/reg/{REPO}/{IMAGE}/{tag}"
        return _expect(upload_multipart(server.port, path, source, {"bench": tag}), 201, path)

    return send


def _cloudimg_put(server: Server) -> Callable[[Path, str], Response]:
    def send(source: Path, tag: str) -> Response:
        path = f"/reg/{REPO}/{IMAGE}/{tag}"
        headers = {"Cloudimg-Meta": json.dumps({"bench": tag})}
        return _expect(upload_raw(server.port, path, source, headers), 201, f"PUT {path}")

    return send


def _bare_put(server: Server) -> Callable[[Path, str], Response]:
    def send(source: Path, _tag: str) -> Response:
        return _expect(upload_raw(server.port, "/upload", source), 201, "bare app PUT")

    return send


def _nginx_put(server: Server) -> Callable[[Path, str], Response]:
    """WebDAV PUT, then fsync of the file nginx wrote (the issue's table ran ``sync``)."""

    def send(source: Path, _tag: str) -> Response:
        response = _expect(upload_raw(server.port, "/dav/upload.img", source), 201, "nginx PUT")
        started = time.perf_counter()
        fd = os.open(server.root / "dav" / "upload.img", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        response.seconds += time.perf_counter() - started
        return response

    return send


def _registry_put(server: Server, digests: dict[str, str]) -> Callable[[Path, str], Response]:
    """distribution's monolithic upload: POST opens a session, PUT ?digest= carries it all."""

    def send(source: Path, tag: str) -> Response:
        opened = _expect(
            exchange(server.port, "POST", f"/v2/{REPO}/{IMAGE}/blobs/uploads/"),
            202,
            "registry POST",
        )
        location = re.sub(r"^https?://[^/]+", "", opened.headers["location"])
        separator = "&" if "?" in location else "?"
        put = upload_raw(server.port, f"{location}{separator}digest={digests[tag]}", source)
        _expect(put, 201, "registry PUT")
        put.seconds += opened.seconds
        return put

    return send


def _sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()


def run_uploads(
    cloudimg: Server,
    bare: Server | None,
    nginx: Server | None,
    registry: Server | None,
    source: Path,
    workdir: Path,
    rounds: int,
    heat: bool,
) -> Uploads:
    size = source.stat().st_size
    raw_put = _raw_put(cloudimg)
    registry_digests: dict[str, str] = {}
    sides: dict[str, Side] = {}

    def add(name: str, server: Server | None, send: Callable[..., Response], pin: bool) -> None:
        if server is not None:
            sides[name] = Side(name, server, send, pin)

    for pin in (True, False):
        suffix = "pinned" if pin else "unpinned"
        add(f"post_{suffix}", cloudimg, _cloudimg_post(cloudimg), pin)
        if raw_put:
            add(f"put_{suffix}", cloudimg, _cloudimg_put(cloudimg), pin)
    add("bare_pinned", bare, _bare_put(bare) if bare else _none, True)
    add("nginx", nginx, _nginx_put(nginx) if nginx else _none, False)
    add(
        "registry",
        registry,
        _registry_put(registry, registry_digests) if registry else _none,
        False,
    )
    names = list(sides)
    last_tag = ""
    warm_page_cache(source)
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            side = sides[name]
            tag = f"r{index}-{name.replace('_', '-')}"
            stamp_source(source, tag)
            if name == "registry":
                registry_digests[tag] = _sha256_of(source)
            warm_page_cache(source)
            before_write(workdir, size, heat)
            _time_one(side, source, tag)
            if side.server is cloudimg and name.startswith("post"):
                last_tag = tag
            _tidy(side, cloudimg, tag)
        log(
            f"  round {index + 1}/{rounds}: "
            + ", ".join(f"{n} {rate_text(size / sides[n].seconds[-1])}" for n in names)
        )
    registry_digest = registry_digests.get(f"r{rounds - 1}-registry")
    return Uploads(size, sides, last_tag, raw_put, registry_digest)


def _none(_source: Path, _tag: str) -> Response:
    raise AssertionError("no server")


def _raw_put(cloudimg: Server) -> bool:
    supported = raw_put_supported(cloudimg)
    log(f"  raw PUT route: {'yes' if supported else 'no (405): its rows are skipped'}")
    return supported


def _time_one(side: Side, source: Path, tag: str) -> None:
    stages_before = stage_cpu(side.server) if side.server.name == "cloudimg" else {}
    pids = side.server.pids
    cpu_before = cpu_seconds(pids)
    if side.pinned:
        with pinned(pids, SERVER_CPU, CLIENT_CPU):
            response = side.send(source, tag)
    else:
        response = side.send(source, tag)
    side.cpu.append(cpu_seconds(pids) - cpu_before)
    side.seconds.append(response.seconds)
    if stages_before:
        for stage, value in stage_cpu(side.server).items():
            side.stages[stage] = side.stages.get(stage, 0.0) + value - stages_before.get(stage, 0)


def _tidy(side: Side, cloudimg: Server, tag: str) -> None:
    """Drop what an upload left, except cloudimg's POSTs (the downloads use the last)."""
    if side.server is cloudimg and not side.name.startswith("post"):
        call(cloudimg.port, "DELETE", f"/reg/{REPO}/{IMAGE}/{tag}?purge=history")
    elif side.name == "bare_pinned":
        for leftover in side.server.root.iterdir():
            leftover.unlink()
    elif side.name == "nginx":
        (side.server.root / "dav" / "upload.img").unlink(missing_ok=True)


def _per_round(app: Side, ref: Side) -> list[float]:
    return [ref_s / app_s for app_s, ref_s in zip(app.seconds, ref.seconds, strict=True)]


def _cpu_text(size: int, app: Side, ref: Side) -> str:
    return f"{app.cpu_per_gib(size):.2f} / {ref.cpu_per_gib(size):.2f}"


def upload_rows(up: Uploads, reasons: dict[str, str]) -> list[Row]:
    """Rows 1a, 1b, 2a for each route; stage CPU rows when the server counts them."""
    rows: list[Row] = []
    size, sides = up.size, up.sides
    checks = (
        ("1", "pinned", "bare_pinned", "bare ASGI app (pinned)", PINNED_TARGET),
        ("1", "unpinned", "nginx", "nginx PUT + fsync", NGINX_TARGET),
        ("2", "unpinned", "registry", "distribution 2.8", REGISTRY_TARGET),
    )
    for number, mode, ref_name, ref_label, target in checks:
        for route in ("post", "put"):
            key = f"upload_{route}_{mode}_vs_{ref_name.split('_')[0]}"
            label = f"{number} upload {route.upper()} {mode}, vs {ref_label}"
            bound = f">= {target:g}x"
            app = sides.get(f"{route}_{mode}")
            ref = sides.get(ref_name)
            if app is None:
                rows.append(skipped(key, label, bound, "server has no raw PUT route"))
                continue
            if ref is None:
                rows.append(skipped(key, label, bound, reasons.get(ref_name, "no reference")))
                continue
            rows.append(
                ratio_row(
                    key,
                    label,
                    rate_text(app.rate(size)),
                    f"{rate_text(ref.rate(size))}",
                    _per_round(app, ref),
                    minimum=target,
                    cpu=_cpu_text(size, app, ref),
                    details={
                        "app_seconds": app.seconds,
                        "ref_seconds": ref.seconds,
                        "app_cpu": app.cpu,
                        "ref_cpu": ref.cpu,
                        "bytes": size,
                    },
                )
            )
    if not any(side.stages for side in sides.values()):
        rows.append(
            Row("stage_cpu", "1 upload stage CPU s/GiB", "not in this server's /metrics", info=True)
        )
    for name, side in sides.items():
        if side.stages:
            uploads = len(side.seconds)
            text = ", ".join(
                f"{stage} {seconds / uploads * GiB / size:.2f}"
                for stage, seconds in sorted(side.stages.items())
            )
            rows.append(
                Row(f"stage_cpu_{name}", f"1 upload stage CPU s/GiB, {name}", text, info=True)
            )
    return rows
