"""``cloudimg import-legacy``: import a data root written by the old Go server."""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path

import click

from cloudimg.catalog.database import NoCatalogError
from cloudimg.cli.options import flag_error, inspection_options, settings_from, storage_options
from cloudimg.cli.output import human_bytes, print_json, run, shown
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.cli.storage import catalog_errors, catalog_url
from cloudimg.config import Settings, SettingsError
from cloudimg.maintenance import ImportReport, import_legacy
from cloudimg.maintenance.import_legacy import preview_import
from cloudimg.progress import Progress
from cloudimg.registry import blob_location, open_registry

__all__ = ["import_legacy_command"]


@click.command("import-legacy")
@storage_options
@inspection_options
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The old server's data root (<repo>/<image>/<tag>/image.bin and meta.json).",
)
@click.option(
    "--move",
    is_flag=True,
    help="Take the bytes without a second copy when on the same file system, "
    "and remove each entry from the old tree once it is imported.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Report what would be imported and skipped, and why; change nothing "
    "(not even create the data root or the catalog).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@progress_options
def import_legacy_command(
    source: Path,
    move: bool,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
    progress_interval: float,
    **values: object,
) -> None:
    """Import the old server's tree: names, metadata and bytes as they were.

    Identical images become one blob. Entries that are not valid are skipped with the
    reason; so is an unsafe image, with the inspection rule it breaks (the dry run
    inspects too). Safe to run again, or after a crash. Exits 1 when an entry was
    skipped or failed.
    """
    settings = settings_from(**values)
    try:
        blob_location(settings)  # the dry run opens the store without the checks
    except SettingsError as exc:
        raise flag_error(exc) from None
    with ProgressDisplay(quiet=quiet, interval=progress_interval) as progress:
        if dry_run:
            with catalog_errors(catalog_url(settings)):
                report = asyncio.run(_preview(settings, source, move, progress))
        else:
            report = run(
                settings,
                lambda catalog, blobs: import_legacy(
                    catalog,
                    blobs,
                    source,
                    move=move,
                    data_root=settings.data_root,
                    progress=progress,
                    policy=settings.inspection_policy,
                ),
                create=True,
            )
    if as_json:
        print_json(
            report,
            ok=report.ok,
            counts={o: report.count(o) for o in ("imported", "unchanged", "skipped", "failed")},
            bytes_imported=report.bytes_imported,
        )
    else:
        _print(report)
    sys.exit(0 if report.ok else 1)


async def _preview(
    settings: Settings, source: Path, move: bool, progress: Progress | None
) -> ImportReport:
    """The dry run: the catalog opened for reading only, or none before the first start."""
    preview = functools.partial(
        preview_import,
        source=source,
        move=move,
        data_root=settings.data_root,
        progress=progress,
        policy=settings.inspection_policy,
    )
    try:
        registry = open_registry(settings, migrate=False, read_only=True)
    except NoCatalogError:
        return await preview(None)  # nothing imported yet: every valid entry is new
    async with registry:
        return await preview(registry.catalog)


def _print(report: ImportReport) -> None:
    if report.dry_run:
        _print_dry_run(report)
        return
    listed, more = shown(e for e in report.entries if e.outcome == "imported" and e.reason)
    for entry in listed:
        click.echo(f"note: {entry.path}: {entry.reason}")
    if more:
        click.echo(f"... and {more} more notes")
    _print_problems(report)
    linked = sum(1 for e in report.entries if e.linked)
    how = f" ({linked} without a copy)" if report.move else ""
    click.echo(
        f"import done in {report.duration_seconds:.1f}s: {report.count('imported')} imported"
        f"{how} ({human_bytes(report.bytes_imported)}), {report.count('unchanged')} already "
        f"there, {report.count('skipped')} skipped, {report.count('failed')} failed"
    )


def _print_problems(report: ImportReport) -> None:
    for outcome in ("skipped", "failed"):
        listed, more = shown(e for e in report.entries if e.outcome == outcome)
        for entry in listed:
            click.echo(f"{outcome}: {entry.path}: {entry.reason}")
        if more:
            click.echo(f"... and {more} more {outcome}")


def _print_dry_run(report: ImportReport) -> None:
    listed, more = shown(e for e in report.entries if e.outcome == "imported")
    for entry in listed:
        note = f": {entry.reason}" if entry.reason else ""
        click.echo(f"would import: {entry.path} ({human_bytes(entry.size)}){note}")
    if more:
        click.echo(f"... and {more} more to import (--json lists every entry)")
    _print_problems(report)
    removed = ", each then removed from the old tree (--move)" if report.move else ""
    click.echo(
        f"dry run, nothing changed: {report.count('imported')} would be imported "
        f"({human_bytes(report.bytes_imported)}){removed}, {report.count('unchanged')} "
        f"already there, {report.count('skipped')} skipped, {report.count('failed')} failed"
    )
