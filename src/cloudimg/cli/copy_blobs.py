"""``cloudimg copy-blobs``: copy the data root's blobs into a bucket, resumably, verified."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sys

import click

from cloudimg.blobstore import FilesystemBlobStore, MaintenanceBlobStore
from cloudimg.blobstore.s3 import S3BlobStore, S3Location, S3StoreError, parse_s3_url
from cloudimg.catalog import Catalog
from cloudimg.cli.options import settings_from, storage_options
from cloudimg.cli.output import human_bytes, print_json, run, shown
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.maintenance import CopyReport, copy_blobs
from cloudimg.progress import Progress

__all__ = ["copy_blobs_command", "print_report"]


@click.command("copy-blobs")
@storage_options
@click.option(
    "--to",
    "to",
    required=True,
    metavar="s3://BUCKET[/PREFIX]",
    help="The bucket (and prefix) to copy into: what CLOUDIMG_BLOB_STORE will name.",
)
@click.option(
    "--verify", is_flag=True, help="Then read every blob back from the bucket and hash it."
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1, max=64),
    default=4,
    show_default=True,
    help="Blobs copied at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@progress_options
def copy_blobs_command(
    to: str,
    verify: bool,
    jobs: int,
    as_json: bool,
    quiet: bool,
    progress_interval: float,
    **values: object,
) -> None:
    """Copy every blob of the data root's store into a bucket (safe while servers serve).

    Each blob is hashed on its way into the bucket and placed only when it hashes to its
    digest; blobs the bucket holds already are skipped, so running it again finishes an
    interrupted copy. The catalog is not changed. Exits 1 when a blob is not in the
    bucket afterwards (or, with --verify, does not read back to its digest).
    """
    # The endpoint, region and path style are the storage options' (--s3-endpoint,
    # CLOUDIMG_S3_ENDPOINT, ...), as the servers that will serve the bucket read them.
    # The source is the filesystem store of the data root, whatever store the settings
    # name for serving (CLOUDIMG_BLOB_STORE may already name the bucket): this command
    # is how that store's blobs leave the volume.
    settings = dataclasses.replace(settings_from(**values), blob_store=None)
    try:
        location = parse_s3_url(
            to,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            path_style=settings.s3_path_style,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    target = S3BlobStore(location)
    _check(target, location)
    source = FilesystemBlobStore(settings.data_root)
    with ProgressDisplay(quiet=quiet, interval=progress_interval) as progress:
        work = functools.partial(_work, source, target, verify, jobs, progress)
        report = run(settings, work, writable=False)
    if as_json:
        print_json(report, ok=report.ok, to=to)
    else:
        print_report(report, to)
    sys.exit(0 if report.ok else 1)


async def _work(
    source: MaintenanceBlobStore,
    target: MaintenanceBlobStore,
    verify: bool,
    jobs: int,
    progress: Progress,
    catalog: Catalog,
    _blobs: MaintenanceBlobStore,
) -> CopyReport:
    return await copy_blobs(catalog, source, target, verify=verify, jobs=jobs, progress=progress)


def _check(target: S3BlobStore, location: S3Location) -> None:
    """One line and exit 1 when the bucket cannot be reached as given (before any work)."""
    try:
        asyncio.run(target.check())
    except S3StoreError as exc:
        raise click.ClickException(f"--to: {exc.strerror or exc}") from None


def print_report(report: CopyReport, to: str) -> None:
    """The human report: what was copied, skipped and verified, then every problem."""
    click.echo(f"copied: {report.copied} ({human_bytes(report.copied_bytes)})")
    click.echo(f"already in the bucket: {report.present} ({human_bytes(report.present_bytes)})")
    if report.unreferenced:
        click.echo(f"of these, blob files no catalog row names: {report.unreferenced}")
    if report.deleted:
        click.echo(f"deleted while copying (nothing to copy): {report.deleted}")
    if report.quarantined:
        click.echo(f"quarantined blobs left behind (bad bytes): {report.quarantined}")
    if report.verified:
        click.echo(
            f"verified in the bucket: {report.verified} ({human_bytes(report.verified_bytes)})"
        )
    listed, more = shown(report.problems)
    for problem in listed:
        tags = f" ({', '.join(problem.tags)})" if problem.tags else ""
        click.echo(f"problem: blake3:{problem.digest}{tags}: {problem.reason}", err=True)
    if more:
        click.echo(f"problem: ... and {more} more", err=True)
    click.echo(
        f"copy-blobs to {to} done in {report.duration_seconds:.1f}s:"
        f" {len(report.problems)} problem(s)"
    )
