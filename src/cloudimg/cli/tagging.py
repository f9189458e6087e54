"""``cloudimg tag``, ``rm`` and ``immutable``: move, drop and protect tags without sending bytes."""

from __future__ import annotations

from pathlib import Path

import click

from cloudimg.cli.client_options import client_errors, client_options, open_session, reference
from cloudimg.client.tagging import delete_tag, held_by_history, retag, set_immutable
from cloudimg.units import human_bytes

__all__ = ["immutable", "rm", "tag"]


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
    """Delete a tag (its history and the digests it retains stay downloadable by digest).

    Says what the history still holds, which gc does not free, and how to free it.
    """
    target = reference(ref, tag_only=True)
    with open_session(server, token_file, retries) as session, client_errors():
        delete_tag(session, target, purge_history=purge_history)
        held = None if purge_history else held_by_history(session, target)
    click.echo(f"deleted {target}" + (" and its history" if purge_history else ""))
    if held is not None:
        click.echo(
            f"its history still holds {held.digests} image(s), {human_bytes(held.size)},"
            f" downloadable by digest; gc does not free them: `cloudimg rm {target}"
            " --purge-history` drops the history and frees what no other tag holds"
        )


@click.command()
@click.argument("ref", metavar="REPO/IMAGE:TAG")
@click.option(
    "--release",
    is_flag=True,
    help="Release the tag: it may be overwritten, retagged and deleted again.",
)
@client_options
def immutable(ref: str, release: bool, server: str, token_file: Path | None, retries: int) -> None:
    """Make a tag immutable: no push over it, retag or rm until it is released.

    An operator's rule (the server's --immutable-tags) cannot be released this way.
    """
    target = reference(ref, tag_only=True)
    with open_session(server, token_file, retries) as session, client_errors():
        changed = set_immutable(session, target, not release)
    if release:
        click.echo(f"released {target}" if changed else f"{target} was not immutable")
    else:
        click.echo(f"{target} is immutable" if changed else f"{target} was immutable already")
