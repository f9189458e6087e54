"""``cloudimg tag`` and ``cloudimg rm``: move and drop tags without sending bytes."""

from __future__ import annotations

from pathlib import Path

import click

from cloudimg.cli.client_options import client_errors, client_options, open_session, reference
from cloudimg.client.tagging import delete_tag, retag

__all__ = ["rm", "tag"]


@click.command()
@click.argument("source", metavar="REF")
@click.argument("target", metavar="REPO/IMAGE:TAG")
@client_options
def tag(source: str, target: str, server: str, token_file: Path | None, retries: int) -> None:
    """Point the tag TARGET at the bytes REF names (a tag or a digest); nothing is uploaded."""
    source_ref, target_ref = reference(source), reference(target, tag_only=True)
    with open_session(server, token_file, retries) as session, client_errors():
        digest, url = retag(session, source_ref, target_ref)
    click.echo(f"tagged {target_ref} as {digest}")
    click.echo(f"url: {url}")


@click.command()
@click.argument("ref", metavar="REPO/IMAGE:TAG")
@click.option(
    "--purge-history",
    is_flag=True,
    help="Drop the tag's history too, and the bytes only that history held.",
)
@client_options
def rm(ref: str, purge_history: bool, server: str, token_file: Path | None, retries: int) -> None:
    """Delete a tag (its history and the digests it retains stay downloadable by digest)."""
    target = reference(ref, tag_only=True)
    with open_session(server, token_file, retries) as session, client_errors():
        delete_tag(session, target, purge_history=purge_history)
    click.echo(f"deleted {target}" + (" and its history" if purge_history else ""))
