#!/usr/bin/env python3
"""cloudimg benchmark: every target of issue 12, each PASS or FAIL, in one run.

Absolute numbers drift from machine to machine and from minute to minute, so every
figure is a ratio against a reference measured in the same run, on the same file
system, with the same client, as the median of per-round ratios over interleaved
rounds (``benchmarks/README.md`` has the details; ``docs/performance.md`` the results):

1. upload vs a bare Granian ASGI app doing the same work (pinned, >= 0.9x) and vs
   nginx WebDAV PUT + fsync (>= 0.7x), both upload routes (``fig_upload``);
2. upload vs distribution 2.8 (>= 2x), download vs distribution (>= 1.3x) and vs nginx
   sendfile, whole and ranged (>= 1.2x) (``fig_download``); peak RSS during a 4 GiB
   upload (< 150 MiB, ``fig_rss``); what 200 slow downloads cost (``fig_latency``);
3. listing and ``/meta`` p99 under 8 downloads (< 50 ms) and 200 slow ones (< 250 ms);
   probes and listings, each on a new connection, while 1,000 idle connections and 300
   paused downloads are held (p99 < 1 s, issue 8) (``fig_crowd``);
4. upload, delete, ``/meta`` and listings on a 10,000 x 20 catalog vs a small one
   (<= 1.5x), and ``GET /reg`` (``fig_scale``).

Run it from the repository root with the venv active::

    python benchmarks/bench.py            # the full run (~15 min)
    python benchmarks/bench.py --quick    # smoke run: small sizes, one round (~1-2 min)

The exit status is 1 when any target fails, 0 otherwise (skipped targets do not fail).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from fig_crowd import run_crowd
from fig_download import run_downloads
from fig_latency import run_latency
from fig_rss import run_rss
from fig_scale import run_scale
from fig_upload import run_uploads, upload_rows
from harness import (
    Children,
    GiB,
    MiB,
    Row,
    load_average,
    log,
    make_source,
    parse_size,
    raise_interrupt,
    skipped,
)
from servers import (
    Server,
    find_nginx,
    start_bare_app,
    start_cloudimg,
    start_nginx,
    start_registry,
)

FIGURES = ("upload", "download", "latency", "crowd", "rss", "scale")


@dataclass
class Options:
    size: int
    rss_size: int
    directory: Path | None
    rounds: int
    download_rounds: int
    slow_clients: int
    slow_rate: str
    slow_seconds: float
    crowd_idle: int
    crowd_downloads: int
    crowd_rounds: int
    scale_repos: int
    figures: list[str]
    server: str
    heat: bool
    nginx: str | None
    registry: str | None
    json: bool
    keep: bool


# --------------------------------------------------------------------------------------
# The run


def _optional(
    children: Children, reasons: dict[str, str], name: str, start: Any, *args: Any
) -> Server | None:
    """Start a reference; when it cannot run here, remember why (its rows say "skip")."""
    try:
        return start(children, *args)  # type: ignore[no-any-return]
    except (OSError, RuntimeError) as exc:
        reasons[name] = f"{name} did not start: {str(exc).splitlines()[0][:80]}"
        log(reasons[name])
        return None


def run(children: Children, options: Options, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    reasons: dict[str, str] = {}
    source, seed = workdir / "source.img", workdir / "seed.img"
    make_source(source, options.size)
    make_source(seed, MiB)
    data_root = workdir / "data-main"
    cloudimg = start_cloudimg(children, options.server, data_root, workdir)
    nginx_binary = find_nginx(options.nginx)
    registry_binary = options.registry or shutil.which("docker-registry")
    if nginx_binary is None:
        reasons["nginx"] = "nginx not found (install nginx or pass --nginx)"
    if registry_binary is None:
        reasons["registry"] = "docker-registry not found (apt install docker-registry)"
    if len(os.sched_getaffinity(0)) < 2:
        reasons["bare_pinned"] = "pinning needs two CPUs"
    bare = (
        None
        if "bare_pinned" in reasons
        else _optional(children, reasons, "bare_pinned", start_bare_app, workdir)
    )
    nginx = nginx_binary and _optional(
        children, reasons, "nginx", start_nginx, nginx_binary, workdir, data_root
    )
    registry = registry_binary and _optional(
        children, reasons, "registry", start_registry, registry_binary, workdir
    )
    try:
        log(f"figures 1, 2: uploads, {options.rounds} interleaved rounds")
        uploads = run_uploads(
            cloudimg, bare, nginx or None, registry or None, source, workdir,
            options.rounds, options.heat,
        )  # fmt: skip
        rows += upload_rows(uploads, reasons)
        if bare is not None:
            children.stop(bare.process)
        if "download" in options.figures:
            log(f"figure 2: downloads, {options.download_rounds} rounds")
            rows += run_downloads(
                cloudimg, uploads.last_tag, nginx or None, registry or None,
                uploads.registry_digest, options.download_rounds, reasons,
            )  # fmt: skip
        for reference in (nginx, registry):
            if reference:
                children.stop(reference.process)
        if "latency" in options.figures:
            log("figure 3: listing latency under downloads")
            if shutil.which("curl") is None:
                rows += _latency_skipped("curl not found")
            else:
                rows += run_latency(
                    children, cloudimg, uploads.last_tag, options.size,
                    max(options.size, 4 * options.size if options.size >= GiB else 512 * MiB),
                    options.slow_clients, options.slow_rate, options.slow_seconds,
                )  # fmt: skip
    finally:
        children.stop(cloudimg.process)
    if not options.keep:
        shutil.rmtree(data_root, ignore_errors=True)
        shutil.rmtree(workdir / "registry", ignore_errors=True)
    if "crowd" in options.figures:
        log(
            f"figure 3: probes under {options.crowd_idle} idle connections and "
            f"{options.crowd_downloads} paused downloads, server of its own"
        )
        rows += run_crowd(
            children, options.server, workdir, options.crowd_idle, options.crowd_downloads,
            options.crowd_rounds,
        )  # fmt: skip
    if "rss" in options.figures and options.rss_size == 0:
        rows.append(skipped("rss_post", "2 peak RSS during an upload", "< 150 MiB", "--rss-size 0"))
    if "rss" in options.figures and options.rss_size > 0:
        log(f"figure 2: RSS during a {options.rss_size // MiB} MiB upload, fresh server")
        source.unlink()
        make_source(source, options.rss_size)
        fresh = start_cloudimg(children, options.server, workdir / "data-rss", workdir)
        try:
            rows += run_rss(fresh, source, workdir, options.heat, uploads.raw_put)
        finally:
            children.stop(fresh.process)
        shutil.rmtree(workdir / "data-rss", ignore_errors=True)
    if "scale" in options.figures:
        log("figure 4: catalog scale")
        rows += run_scale(children, workdir, seed, options.scale_repos, options.rounds)
    # By target number (a stable sort keeps each figure's rows in the order they ran).
    return sorted(rows, key=lambda row: row.figure[0])


def _latency_skipped(reason: str) -> list[Row]:
    return [
        skipped("latency_8_downloads", "3 listing+meta p99, 8 whole-file downloads", "", reason),
        skipped("latency_slow_downloads", "3 listing+meta p99, slow downloads", "", reason),
    ]


# --------------------------------------------------------------------------------------
# Output


def _print_table(headers: Sequence[str], lines: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    print("|".join(f" {h:<{w}} " for h, w in zip(headers, widths, strict=True)), file=out)
    print("+".join("-" * (w + 2) for w in widths), file=out)
    for line in lines:
        print("|".join(f" {c:<{w}} " for c, w in zip(line, widths, strict=True)), file=out)


def print_results(rows: Sequence[Row], out: TextIO) -> None:
    _print_table(
        ("figure", "cloudimg", "reference", "ratio", "target", "result", "CPU s/GiB app / ref"),
        [
            (
                r.figure,
                r.measured,
                r.reference,
                f"{r.ratio:.2f}x" if r.ratio is not None else "-",
                r.target,
                r.verdict,
                r.cpu or "-",
            )
            for r in rows
        ],
        out,
    )
    failed = sum(r.verdict == "FAIL" for r in rows)
    passed = sum(r.verdict == "PASS" for r in rows)
    skips = sum(r.verdict == "skip" for r in rows)
    print(f"\n{passed} PASS, {failed} FAIL, {skips} skip", file=out)


def environment(options: Options, workdir: Path, load_before: str) -> dict[str, Any]:
    """Where and how the figures were taken (the load shows how shared the machine was)."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "workdir": str(workdir),
        **{k: v for k, v in asdict(options).items() if k not in ("directory", "json", "keep")},
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


# --------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Print every target of issue 12 (docs/performance.md) with PASS or FAIL, "
        "as ratios against references measured in the same run.",
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="smoke run: 32M image, 64M RSS upload, one round, 20 slow clients for 3 s, "
        "a crowd of 100 idle + 30 paused downloads, 500 x 20 big catalog (other options "
        "still override)",
    )
    add(
        "--size",
        type=parse_size,
        default=None,
        help="size of the uploaded and downloaded image, e.g. 512M, 2G (default 1G)",
    )
    add(
        "--rss-size",
        type=parse_size,
        default=None,
        help="size of the upload during which RSS is sampled; 0 skips (default 4G)",
    )
    add(
        "--dir",
        type=Path,
        default=None,
        help="where the temp dir goes; it must be on the file system you want to measure "
        "(default: the current directory)",
    )
    add(
        "--rounds",
        "--repeats",
        type=int,
        default=None,
        help="interleaved upload rounds and catalog-scale rounds (default 5)",
    )
    add(
        "--download-rounds",
        "--download-repeats",
        type=int,
        default=None,
        help="download rounds after one warm-up round (default 11)",
    )
    add("--slow-clients", type=int, default=None, help="slow concurrent downloads (default 200)")
    add("--slow-rate", default="512K", help="each slow client's curl --limit-rate (512K)")
    add(
        "--slow-seconds",
        type=float,
        default=None,
        help="how long latency is measured while the slow downloads run (default 15)",
    )
    add(
        "--crowd-idle",
        type=int,
        default=None,
        help="connections that never send a byte, held while probes are timed (default 1000)",
    )
    add(
        "--crowd-downloads",
        type=int,
        default=None,
        help="downloads paused after their response head, held with the idle ones (default 300)",
    )
    add(
        "--crowd-rounds",
        type=int,
        default=None,
        help="rounds of the four probes, idle and under the crowd (default 50)",
    )
    add(
        "--scale-repos",
        type=int,
        default=None,
        help="repositories (of 20 tags) in the big catalog (default 10000)",
    )
    add(
        "--figures",
        default=",".join(FIGURES),
        help=f"comma-separated subset of {','.join(FIGURES)} (upload always runs: "
        "the others use its image)",
    )
    add(
        "--server",
        choices=("granian", "uvicorn"),
        default="granian",
        help="run cloudimg under cloudimg serve (Granian) or uvicorn (uvicorn_app.py)",
    )
    add("--nginx", default=None, help="nginx binary (default: from PATH)")
    add("--registry", default=None, help="docker-registry binary (default: from PATH)")
    add(
        "--no-heat",
        action="store_true",
        help="do not write and delete a scratch file before each timed write",
    )
    add("--json", action="store_true", help="print the rows as JSON on stdout")
    add("--keep", action="store_true", help="keep the temp dir (logs, configs) for debugging")
    args = parser.parse_args(argv)  # fmt: skip
    quick = args.quick

    def pick(value: Any, full: Any, smoke: Any) -> Any:
        return value if value is not None else (smoke if quick else full)

    figures = [f for f in args.figures.split(",") if f]
    if set(figures) - set(FIGURES):
        parser.error(f"--figures takes {','.join(FIGURES)}")
    options = Options(
        size=pick(args.size, GiB, 32 * MiB),
        rss_size=pick(args.rss_size, 4 * GiB, 64 * MiB),
        directory=args.dir,
        rounds=pick(args.rounds, 5, 1),
        download_rounds=pick(args.download_rounds, 11, 1),
        slow_clients=pick(args.slow_clients, 200, 20),
        slow_rate=args.slow_rate,
        slow_seconds=pick(args.slow_seconds, 15.0, 3.0),
        crowd_idle=pick(args.crowd_idle, 1_000, 100),
        crowd_downloads=pick(args.crowd_downloads, 300, 30),
        crowd_rounds=pick(args.crowd_rounds, 50, 5),
        scale_repos=pick(args.scale_repos, 10_000, 500),
        figures=figures,
        server=args.server,
        heat=not args.no_heat,
        nginx=args.nginx,
        registry=args.registry,
        json=args.json,
        keep=args.keep,
    )
    if options.size < MiB:
        parser.error("--size must be at least 1M")
    if min(options.rounds, options.download_rounds, options.slow_clients, options.crowd_rounds) < 1:
        parser.error(
            "--rounds, --download-rounds, --slow-clients and --crowd-rounds must be positive"
        )
    if min(options.crowd_idle, options.crowd_downloads) < 0:
        parser.error("--crowd-idle and --crowd-downloads cannot be negative")
    return options


@contextlib.contextmanager
def workspace(options: Options) -> Iterator[Path]:
    parent = (options.directory or Path.cwd()).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cloudimg-bench-", dir=parent))
    try:
        yield workdir
    finally:
        if options.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)
    children = Children()
    load_before = load_average()
    try:
        with workspace(options) as workdir:
            try:
                log(f"working in {workdir} (load average {load_before})")
                rows = run(children, options, workdir)
            finally:
                # A second Ctrl-C must not cut the cleanup short.
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)
                children.stop_all()
    except KeyboardInterrupt:
        log("interrupted; child processes stopped")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    env = environment(options, workdir, load_before)
    if options.json:
        rows_json = [{**asdict(r), "verdict": r.verdict} for r in rows]
        json.dump({"environment": env, "rows": rows_json}, sys.stdout, indent=2)
        print()
    else:
        print(f"\n$ python {env['command']}")
        print(
            f"{env['date']}, {env['cpus']} CPUs, load average {env['load_average_before']} "
            f"before, {env['load_average_after']} after" + ("" if options.heat else ", --no-heat")
        )
        print_results(rows, sys.stdout)
    return 1 if any(r.verdict == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
