"""``/metrics``: Prometheus text format, with ``prometheus_client``.

Two kinds of figures:

- **live** ones, counted by the request middleware (``cloudimg.api.observer``) as
  requests run: requests by method, route template and status, their latency,
  bytes received and sent, uploads and downloads in flight, and the CPU seconds and
  bytes of each stage of the uploads' staging writers (counted as each write ends);
- **scrape-time** ones, read when ``/metrics`` is asked for, because another process
  or another server changes them: blobs and bytes stored and the bytes deduplication
  saved (aggregate queries on the catalog, which every server of a registry shares),
  and the gc totals that ``cloudimg gc`` (a CronJob, another process) records in the
  catalog too (``CatalogMaintenance.record_gc_run``).

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` names a directory (empty
at start, writable, one per server), the live figures go through prometheus_client's
multiprocess mode and every worker's ``/metrics`` answers with the sum over all
workers. Without it each worker counts only what it served, and a scrape reaches one
worker at random (see docs/observability.md). The scrape-time figures are the same
whichever worker answers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

from litestar import MediaType, Response, get
from litestar.handlers import HTTPRouteHandler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from cloudimg.catalog import Catalog, GcRecord, StorageTotals
from cloudimg.catalog.events import EndpointState

__all__ = ["METRICS_PATH", "Metrics", "metrics_route", "reset_multiprocess_dir"]

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
UNMATCHED_ROUTE: Final = "unmatched"
"""Route label of a request no route matched (a 404): raw paths would explode the series."""

# Listings take milliseconds, multi-GB transfers take minutes.
_LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip


def multiprocess_dir() -> str | None:
    """The prometheus_client multiprocess directory, when several workers share one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The live metrics of one server process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cloudimg_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cloudimg_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response body.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.received = Counter(
            "cloudimg_http_received_bytes",
            "Request body bytes received, by route template (counted as they arrive).",
            ["route"],
            registry=r,
        )
        self.sent = Counter(
            "cloudimg_http_sent_bytes",
            "Response body bytes sent, by route template (counted as they go out).",
            ["route"],
            registry=r,
        )
        self.uploads_in_flight = Gauge(
            "cloudimg_uploads_in_flight",
            "Image uploads being received.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.downloads_in_flight = Gauge(
            "cloudimg_downloads_in_flight",
            "Image downloads being sent (GET of a tag or digest with a 200 or 206).",
            registry=r,
            multiprocess_mode="livesum",
        )

        self.stage_cpu = Counter(
            "cloudimg_upload_stage_cpu_seconds",
            "CPU seconds of each stage of the uploads (write, blake3, sha256, inspect on "
            "threads of their own; receive: the event loop while it took the body).",
            ["stage"],
            registry=r,
        )
        self.stage_bytes = Counter(
            "cloudimg_upload_stage_bytes",
            "Bytes each stage of the uploads took (see cloudimg_upload_stage_cpu_seconds).",
            ["stage"],
            registry=r,
        )

    def upload_stage(self, stage: str, cpu_seconds: float, size: int) -> None:
        """A ``StageCosts`` sink: count one stage's share of a staging writer's work.

        Called from the writer's threads: prometheus_client counters take a lock.
        """
        self.stage_cpu.labels(stage).inc(cpu_seconds)
        self.stage_bytes.labels(stage).inc(size)

    def live_registry(self) -> CollectorRegistry:
        """What a scrape reports of the live figures: this process's, or every worker's."""
        directory = multiprocess_dir()
        if directory is None:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return merged


class _Snapshot:
    """A collector over figures read once for one scrape (None: the catalog did not
    answer; a gc record of zeros: no gc run recorded yet)."""

    def __init__(
        self,
        totals: StorageTotals | None,
        gc: GcRecord | None,
        endpoints: list[EndpointState] | None = None,
    ) -> None:
        self.totals = totals
        self.gc = gc
        self.endpoints = endpoints

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "cloudimg_catalog_up",
            "1 when the catalog answered the scrape's queries, 0 otherwise.",
            value=0 if self.totals is None else 1,
        )
        if self.totals is not None:
            yield from _storage_families(self.totals)
        if self.gc is not None:  # counters left out, not reset, while the catalog is down
            yield from _gc_families(self.gc)
        if self.endpoints is not None:
            yield from _event_families(self.endpoints)


def _event_families(endpoints: list[EndpointState]) -> Iterable[Metric]:
    """Delivery of the change events by endpoint (the catalog's state: every replica
    and worker shows the same figures, whichever delivers)."""
    pending = GaugeMetricFamily(
        "cloudimg_events_pending",
        "Events after the endpoint's position, not yet delivered or dead-lettered.",
        labels=["endpoint"],
    )
    delivered = CounterMetricFamily(
        "cloudimg_events_delivered", "Events the endpoint took (2xx).", labels=["endpoint"]
    )
    failed = CounterMetricFamily(
        "cloudimg_events_failed",
        "Failed delivery attempts (an error status or no answer).",
        labels=["endpoint"],
    )
    dead = CounterMetricFamily(
        "cloudimg_events_dead_lettered",
        "Events the endpoint did not take in time: dead letters.",
        labels=["endpoint"],
    )
    for state in endpoints:
        pending.add_metric([state.name], state.pending)
        delivered.add_metric([state.name], state.delivered_total)
        failed.add_metric([state.name], state.failed_total)
        dead.add_metric([state.name], state.dead_lettered_total)
    yield from (pending, delivered, failed, dead)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _storage_families(t: StorageTotals) -> Iterable[Metric]:
    yield _gauge("cloudimg_blobs_stored", "Distinct image contents (blobs) stored.", t.blobs)
    yield _gauge("cloudimg_stored_bytes", "Bytes of every stored blob.", t.stored_bytes)
    yield _gauge("cloudimg_tags", "Tags in the catalog.", t.tags)
    yield _gauge(
        "cloudimg_logical_bytes",
        "Sum of the sizes of every tag's image: what a copy per tag would take.",
        t.logical_bytes,
    )
    yield _gauge(
        "cloudimg_deduplicated_bytes_saved",
        "Bytes not stored because identical images share one blob.",
        t.deduplicated_bytes,
    )


def _gc_families(gc: GcRecord) -> Iterable[Metric]:
    yield CounterMetricFamily(
        "cloudimg_gc_runs", "Runs of cloudimg gc recorded on the data root.", gc.runs_total
    )
    yield CounterMetricFamily(
        "cloudimg_gc_failed_runs",
        "Runs of cloudimg gc that reported problems (exit 1).",
        gc.failed_runs_total,
    )
    yield CounterMetricFamily(
        "cloudimg_gc_freed_bytes", "Bytes freed by cloudimg gc.", gc.bytes_freed_total
    )
    yield _gauge(
        "cloudimg_gc_last_run_timestamp_seconds",
        "Unix time at which the last cloudimg gc finished (0: never).",
        gc.last_run_timestamp,
    )
    yield _gauge(
        "cloudimg_gc_last_run_duration_seconds",
        "Duration of the last cloudimg gc.",
        gc.last_run_duration_seconds,
    )
    yield _gauge(
        "cloudimg_gc_last_run_freed_bytes",
        "Bytes freed by the last cloudimg gc.",
        gc.last_run_bytes_freed,
    )
    yield _gauge(
        "cloudimg_gc_last_run_success",
        "1 when the last cloudimg gc reported no problem.",
        1 if gc.last_run_ok else 0,
    )


async def render(metrics: Metrics, catalog: Catalog) -> bytes:
    """The text exposition of the live figures and of this scrape's catalog and gc figures."""
    totals: StorageTotals | None
    gc: GcRecord | None
    endpoints: list[EndpointState] | None
    try:
        totals = await catalog.reads.storage_totals()
        gc = await catalog.reads.gc_record() or GcRecord()
        endpoints = await catalog.events.endpoint_states()
    except Exception:  # a scrape must still answer when the catalog does not
        log.warning("metrics: the catalog did not answer", exc_info=True)
        totals = gc = endpoints = None
    scrape = CollectorRegistry()
    scrape.register(_Snapshot(totals, gc, endpoints))
    # Family names differ between the two registries, so their texts concatenate.
    return generate_latest(metrics.live_registry()) + generate_latest(scrape)


def metrics_route(metrics: Metrics, catalog: Catalog) -> HTTPRouteHandler:
    """The ``GET /metrics`` handler (left out of the OpenAPI document: qlkube reads that)."""

    @get(METRICS_PATH, include_in_schema=False, media_type=MediaType.TEXT)
    async def prometheus_metrics() -> Response[Any]:
        body = await render(metrics, catalog)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return prometheus_metrics


def reset_multiprocess_dir() -> None:
    """Empty ``PROMETHEUS_MULTIPROC_DIR`` of a previous run's files (call before workers start).

    prometheus_client reads the variable when it is imported, so it must be in the
    environment of ``cloudimg serve`` itself, not set later.
    """
    directory = multiprocess_dir()
    if directory is None:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
