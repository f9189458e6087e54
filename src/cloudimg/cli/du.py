"""``cloudimg du``: logical against physical bytes per repository."""

from __future__ import annotations

from dataclasses import asdict

import click

from cloudimg.cli.options import settings_from, storage_options
from cloudimg.cli.output import FREE_HISTORY, human_bytes, print_json, run
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.maintenance import DuReport, disk_usage

__all__ = ["du"]


@click.command()
@storage_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@progress_options
def du(as_json: bool, quiet: bool, progress_interval: float, **values: object) -> None:
    """Per repository: bytes its tags add up to, bytes of its distinct blobs, and the saving."""
    with ProgressDisplay(quiet=quiet, interval=progress_interval) as progress:
        report = run(
            settings_from(**values),
            lambda catalog, _blobs: disk_usage(catalog, progress),
            writable=False,
        )
    if as_json:
        repos = [{**asdict(u), "saved_bytes": u.saved_bytes} for u in report.repositories]
        print_json(report, repositories=repos, saved_bytes=report.saved_bytes)
    else:
        _print(report)


def _print(report: DuReport) -> None:
    header = f"{'repository':<32} {'tags':>6} {'logical':>12} {'physical':>12} {'saved':>12}"
    click.echo(header)
    for u in report.repositories:
        click.echo(
            f"{u.repo:<32} {u.tags:>6} {human_bytes(u.logical_bytes):>12} "
            f"{human_bytes(u.physical_bytes):>12} {human_bytes(u.saved_bytes):>12}"
        )
    tags = sum(u.tags for u in report.repositories)
    click.echo(
        f"{'total (shared blobs once)':<32} {tags:>6} "
        f"{human_bytes(report.logical_bytes):>12} {human_bytes(report.physical_bytes):>12} "
        f"{human_bytes(report.saved_bytes):>12}"
    )
    click.echo(f"stored: {report.stored_blobs} blob(s), {human_bytes(report.stored_bytes)}")
    click.echo(
        f"held only by tag history: {report.history_only_blobs} blob(s),"
        f" {human_bytes(report.history_only_bytes)}"
    )
    if report.history_only_blobs:
        click.echo(f"  {FREE_HISTORY}")
    click.echo(
        f"kept /v2 layers and configs: {report.oci_kept_blobs} blob(s),"
        f" {human_bytes(report.oci_kept_bytes)}"
    )
