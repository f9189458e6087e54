"""``cloudimg push`` and ``cloudimg pull``: images to and from a server, verified."""

from __future__ import annotations

from pathlib import Path

import click

from cloudimg.cli.client_options import client_errors, client_options, open_session, reference
from cloudimg.cli.flags import option
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.client import UsageError
from cloudimg.client.download import check_destination, has_digest, wanted_blake3
from cloudimg.client.download import pull as pull_image
from cloudimg.client.preflight import check_before_push
from cloudimg.client.resumable import push_resumable
from cloudimg.client.upload import push as push_image
from cloudimg.units import human_bytes

__all__ = ["pull", "push"]


def _meta(values: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        meta[key] = value
    return meta


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("ref", metavar="REPO/IMAGE:TAG")
@click.option("--meta", "meta_items", multiple=True, metavar="KEY=VALUE", help="Metadata (repeat)")
@click.option(
    "--format",
    "image_format",
    default=None,
    help="Declare the image format (raw, qcow2, ...): the server refuses other bytes before "
    "storing anything (a one-request upload, not resumable)",
)
@option(
    "--chunk-mib",
    type=click.IntRange(min=1),
    default=32,
    help="MiB per PATCH of a resumable push (what a broken connection may cost again)",
)
@client_options
@progress_options
def push(
    file: Path,
    ref: str,
    meta_items: tuple[str, ...],
    image_format: str | None,
    chunk_mib: int,
    server: str,
    token_file: Path | None,
    retries: int,
    quiet: bool,
    progress_interval: float,
) -> None:
    """Upload FILE as REPO/IMAGE:TAG, resumably; the server checks the client's digest.

    An interrupted push, run again, sends only what the server does not have yet.
    Prints the digest-pinned URL and the sha256 of what was stored.
    """
    target = reference(ref, tag_only=True)
    meta = _meta(meta_items)
    with (
        open_session(server, token_file, retries) as session,
        client_errors(),
        ProgressDisplay(quiet=quiet, interval=progress_interval) as progress,
    ):
        session.ensure_registry()  # before any byte goes: --server must name a registry
        check_before_push(session, file, target, image_format)
        resumed = 0
        if image_format is None:
            result, resumed = push_resumable(
                session, file, target, meta, progress, chunk_mib * 1024 * 1024
            )
        else:
            result = push_image(
                session,
                file,
                target,
                meta,
                image_format,
                progress,
                on_restart=lambda: progress.restart("pushed"),
            )
    again = f", resumed at {human_bytes(resumed)}" if resumed else ""
    click.echo(f"pushed {target} ({human_bytes(result.size)}{again})")
    click.echo(f"url: {result.url}")
    click.echo(f"blake3: blake3:{result.blake3}")
    click.echo(f"sha256: sha256:{result.sha256}")


@click.command()
@click.argument("ref", metavar="REF")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Replace FILE when it exists and holds other bytes than REF names",
)
@client_options
@progress_options
def pull(
    ref: str,
    file: Path,
    force: bool,
    server: str,
    token_file: Path | None,
    retries: int,
    quiet: bool,
    progress_interval: float,
) -> None:
    """Download REF (REPO/IMAGE:TAG or REPO/IMAGE@blake3:<hex>) into FILE (- for stdout).

    A partial download is resumed; the file is kept only when its digest is right.
    Zero blocks are left as holes. An existing FILE that already holds the bytes REF
    names is left as it is (nothing is downloaded); one that holds other bytes is
    replaced only with --force.
    """
    source = reference(ref)
    dest = None if str(file) == "-" else file
    with client_errors():
        exists = dest is not None and check_destination(dest)
    with (
        open_session(server, token_file, retries) as session,
        client_errors(),
        ProgressDisplay(quiet=quiet, interval=progress_interval) as progress,
    ):
        if dest is not None and exists:
            wanted = wanted_blake3(session, source)
            if has_digest(dest, wanted, progress):
                click.echo(f"{file} already holds {source} ({wanted}): nothing to download")
                return
            if not force:
                raise UsageError(
                    f"{file} exists and holds other bytes than {source} ({wanted});"
                    " --force replaces it"
                )
        result = pull_image(session, source, dest, progress)
    resumed = f", resumed at {human_bytes(result.resumed_from)}" if result.resumed_from else ""
    click.echo(
        f"pulled {source} to {file} ({human_bytes(result.size)}{resumed}): "
        f"blake3:{result.blake3} verified",
        err=dest is None,
    )
