"""``cloudimg gc``: reclaim crash debris and fix reference counts, while servers serve."""

from __future__ import annotations

import functools
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from cloudimg.cli.options import settings_from, storage_options
from cloudimg.cli.output import history_hint, human_bytes, print_json, run, shown
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.maintenance import GcKind, GcReport, collect_garbage_and_totals, parse_duration

__all__ = ["Duration", "gc", "print_report"]


if TYPE_CHECKING:
    _ParamType = click.ParamType[float, Any]  # generic since click 8.2
else:
    _ParamType = click.ParamType


class Duration(_ParamType):
    """Seconds, or a number with ``s``, ``m``, ``h`` or ``d``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@storage_options
@click.option("--dry-run", is_flag=True, help="List what would be done; change nothing.")
@click.option(
    "--grace",
    type=Duration(),
    default="1h",
    show_default=True,
    help="Touch only staging, trash and unreferenced blob files older than this "
    "(seconds, or 30s, 10m, 2h, 7d; 0 allowed).",
)
@click.option(
    "--event-retention",
    type=Duration(),
    default="7d",
    show_default=True,
    help="Drop change events older than this from the outbox (docs/events.md).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@progress_options
def gc(
    dry_run: bool,
    grace: float,
    event_retention: float,
    as_json: bool,
    quiet: bool,
    progress_interval: float,
    **values: object,
) -> None:
    """Reclaim what crashes leave and fix reference counts (safe while servers serve).

    Removes staging files of uploads that are no longer running, trash files, blob
    files no catalog row names, and blob rows no tag names; puts back a trash file
    whose delete rolled back. Exits 1 when something could not be done.
    """
    settings = settings_from(**values)
    with ProgressDisplay(quiet=quiet, interval=progress_interval) as progress:
        # A maintenance function, not a callback of this module: run() calls it directly.
        work = functools.partial(
            collect_garbage_and_totals,
            grace=grace,
            dry_run=dry_run,
            progress=progress,
            event_retention=timedelta(seconds=event_retention),
            totals=not as_json,
        )
        report, totals = run(settings, work)
    if as_json:
        print_json(report, ok=report.ok, totals=report.totals(), bytes_freed=report.bytes_freed)
    else:
        assert totals is not None, "the human report reads the totals"
        print_report(report)
        hint = history_hint(totals.history_only_blobs, totals.history_only_bytes)
        if hint is not None:
            click.echo(hint)
    sys.exit(0 if report.ok else 1)


def print_report(report: GcReport) -> None:
    """The human report: per kind of action (each with its label, ``GcKind``), what was done."""
    totals = report.totals()
    for kind in GcKind:
        actions = [a for a in report.actions if a.kind == kind]
        if not actions:
            continue
        total = totals[kind.value]
        click.echo(
            f"{kind.label(report.dry_run)}: {total['count']} ({human_bytes(total['bytes'])})"
        )
        listed, more = shown(actions)
        for action in listed:
            click.echo("  " + ": ".join(part for part in (action.target, action.detail) if part))
        if more:
            click.echo(f"  ... and {more} more")
    if report.skipped_live_staging:
        click.echo(f"staging files of running uploads left alone: {report.skipped_live_staging}")
    if report.events_pruned:
        click.echo(f"change events past their retention dropped: {report.events_pruned}")
    if report.skipped_young:
        click.echo(f"files younger than the grace period left alone: {report.skipped_young}")
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    verb = "would free" if report.dry_run else "freed"
    click.echo(
        f"gc {'(dry run) ' if report.dry_run else ''}done in {report.duration_seconds:.1f}s: "
        f"{verb} {human_bytes(report.bytes_freed)}, {len(report.problems)} problem(s)"
    )
