"""``cloudimg fsck``: check blobs against the catalog; quarantine corrupt ones; inspect
images stored before inspection and block the unsafe ones."""

from __future__ import annotations

import sys

import click

from cloudimg.cli.options import inspection_options, settings_from, storage_options
from cloudimg.cli.output import human_bytes, print_json, run, shown
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.maintenance import FsckReport, check
from cloudimg.maintenance.fsck import KINDS, FsckProblem, Inspect

__all__ = ["fsck"]


@click.command()
@storage_options
@inspection_options
@click.option(
    "--checksum", is_flag=True, help="Hash every blob (reads every byte), not only its size."
)
@click.option(
    "--inspect",
    is_flag=True,
    help="Inspect the images stored before inspection existed (reads each once): record "
    "their format and virtual size, list the unsafe ones with the rule they break.",
)
@click.option(
    "--reinspect",
    is_flag=True,
    help="Inspect every image again (under the current policy), blocked ones aside.",
)
@click.option(
    "--block-unsafe",
    is_flag=True,
    help="Block each unsafe image found (implies --inspect): its tags stay listed, its "
    "downloads answer 403 IMAGE_BLOCKED. `cloudimg unblock` lifts a block.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@progress_options
def fsck(
    checksum: bool,
    inspect: bool,
    reinspect: bool,
    block_unsafe: bool,
    as_json: bool,
    quiet: bool,
    progress_interval: float,
    **values: object,
) -> None:
    """Check every blob against one consistent view of the catalog.

    Blobs whose bytes do not match their digest are quarantined: the server refuses
    to serve them until the image is uploaded again. Exits 1 when it found a problem
    (an unsafe image is one, blocked or not in this run).
    """
    settings = settings_from(**values)
    inspection = None
    if inspect or reinspect or block_unsafe:
        inspection = Inspect(settings.inspection_policy, every=reinspect, block_unsafe=block_unsafe)
    with ProgressDisplay(quiet=quiet, interval=progress_interval) as progress:
        report = run(
            settings,
            lambda catalog, blobs: check(
                catalog, blobs, checksum=checksum, inspect=inspection, progress=progress
            ),
        )
    if as_json:
        print_json(report, ok=report.ok)
    else:
        _print(report)
    sys.exit(0 if report.ok else 1)


def _print(report: FsckReport) -> None:
    for kind in KINDS:
        _print_kind(kind, [p for p in report.problems if p.kind == kind])
    if report.unreferenced:
        click.echo(
            f"blob files no catalog row names (gc reclaims them): {len(report.unreferenced)}"
        )
    if report.blocked:
        click.echo(f"blocked images (not served; cloudimg unblock lifts it): {len(report.blocked)}")
        _print_problems(report.blocked, "blocked image(s)")
    if report.uninspected and not report.inspect:
        click.echo(
            f"images stored before inspection existed: {report.uninspected} "
            "(fsck --inspect reads them and lists the unsafe ones)"
        )
    hashed = f", {human_bytes(report.bytes_hashed)} hashed" if report.checksum else ""
    inspected = (
        f", {report.inspected} image(s) inspected ({human_bytes(report.bytes_inspected)})"
        if report.inspect
        else ""
    )
    click.echo(
        f"fsck done in {report.duration_seconds:.1f}s: {report.blobs} blob(s), "
        f"{report.tags} tag(s){hashed}{inspected}, {len(report.problems)} problem(s)"
    )


def _print_kind(kind: str, problems: list[FsckProblem]) -> None:
    if not problems:
        return
    click.echo(f"{kind}: {len(problems)}")
    _print_problems(problems, f"{kind} problem(s)")


def _print_problems(problems: list[FsckProblem], what: str) -> None:
    """Ten problems, each with its tags, then how many more ``what`` there are."""
    listed, more = shown(problems)
    for problem in listed:
        name = f"blake3:{problem.digest}" if problem.digest else str(problem.path)
        rule = f" [rule {problem.rule}]" if problem.rule else ""
        done = " [quarantined]" if problem.quarantined else ""
        done += " [blocked]" if problem.blocked and problem.kind != "blocked" else ""
        click.echo(f"  {name}:{rule} {problem.detail}{done}")
        if problem.tags:
            tags, more_tags = shown(problem.tags)
            extra = f" and {more_tags} more" if more_tags else ""
            click.echo(f"    used by {', '.join(tags)}{extra}")
    if more:
        click.echo(f"  ... and {more} more {what}")
