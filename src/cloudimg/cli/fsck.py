"""``cloudimg fsck``: check blobs against the catalog; quarantine corrupt ones."""

from __future__ import annotations

import sys

import click

from cloudimg.cli.options import settings_from, storage_options
from cloudimg.cli.output import human_bytes, print_json, run, shown
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.maintenance import FsckReport, check
from cloudimg.maintenance.fsck import KINDS

__all__ = ["fsck"]


@click.command()
@storage_options
@click.option(
    "--checksum", is_flag=True, help="Hash every blob (reads every byte), not only its size."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@progress_options
def fsck(
    checksum: bool, as_json: bool, quiet: bool, progress_interval: float, **values: object
) -> None:
    """Check every blob against one consistent view of the catalog.

    Blobs whose bytes do not match their digest are quarantined: the server refuses
    to serve them until the image is uploaded again. Exits 1 when it found a problem.
    """
    settings = settings_from(**values)
    with ProgressDisplay(quiet=quiet, interval=progress_interval) as progress:
        report = run(
            settings,
            lambda catalog, blobs: check(catalog, blobs, checksum=checksum, progress=progress),
        )
    if as_json:
        print_json(report, ok=report.ok)
    else:
        _print(report)
    sys.exit(0 if report.ok else 1)


def _print(report: FsckReport) -> None:
    for kind in KINDS:
        problems = [p for p in report.problems if p.kind == kind]
        if not problems:
            continue
        click.echo(f"{kind}: {len(problems)}")
        listed, more = shown(problems)
        for problem in listed:
            what = f"blake3:{problem.digest}" if problem.digest else str(problem.path)
            done = " [quarantined]" if problem.quarantined else ""
            click.echo(f"  {what}: {problem.detail}{done}")
            if problem.tags:
                tags, more_tags = shown(problem.tags)
                extra = f" and {more_tags} more" if more_tags else ""
                click.echo(f"    used by {', '.join(tags)}{extra}")
        if more:
            click.echo(f"  ... and {more} more {kind} problem(s)")
    if report.unreferenced:
        click.echo(
            f"blob files no catalog row names (gc reclaims them): {len(report.unreferenced)}"
        )
    hashed = f", {human_bytes(report.bytes_hashed)} hashed" if report.checksum else ""
    click.echo(
        f"fsck done in {report.duration_seconds:.1f}s: {report.blobs} blob(s), "
        f"{report.tags} tag(s){hashed}, {len(report.problems)} problem(s)"
    )
