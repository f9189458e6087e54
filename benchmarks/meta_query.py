#!/usr/bin/env python3
"""Issue 25: is ``GET /reg/_query`` fast on a big catalog? p50/p99 on SQLite and PostgreSQL.

For each backend, a server on its own catalog: one real blob is uploaded through the
API, then ``--repos`` repositories of one image with 20 tags each are added in bulk
through the catalog's models (tags, their ``tag_meta`` index rows, the blob's
refcount), as ``fig_scale`` fills its big catalog. Metadata: ``os`` (4 values),
``course`` (200 values), ``n`` (the tag's number); one repository in 50 has ``gpu``.
Each round times every query once, in turn, next to the reference, the detailed
listing of one image (``/reg/r00005/img?details=true``) on the same server. The
issue's target is a p99 under 50 ms at 10,000 x 20; the figures are printed, not
checked.

    python benchmarks/meta_query.py [--repos 10000] [--rounds 200] [--backends sqlite,postgresql]

PostgreSQL: ``CLOUDIMG_TEST_POSTGRES_URL`` (as the tests; default
``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``) names a server where a
database ``cloudimg_bench_<hex>`` is created and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from clients import call, upload_multipart
from harness import Children, log, make_source, percentile
from servers import start_cloudimg
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from cloudimg.catalog.models import Blob, Image, Repository, Tag, TagMeta, meta_index_rows

TAGS = 20
IMAGE = "img"
OSES = ("ubuntu", "debian", "fedora", "alpine")
COURSES = 200
ADMIN_URL = os.environ.get(
    "CLOUDIMG_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REFERENCE = "listing of one image (details=true)"
QUERIES = {
    REFERENCE: "/reg/r00005/img?details=true",
    "meta=os=ubuntu, first page of 100": "/reg/_query?meta=os%3Dubuntu&limit=100",
    "meta=os=ubuntu, a page deep in": "/reg/_query?meta=os%3Dubuntu&limit=100&after=r05000/img/t00",
    "meta=course=c7 & os=debian (AND)": "/reg/_query?meta=course%3Dc7&meta=os%3Ddebian",
    "has=gpu (1 repo in 50), 100": "/reg/_query?has=gpu&limit=100",
    "repo_prefix=r0012": "/reg/_query?repo_prefix=r0012",
    "meta=os=none (no match)": "/reg/_query?meta=os%3Dnone",
}


def _meta(repo: int, tag: int) -> dict[str, str]:
    meta = {"os": OSES[repo % len(OSES)], "course": f"c{repo % COURSES}", "n": str(tag)}
    if repo % 50 == 0:
        meta["gpu"] = "nvidia"
    return meta


async def _populate(url: str, repositories: int) -> None:
    """``repositories`` x ``TAGS`` tags over the blob already in the catalog, in bulk."""
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    async with engine.begin() as db:
        digest = (await db.execute(select(Blob.digest))).scalars().first()
        names = [f"r{i:05d}" for i in range(repositories)]
        await db.execute(insert(Repository), [{"name": n, "created_at": now} for n in names])
        repo_ids = dict((await db.execute(select(Repository.name, Repository.id))).all())
        await db.execute(
            insert(Image),
            [{"repository_id": repo_ids[n], "name": IMAGE, "created_at": now} for n in names],
        )
        image_ids = dict(
            (
                await db.execute(
                    select(Repository.name, Image.id).join(
                        Image, Image.repository_id == Repository.id
                    )
                )
            ).all()
        )
        tags = [
            {"image_id": image_ids[name], "name": f"t{t:02d}", "digest": digest,
             "meta": _meta(i, t), "created_at": now, "updated_at": now, "immutable": False}
            for i, name in enumerate(names) for t in range(TAGS)
        ]  # fmt: skip
        for start in range(0, len(tags), 20_000):
            await db.execute(insert(Tag), tags[start : start + 20_000])
        rows: list[dict[str, Any]] = []
        repo_of = {image_id: name for name, image_id in image_ids.items()}
        every = select(Tag.id, Tag.image_id, Tag.name, Tag.meta)
        for tag_id, image_id, tag, meta in (await db.execute(every)).all():
            rows += meta_index_rows(tag_id, (repo_of[image_id], IMAGE, tag), meta)
        for start in range(0, len(rows), 20_000):
            await db.execute(insert(TagMeta), rows[start : start + 20_000])
        counts = select(func.count()).where(Tag.digest == Blob.digest).scalar_subquery()
        await db.execute(update(Blob).values(refcount=counts))
    async with engine.connect() as db:
        # Statistics for the planner, and on PostgreSQL the visibility map that lets an
        # index be read alone, as autovacuum (PostgreSQL: it vacuums a table after
        # inserts too) or an operator's ANALYZE (SQLite) leave a catalog that grew over
        # time. VACUUM runs outside a transaction.
        autocommit = await db.execution_options(isolation_level="AUTOCOMMIT")
        postgresql = db.dialect.name == "postgresql"
        await autocommit.exec_driver_sql("VACUUM ANALYZE" if postgresql else "ANALYZE")
    await engine.dispose()


@contextmanager
def _database(backend: str, root: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{root / 'catalog.sqlite3'}"
        return
    name = "cloudimg_bench_" + secrets.token_hex(6)
    dsn = make_url(ADMIN_URL).set(drivername="postgresql").render_as_string(False)

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _measure(port: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in QUERIES}
    for path in QUERIES.values():  # warm up: plans, caches
        status, body = call(port, "GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
    for _ in range(rounds):
        for name, path in QUERIES.items():
            started = time.perf_counter()
            status, _body = call(port, "GET", path)
            times[name].append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
    return times


def run(backend: str, repositories: int, rounds: int, workdir: Path, seed: Path) -> None:
    root = workdir / f"data-{backend}"
    root.mkdir()
    children = Children()
    with _database(backend, root) as url:
        try:
            server = start_cloudimg(children, "granian", root, workdir, "--database-url", url)
            response = upload_multipart(server.port, f"/reg/seed/{IMAGE}/s0", seed, {})
            if response.status != 201:
                raise RuntimeError(f"seed upload answered {response.status}")
            started = time.perf_counter()
            asyncio.run(_populate(url, repositories))
            log(f"{backend}: filled {repositories:,} x {TAGS} tags in "
                f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            times = _measure(server.port, rounds)
        finally:
            children.stop_all()
    reference = percentile(times[REFERENCE], 0.99)
    print(f"\n{backend}, N = {repositories:,} repositories x {TAGS} tags, {rounds} rounds")
    print(f"  {'query':<40} {'p50 ms':>8} {'p99 ms':>8} {'p99/ref':>8}")
    for name, samples in times.items():
        p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
        print(f"  {name:<40} {p50:8.1f} {p99:8.1f} {p99 / 1000 / reference:8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cloudimg-bench-meta-", dir=Path.cwd()))
    try:
        seed = workdir / "seed.img"
        make_source(seed, 64 * 1024)
        for backend in args.backends.split(","):
            run(backend, args.repos, args.rounds, workdir, seed)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
