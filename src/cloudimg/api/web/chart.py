"""Storage at a glance: the geometry of a small bar chart, drawn by the page as inline SVG.

The figures are those ``/metrics`` exports and ``cloudimg du`` prints: the catalog's
``storage_totals`` and the gc record on the data root. Two bars on one scale: what
the tags add up to (of which deduplication saved a part) and what is stored (of which
a part no tag names but retained tag history holds, a part only kept ``/v2`` pushes
hold -- their layers and configs, counted as ``cloudimg du``'s "kept /v2 layers and
configs" -- and a part nothing names, which gc frees).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cloudimg.catalog import GcRecord, StorageTotals
from cloudimg.units import human_bytes

__all__ = ["WIDTH", "Bar", "Segment", "StorageChart", "storage_chart"]

WIDTH = 600
"""Width of the drawing area in SVG user units (the SVG scales to its box)."""
_BAR_HEIGHT = 28
_ROW = 64  # a bar, its label above it and room between rows


@dataclass(frozen=True, slots=True)
class Segment:
    """One coloured part of a bar."""

    label: str
    value: int
    css_class: str
    x: float
    width: float

    @property
    def text(self) -> str:
        return f"{self.label}: {human_bytes(self.value)}"


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    total: int
    y: int
    segments: tuple[Segment, ...]

    @property
    def label_y(self) -> int:
        return self.y - 8

    @property
    def text(self) -> str:
        return f"{self.label}: {human_bytes(self.total)}"


@dataclass(frozen=True, slots=True)
class StorageChart:
    totals: StorageTotals
    gc: GcRecord | None
    bars: tuple[Bar, ...]
    height: int
    bar_height: int = _BAR_HEIGHT

    @property
    def summary(self) -> str:
        """The chart in one sentence (its text alternative)."""
        t = self.totals
        return (
            f"The {t.tags} tags add up to {human_bytes(t.logical_bytes)}; "
            f"{t.blobs} distinct images take {human_bytes(t.stored_bytes)} on disk; "
            f"deduplication saves {human_bytes(t.deduplicated_bytes)}; "
            f"{human_bytes(t.history_only_bytes)} is held only by tag history; "
            f"{human_bytes(t.oci_kept_bytes)} is kept by /v2 pushes (layers, configs); "
            f"{human_bytes(self.unreferenced_bytes)} is held by blobs nothing names."
        )

    @property
    def unreferenced_bytes(self) -> int:
        return _unreferenced(self.totals)

    @property
    def last_gc(self) -> datetime | None:
        if self.gc is None or not self.gc.last_run_timestamp:
            return None
        return datetime.fromtimestamp(self.gc.last_run_timestamp, UTC)


def _segments(parts: list[tuple[str, int, str]], scale: float) -> tuple[Segment, ...]:
    out: list[Segment] = []
    x = 0.0
    for label, value, css_class in parts:
        width = value * scale
        out.append(Segment(label, value, css_class, round(x, 2), round(width, 2)))
        x += width
    return tuple(out)


def _unreferenced(totals: StorageTotals) -> int:
    """Bytes of blobs no tag, retained history entry or kept ``/v2`` push holds (gc
    frees them)."""
    held = totals.referenced_bytes + totals.history_only_bytes + totals.oci_kept_bytes
    return max(0, totals.stored_bytes - held)


def storage_chart(totals: StorageTotals, gc: GcRecord | None) -> StorageChart:
    """The chart of ``totals`` and the gc record ``gc`` (None: no gc recorded a run)."""
    unreferenced = _unreferenced(totals)
    largest = max(totals.logical_bytes, totals.stored_bytes, 1)
    scale = WIDTH / largest
    logical = [
        ("stored once", totals.referenced_bytes, "seg-stored"),
        ("shared by deduplication", totals.deduplicated_bytes, "seg-dedup"),
    ]
    stored = [
        ("named by tags", totals.referenced_bytes, "seg-stored"),
        ("held only by tag history", totals.history_only_bytes, "seg-history"),
        ("kept by /v2 pushes (layers, configs)", totals.oci_kept_bytes, "seg-oci"),
        ("named by nothing (gc frees it)", unreferenced, "seg-orphan"),
    ]
    bars = (
        Bar("What the tags add up to", totals.logical_bytes, _ROW - 36, _segments(logical, scale)),
        Bar("Stored on disk", totals.stored_bytes, 2 * _ROW - 36, _segments(stored, scale)),
    )
    return StorageChart(totals, gc, bars, height=2 * _ROW)
