"""What delivering change events costs uploads and listings: two servers in one run,
one without an events settings file, one delivering every event to a webhook endpoint
on loopback (a receiver that answers 204), timed in interleaved rounds, medians, as a
ratio (docs/events.md: "Uploads do not wait").

    python benchmarks/events_cost.py                 # 9 rounds of 30 uploads + 30 listings
    python benchmarks/events_cost.py --rounds 15 --json
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness import Children, load_average
from servers import Server, start_cloudimg

_SIZE = 64 * 1024


class _Taker(BaseHTTPRequestHandler):
    """Takes every event (no signature check: the cost measured is the sender's)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _events_config(folder: Path, port: int) -> Path:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    endpoint = {"name": "bench", "url": f"http://127.0.0.1:{port}/", "secret_env": "BENCH_HOOK"}
    os.environ["BENCH_HOOK"] = secret
    path = folder / "events.json"
    path.write_text(json.dumps({"endpoints": [endpoint]}))
    return path


def _round(server: Server, label: str, count: int) -> tuple[float, float]:
    """Seconds for ``count`` raw uploads, then for ``count`` detailed listings."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    start = time.perf_counter()
    for n in range(count):
        connection.request("PUT", f"/reg/bench/img/{label}-{n}", body=os.urandom(_SIZE))
        response = connection.getresponse()
        response.read()
        assert response.status == 201, response.status
    uploads = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(count):
        connection.request("GET", "/reg/bench/img?details=true")
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    connection.close()
    return uploads, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Taker)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    children = Children()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        config = _events_config(work, receiver.server_address[1])
        try:
            plain = start_cloudimg(children, "granian", work / "plain", work)
            delivering = start_cloudimg(
                children, "granian", work / "events", work, "--events-config", str(config)
            )
            times: dict[str, list[tuple[float, float]]] = {"plain": [], "events": []}
            for number in range(args.rounds):
                for name, server in (("plain", plain), ("events", delivering)):
                    times[name].append(_round(server, f"r{number}", args.count))
        finally:
            children.stop_all()
            receiver.shutdown()
    medians = {
        name: (statistics.median(u for u, _ in rows), statistics.median(g for _, g in rows))
        for name, rows in times.items()
    }
    result = {
        "rounds": args.rounds,
        "count": args.count,
        "load_average": load_average(),
        "upload_seconds": {name: m[0] for name, m in medians.items()},
        "listing_seconds": {name: m[1] for name, m in medians.items()},
        "upload_ratio": medians["events"][0] / medians["plain"][0],
        "listing_ratio": medians["events"][1] / medians["plain"][1],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"load average {result['load_average']}; {args.rounds} rounds of {args.count}")
    for kind in ("upload", "listing"):
        seconds = result[f"{kind}_seconds"]
        print(
            f"{kind}s: {seconds['plain']:.3f} s without events, {seconds['events']:.3f} s "
            f"delivering each event: ratio {result[f'{kind}_ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
