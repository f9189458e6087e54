"""Maintenance: garbage collection, integrity checks, import of the old layout, usage.

Plain functions over a :class:`~cloudimg.catalog.Catalog` that return report
dataclasses; the CLI prints them. Every change goes through the catalog's
transactions, so these run safely while servers serve.
"""

from cloudimg.maintenance.copy_blobs import CopyProblem, CopyReport, copy_blobs
from cloudimg.maintenance.du import DuReport, RepoUsage, disk_usage
from cloudimg.maintenance.fsck import FsckProblem, FsckReport, check
from cloudimg.maintenance.gc import (
    GcAction,
    GcKind,
    GcReport,
    collect_garbage,
    collect_garbage_and_totals,
    parse_duration,
)
from cloudimg.maintenance.import_legacy import ImportReport, LegacyEntry, import_legacy

__all__ = [
    "CopyProblem",
    "CopyReport",
    "DuReport",
    "FsckProblem",
    "FsckReport",
    "GcAction",
    "GcKind",
    "GcReport",
    "ImportReport",
    "LegacyEntry",
    "RepoUsage",
    "check",
    "collect_garbage",
    "collect_garbage_and_totals",
    "copy_blobs",
    "disk_usage",
    "import_legacy",
    "parse_duration",
]
