"""``cloudimg du``: logical against physical bytes per repository, and use against quota."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from cloudimg.api.secret_file import SecretFile
from cloudimg.cli.flags import option
from cloudimg.cli.options import settings_from, storage_options
from cloudimg.cli.output import FREE_HISTORY, human_bytes, print_json, run
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.core.quotas import NO_QUOTAS, Quotas, parse_quotas
from cloudimg.maintenance import DuReport, disk_usage

__all__ = ["du"]


@click.command()
@storage_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@option(
    "--quota-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The servers' quota file: show each repository's use against its quota",
)
@progress_options
def du(
    as_json: bool,
    quota_file: Path | None,
    quiet: bool,
    progress_interval: float,
    **values: object,
) -> None:
    """Per repository: bytes its tags add up to, bytes of its distinct blobs, the saving,
    and (with --quota-file) its use against its quota."""
    quotas = _quotas(quota_file)
    with ProgressDisplay(quiet=quiet, interval=progress_interval) as progress:
        report = run(
            settings_from(**values),
            lambda catalog, _blobs: disk_usage(catalog, progress, quotas),
            writable=False,
        )
    if as_json:
        repos = [{**asdict(u), "saved_bytes": u.saved_bytes} for u in report.repositories]
        print_json(report, repositories=repos, saved_bytes=report.saved_bytes)
    else:
        _print(report, quota_file is not None)


def _quotas(path: Path | None) -> Quotas:
    if path is None:
        return NO_QUOTAS
    try:
        return SecretFile(path, parse_quotas, what="quotas").get()  # as serve reads it
    except ValueError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--quota-file") from None


def _print(report: DuReport, with_quotas: bool = False) -> None:
    header = f"{'repository':<32} {'tags':>6} {'logical':>12} {'physical':>12} {'saved':>12}"
    if with_quotas:
        header += f" {'used':>12} {'quota':>12} {'tag quota':>9}"
    click.echo(header)
    for u in report.repositories:
        line = (
            f"{u.repo:<32} {u.tags:>6} {human_bytes(u.logical_bytes):>12} "
            f"{human_bytes(u.physical_bytes):>12} {human_bytes(u.saved_bytes):>12}"
        )
        if with_quotas:
            limit = "-" if u.quota_bytes is None else human_bytes(u.quota_bytes)
            tag_limit = "-" if u.quota_tags is None else str(u.quota_tags)
            line += f" {human_bytes(u.used_bytes):>12} {limit:>12} {tag_limit:>9}"
        click.echo(line)
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
