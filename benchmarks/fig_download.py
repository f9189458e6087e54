"""Issue 12, target 2 (download): cloudimg's GET against nginx ``sendfile`` and distribution.

The same blob file is served by cloudimg (whole, and a range of its middle 3/4) and by
nginx (``/b/<hex>``, the blob file itself, with ``sendfile on``); distribution serves a
blob of the same size it received in the upload rounds. After one untimed round (a warm
page cache for everyone), every round times each kind once, order rotating; a ratio is
the reference's time over cloudimg's in the same round, the figure their median.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from clients import Response, call, download
from fig_upload import IMAGE, REPO
from harness import (
    GiB,
    Row,
    cpu_seconds,
    human_size,
    log,
    median,
    rate_text,
    ratio_row,
    skipped,
    warm_page_cache,
)
from servers import Server, blob_file

WHOLE_NGINX_TARGET = 1.2
WHOLE_REGISTRY_TARGET = 1.3


@dataclass
class Case:
    """One kind of timed GET: where it goes, what it asks for, what it must get."""

    server: Server
    path: str
    headers: dict[str, str]
    status: int
    length: int
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def run(self, record: bool) -> None:
        pids = self.server.pids
        cpu_before = cpu_seconds(pids)
        response: Response = download(self.server.port, self.path, self.headers)
        cpu = cpu_seconds(pids) - cpu_before
        if (response.status, response.body_length) != (self.status, self.length):
            raise RuntimeError(
                f"GET {self.path} {self.headers}: got {response.status} with "
                f"{response.body_length} bytes, expected {self.status} with {self.length}"
            )
        if record:
            self.seconds.append(response.seconds)
            self.cpu.append(cpu)

    def cpu_per_gib(self) -> float:
        return median(self.cpu) * GiB / self.length


def tag_meta(cloudimg: Server, tag: str) -> dict[str, str]:
    status, body = call(cloudimg.port, "GET", f"/reg/{REPO}/{IMAGE}/{tag}/meta")
    if status != 200:
        raise RuntimeError(f"meta of {tag} answered {status}")
    return dict(json.loads(body))


def run_downloads(
    cloudimg: Server,
    tag: str,
    nginx: Server | None,
    registry: Server | None,
    registry_digest: str | None,
    rounds: int,
    reasons: dict[str, str],
) -> list[Row]:
    meta = tag_meta(cloudimg, tag)
    size = int(meta["size"])
    blake3_hex = str(meta["digest"]).removeprefix("blake3:")
    first, last = size // 8, size - size // 8 - 1
    ranged = {"Range": f"bytes={first}-{last}"}
    part = last - first + 1
    app_path = f"/reg/{REPO}/{IMAGE}/{tag}"
    cases = {
        "app_whole": Case(cloudimg, app_path, {}, 200, size),
        "app_range": Case(cloudimg, app_path, ranged, 206, part),
    }
    warm_page_cache(blob_file(cloudimg.root, blake3_hex))
    if nginx is not None:
        cases["nginx_whole"] = Case(nginx, f"/b/{blake3_hex}", {}, 200, size)
        cases["nginx_range"] = Case(nginx, f"/b/{blake3_hex}", ranged, 206, part)
    if registry is not None and registry_digest is not None:
        path = f"/v2/{REPO}/{IMAGE}/blobs/{registry_digest}"
        cases["registry_whole"] = Case(registry, path, {}, 200, size)
    names = list(cases)
    for index in range(rounds + 1):  # round 0 is a warm-up
        for name in names[index % len(names) :] + names[: index % len(names)]:
            cases[name].run(record=index > 0)
    log(
        "  downloads: "
        + ", ".join(
            f"{name} {rate_text(case.length / median(case.seconds))}"
            f" ({case.cpu_per_gib():.2f} CPU s/GiB)"
            for name, case in cases.items()
        )
    )
    checks = (
        ("download_whole_vs_registry", f"2 download {human_size(size)} whole, vs distribution 2.8",
         "app_whole", "registry_whole", WHOLE_REGISTRY_TARGET, "registry"),
        ("download_whole_vs_nginx", f"2 download {human_size(size)} whole, vs nginx sendfile",
         "app_whole", "nginx_whole", WHOLE_NGINX_TARGET, "nginx"),
        ("download_range_vs_nginx", f"2 download range bytes={first}-{last}, vs nginx sendfile",
         "app_range", "nginx_range", WHOLE_NGINX_TARGET, "nginx"),
    )  # fmt: skip
    rows = []
    for key, label, app_name, ref_name, target, reference in checks:
        app, ref = cases[app_name], cases.get(ref_name)
        if ref is None:
            rows.append(skipped(key, label, f">= {target:g}x", reasons.get(reference, "absent")))
            continue
        ratios = [r / a for a, r in zip(app.seconds, ref.seconds, strict=True)]
        rows.append(
            ratio_row(
                key,
                label,
                rate_text(app.length / median(app.seconds)),
                rate_text(ref.length / median(ref.seconds)),
                ratios,
                minimum=target,
                cpu=f"{app.cpu_per_gib():.2f} / {ref.cpu_per_gib():.2f}",
                details={"app_seconds": app.seconds, "ref_seconds": ref.seconds},
            )
        )
    return rows
