"""Issue 12, target 2 (memory): peak RSS of a fresh server while it receives a large upload.

The server is started for this figure alone, so its VmHWM covers only startup and these
uploads; VmRSS is also sampled every 50 ms during each upload. One row per upload route.
"""

from __future__ import annotations

import json
from pathlib import Path

from clients import upload_multipart, upload_raw
from fig_upload import IMAGE, REPO
from harness import (
    Row,
    RssSampler,
    before_write,
    human_size,
    log,
    rate_text,
    rss_kib,
    stamp_source,
    warm_page_cache,
)
from servers import Server

RSS_LIMIT_MIB = 150.0


def run_rss(cloudimg: Server, source: Path, workdir: Path, heat: bool, raw_put: bool) -> list[Row]:
    size = source.stat().st_size
    pids = cloudimg.pids
    idle = rss_kib(pids) / 1024
    rows = []
    for route in ("post", "put"):
        key = f"rss_{route}"
        label = f"2 peak RSS during a {human_size(size)} {route.upper()} upload"
        target = f"< {RSS_LIMIT_MIB:g} MiB"
        if route == "put" and not raw_put:
            rows.append(Row(key, label, "skipped: server has no raw PUT route", target=target))
            continue
        tag = f"rss-{route}"
        stamp_source(source, tag)
        warm_page_cache(source)
        before_write(workdir, size, heat)
        path = f"/reg/{REPO}/{IMAGE}/{tag}"
        with RssSampler(pids) as sampler:
            if route == "post":
                response = upload_multipart(cloudimg.port, path, source, {"bench": tag})
            else:
                meta = {"Cloudimg-Meta": json.dumps({"bench": tag})}
                response = upload_raw(cloudimg.port, path, source, meta)
        if response.status != 201:
            raise RuntimeError(f"{route} upload answered {response.status}: {response.body!r}")
        hwm = rss_kib(pids, "VmHWM") / 1024
        peak = max(sampler.peak_kib / 1024, hwm)
        log(
            f"  RSS, {route}: idle {idle:.0f} MiB, sampled peak {sampler.peak_kib / 1024:.0f} MiB,"
            f" VmHWM {hwm:.0f} MiB; upload {rate_text(size / response.seconds)}"
        )
        rows.append(
            Row(
                key,
                label,
                f"{peak:.0f} MiB",
                f"idle {idle:.0f} MiB",
                peak / idle,
                target,
                peak < RSS_LIMIT_MIB,
                details={
                    "sampled_peak_mib": sampler.peak_kib / 1024,
                    "vmhwm_mib": hwm,
                    "samples": sampler.samples,
                    "upload_seconds": response.seconds,
                },
            )
        )
    return rows
