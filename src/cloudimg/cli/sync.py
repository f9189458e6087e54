"""``cloudimg sync``: follow upstream feeds into tags (a client command)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cloudimg.cli.client_options import client_errors, client_options, open_session, reference
from cloudimg.cli.flags import option
from cloudimg.cli.progress import ProgressDisplay, progress_options
from cloudimg.client import ClientError, UsageError
from cloudimg.client.feeds.config import (
    ChecksumSource,
    Feed,
    OciSource,
    SimplestreamsSource,
    Source,
    load_feeds,
)
from cloudimg.client.feeds.sync import default_cache_dir, sync_feed
from cloudimg.client.feeds.upstream import Upstream
from cloudimg.units import human_bytes

__all__ = ["sync"]


@click.command()
@click.argument("ref", metavar="[REPO/IMAGE:TAG]", required=False)
@click.option(
    "--feed-file",
    "-f",
    "feed_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A feed file (YAML or JSON: one feed, or several under 'feeds:'); repeat",
)
@click.option("--checksums", metavar="URL", help="The checksum file of an HTTP directory")
@click.option("--file", "file_name", metavar="NAME", help="With --checksums: the image's name")
@click.option("--signature", metavar="URL", help="With --checksums: its detached signature")
@click.option("--simplestreams", metavar="URL", help="A simplestreams streams/v1/index.json")
@click.option("--release", help="With --simplestreams: the release (noble)")
@click.option("--arch", default="amd64", show_default=True, help="With --simplestreams")
@click.option("--oci", "oci_image", metavar="HOST/NAME:TAG", help="A containerDisk to copy")
@click.option("--insecure", is_flag=True, help="With --oci: the registry speaks plain HTTP")
@click.option(
    "--key",
    "keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An OpenPGP public key (file) upstream must be signed with; repeat",
)
@option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where downloads are kept until pushed (a cut one resumes) "
    "[default: $XDG_CACHE_HOME/cloudimg/sync]",
)
@client_options
@progress_options
def sync(
    ref: str | None,
    feed_files: tuple[Path, ...],
    checksums: str | None,
    file_name: str | None,
    signature: str | None,
    simplestreams: str | None,
    release: str | None,
    arch: str,
    oci_image: str | None,
    insecure: bool,
    keys: tuple[Path, ...],
    cache_dir: Path | None,
    server: str,
    token_file: Path | None,
    retries: int,
    quiet: bool,
    progress_interval: float,
) -> None:
    """Bring tags to what upstream feeds publish, checked against their checksums and
    signatures; nothing is downloaded or pushed when a tag already holds it.

    Feeds come from feed files (-f), or one from the flags and REPO/IMAGE:TAG.
    """
    with client_errors():
        feeds = [feed for path in feed_files for feed in load_feeds(path)]
        if ref is not None or not feeds:
            source = _flag_source(checksums, file_name, signature, simplestreams, release,
                                  arch, oci_image, insecure)  # fmt: skip
            if ref is None:
                raise UsageError("name the tag to sync (REPO/IMAGE:TAG) or give -f FEED_FILE")
            feeds.append(Feed(reference(ref, tag_only=True), source, list(keys)))
    failed: ClientError | None = None
    with (
        open_session(server, token_file, retries) as session,
        Upstream(attempts=retries + 1) as upstream,
        ProgressDisplay(quiet=quiet, interval=progress_interval) as progress,
    ):
        for feed in feeds:
            try:
                outcome = sync_feed(session, upstream, feed, cache_dir or default_cache_dir(),
                                    progress)  # fmt: skip
            except ClientError as exc:
                click.echo(f"Error: {feed}: {exc.message}; the tag is left as it was", err=True)
                failed = failed or exc
                continue
            if outcome.pushed is None:
                click.echo(f"unchanged {feed.target}: {outcome.reason}")
                continue
            again = f", resumed at {human_bytes(outcome.resumed_at)}" if outcome.resumed_at else ""
            click.echo(f"synced {feed.target} from {outcome.reason}{again}")
            click.echo(f"url: {outcome.pushed.url}")
            click.echo(f"sha256: sha256:{outcome.pushed.sha256}")
    if failed is not None:
        sys.exit(failed.exit_code)


def _flag_source(
    checksums: str | None,
    file_name: str | None,
    signature: str | None,
    simplestreams: str | None,
    release: str | None,
    arch: str,
    oci_image: str | None,
    insecure: bool,
) -> Source:
    given = [flag for flag in (checksums, simplestreams, oci_image) if flag]
    if len(given) != 1:
        raise UsageError("give one source: --checksums, --simplestreams or --oci (or -f)")
    stray = [
        name
        for name, value, needs in (
            ("--file", file_name, checksums),
            ("--signature", signature, checksums),
            ("--release", release, simplestreams),
            ("--insecure", insecure, oci_image),
        )
        if value and not needs
    ]
    if stray:
        raise UsageError(f"{', '.join(stray)} belong(s) to another source than the one given")
    if checksums:
        if not file_name:
            raise UsageError("--checksums needs --file NAME: the image's name in it")
        return ChecksumSource(checksums, file_name, signature)
    if simplestreams:
        if not release:
            raise UsageError("--simplestreams needs --release")
        return SimplestreamsSource(simplestreams, release, arch)
    assert oci_image is not None
    return OciSource(oci_image, insecure=insecure)
