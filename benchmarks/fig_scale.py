"""Issue 12, target 4: the catalog's size must not slow the operations on one image.

Two servers run side by side: one on a small catalog (``SMALL_REPOS`` repositories of
20 tags) and one on a big one (``--scale-repos``, 10,000 x 20 by default). Both are
filled the same way: a few real blobs are uploaded through the API, then the rows are
added in bulk through the project's models (every tag names one of those blobs, with
one history entry each, as an upload leaves), and the blobs' refcounts are set to
match. Each round times, on both servers, order alternating, the same operations on
the same repository: a small upload, ``/meta``, the listing of the repository and of
one image, a delete, and ``GET /reg``. The figure is the median over rounds of the big
catalog's median over the small one's: flat means close to 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from clients import call, upload_multipart
from harness import Children, Row, log, median, ratio_row, stamp_source
from servers import Server, start_cloudimg
from sqlalchemy import create_engine, func, insert, select, update

from cloudimg.catalog.models import Blob, Image, Repository, Tag, TagHistory
from cloudimg.config import Settings

SMALL_REPOS = 10
TAGS = 20
BLOBS = 4
FLAT_TARGET = 1.5
REPO, IMAGE, TAG = "r00005", "img", "t07"
_SAMPLES = 15


def _populate(data_root: Path, repositories: int) -> None:
    """``repositories`` x ``TAGS`` tags, in bulk, over the blobs already in the catalog."""
    url = Settings(data_root=data_root).resolved_database_url.replace("+aiosqlite", "")
    engine = create_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as db:
        blobs = db.execute(select(Blob.digest, Blob.size)).all()
        db.execute(
            insert(Repository),
            [{"name": f"r{i:05d}", "created_at": now} for i in range(repositories)],
        )
        repo_ids = dict(db.execute(select(Repository.name, Repository.id)).all())
        db.execute(
            insert(Image),
            [{"repository_id": repo_ids[f"r{i:05d}"], "name": IMAGE, "created_at": now}
             for i in range(repositories)],
        )  # fmt: skip
        image_ids = db.execute(
            select(Repository.name, Image.id).join(Image, Image.repository_id == Repository.id)
        ).all()
        tags, history = [], []
        for n, (repo, image_id) in enumerate(image_ids):
            for t in range(TAGS):
                digest, size = blobs[(n + t) % len(blobs)]
                meta = {"os": "linux", "n": str(t)}
                tags.append(
                    {
                        "image_id": image_id,
                        "name": f"t{t:02d}",
                        "digest": digest,
                        "meta": meta,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                history.append({"repository": repo, "image": IMAGE, "tag": f"t{t:02d}",
                                "action": "created", "digest": digest, "size": size,
                                "meta": meta, "at": now})  # fmt: skip
        db.execute(insert(Tag), tags)
        db.execute(insert(TagHistory), history)
        counts = select(func.count()).where(Tag.digest == Blob.digest).scalar_subquery()
        db.execute(update(Blob).values(refcount=counts))
    engine.dispose()


def start_catalog(
    children: Children, workdir: Path, name: str, repositories: int, seed: Path
) -> Server:
    """A cloudimg server on a catalog of ``repositories`` x ``TAGS`` tags."""
    started = time.perf_counter()
    server = start_cloudimg(children, "granian", workdir / name, workdir)
    for index in range(BLOBS):
        stamp_source(seed, f"{name}-seed-{index}")
        response = upload_multipart(server.port, f"/reg/seed/{IMAGE}/s{index}", seed, {})
        if response.status != 201:
            raise RuntimeError(f"seed upload answered {response.status}: {response.body!r}")
    _populate(server.root, repositories)
    log(f"  {name}: {repositories:,} x {TAGS} tags in {time.perf_counter() - started:.1f} s")
    return server


def _timed(action: Callable[[], tuple[int, bytes]], expected: int) -> float:
    started = time.perf_counter()
    status, body = action()
    seconds = time.perf_counter() - started
    if status != expected:
        raise RuntimeError(f"answered {status} (expected {expected}): {body[:300]!r}")
    return seconds


def _one_round(server: Server, seed: Path, label: str) -> dict[str, float]:
    """Median seconds of each operation on one server, this round."""
    port = server.port
    times: dict[str, list[float]] = {}

    def upload(tag: str) -> tuple[int, bytes]:
        stamp_source(seed, f"{label}-{tag}")
        response = upload_multipart(port, f"/reg/{REPO}/{IMAGE}/{tag}", seed, {"n": tag})
        return response.status, response.body

    new_tags = [f"{label}-u{i}" for i in range(_SAMPLES // 3)]
    times["upload"] = [_timed(lambda t=t: upload(t), 201) for t in new_tags]  # type: ignore[misc]
    reads = {
        "meta": f"/reg/{REPO}/{IMAGE}/{TAG}/meta",
        "repository listing": f"/reg/{REPO}",
        "image listing": f"/reg/{REPO}/{IMAGE}",
        "GET /reg": "/reg",
    }
    for name, path in reads.items():
        times[name] = [_timed(lambda p=path: call(port, "GET", p), 200) for _ in range(_SAMPLES)]  # type: ignore[misc]
    times["delete"] = [
        _timed(lambda t=t: call(port, "DELETE", f"/reg/{REPO}/{IMAGE}/{t}"), 200)  # type: ignore[misc]
        for t in new_tags
    ]
    return {name: median(values) for name, values in times.items()}


def run_scale(
    children: Children, workdir: Path, seed: Path, big_repos: int, rounds: int
) -> list[Row]:
    log(f"  filling a small ({SMALL_REPOS} x {TAGS}) and a big ({big_repos:,} x {TAGS}) catalog")
    small = start_catalog(children, workdir, "catalog-small", SMALL_REPOS, seed)
    big = start_catalog(children, workdir, "catalog-big", big_repos, seed)
    results: dict[str, list[dict[str, float]]] = {"small": [], "big": []}
    try:
        for index in range(rounds):
            order = [("small", small), ("big", big)]
            for name, server in order if index % 2 == 0 else reversed(order):
                results[name].append(_one_round(server, seed, f"r{index}"))
    finally:
        children.stop(small.process)
        children.stop(big.process)
    rows = []
    for operation in (
        "upload",
        "delete",
        "meta",
        "repository listing",
        "image listing",
        "GET /reg",
    ):
        ratios = [
            b[operation] / s[operation]
            for s, b in zip(results["small"], results["big"], strict=True)
        ]
        big_ms = median([r[operation] for r in results["big"]]) * 1000
        small_ms = median([r[operation] for r in results["small"]]) * 1000
        label = f"4 {operation}, {big_repos:,} x {TAGS} tags vs {SMALL_REPOS} x {TAGS}"
        key = "scale_" + operation.replace(" ", "_").replace("/", "").lower()
        if operation == "GET /reg":
            rows.append(
                Row(key, label, f"{big_ms:.1f} ms", f"{small_ms:.1f} ms", median(ratios),
                    "grows by design", info=True, details={"round_ratios": ratios})
            )  # fmt: skip
            continue
        rows.append(
            ratio_row(key, label, f"{big_ms:.1f} ms", f"{small_ms:.1f} ms", ratios,
                      maximum=FLAT_TARGET)
        )  # fmt: skip
    return rows
