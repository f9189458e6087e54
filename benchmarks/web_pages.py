"""Latency of the web pages on a large catalog: 20,000 repositories, an image of 20,000 tags.

A script, not a test (nothing in ``tests/`` times anything). It migrates a SQLite
catalog in a temporary data root, starts ``cloudimg serve`` on it, uploads one image,
then adds the rows in bulk with SQL (all tags name that one blob; uploading 40,000
images would measure the uploads), and times 40 requests of each page. Run from the
repository root with the venv active: ``python benchmarks/web_pages.py [--rows N]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PATHS = [
    "/reg",
    "/ui/",
    "/ui/?after=r19000",
    "/ui/?q=r1999",
    "/ui/?sort=size",
    "/ui/?sort=updated",
    "/ui/?sort=size&after=r19000&after_value=4",
    "/ui/big/img",
    "/ui/big/img?after=t19000",
    "/ui/big/img?q=t1999",
    "/ui/big/img?q=ubuntu",
    "/ui/big/img/t10000",
    "/ui/_storage",
]
REQUESTS = 40


def start(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    log_path = root.parent / "server.log"
    command = [sys.executable, "-m", "cloudimg", "serve", "--listener-addr", "127.0.0.1:0"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--data-root", str(root)], stdout=log, stderr=subprocess.STDOUT
        )
    for _ in range(600):
        found = re.search(r"Listening at: http://[^\s\"]+:(\d+)", log_path.read_text())
        if found:
            base = f"http://127.0.0.1:{found[1]}"
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    return process, base
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(log_path.read_text())


def fill(database: Path, rows: int) -> None:
    """``rows`` repositories r00000... (image ``img``, tag ``v1``) and tags t00000... of big/img."""
    db = sqlite3.connect(database)
    digest, created = db.execute("SELECT digest, created_at FROM blobs").fetchone()
    (big,) = db.execute("SELECT id FROM images").fetchone()
    with db:
        db.executemany(
            "INSERT INTO repositories (name, created_at) VALUES (?, ?)",
            [(f"r{i:05d}", created) for i in range(rows)],
        )
        db.execute(
            "INSERT INTO images (repository_id, name, created_at)"
            " SELECT id, 'img', created_at FROM repositories WHERE name LIKE 'r%'"
        )
        db.execute(
            "INSERT INTO tags (image_id, name, digest, meta, created_at, updated_at)"
            " SELECT id, 'v1', ?, '{}', ?, ? FROM images WHERE id != ?",
            (digest, created, created, big),
        )
        db.executemany(
            "INSERT INTO tags (image_id, name, digest, meta, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    big,
                    f"t{i:05d}",
                    digest,
                    json.dumps({"os": "ubuntu", "n": str(i)}),
                    created,
                    created,
                )
                for i in range(rows)
            ],
        )
        db.execute("UPDATE blobs SET refcount = (SELECT count(*) FROM tags)")
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    rows = parser.parse_args().rows
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "data"
        subprocess.run(
            [sys.executable, "-m", "cloudimg", "db", "upgrade", "--data-root", str(root)],
            check=True,
            capture_output=True,
        )
        process, base = start(root)
        try:
            with httpx.Client(base_url=base, timeout=60) as http:
                files = {"meta": ("m", b"{}"), "img": ("i", b"seed")}
                assert http.post("/reg/big/img/seed", files=files).status_code == 201
                fill(root / "catalog.sqlite3", rows)
                for path in PATHS:
                    took = []
                    for _ in range(REQUESTS):
                        started = time.perf_counter()
                        response = http.get(path)
                        took.append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 200, (path, response.status_code)
                    took.sort()
                    p50, p99 = took[len(took) // 2], took[round(0.99 * (len(took) - 1))]
                    print(f"{path:44s} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
        finally:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
