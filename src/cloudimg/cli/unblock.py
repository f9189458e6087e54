"""``cloudimg unblock``: serve an image an operator (``fsck --block-unsafe``) blocked."""

from __future__ import annotations

import json

import click

from cloudimg.cli.options import settings_from, storage_options
from cloudimg.cli.output import run
from cloudimg.digest import parse_digest
from cloudimg.errors import NotFoundError

__all__ = ["unblock"]


def _blake3(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        digest = parse_digest(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if digest.algorithm != "blake3":
        raise click.BadParameter("name the blob by its blake3 digest, as fsck lists it")
    return digest.hex


@click.command()
@storage_options
@click.argument("digest", callback=_blake3)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
def unblock(digest: str, as_json: bool, **values: object) -> None:
    """Lift the block on the image DIGEST (blake3:<hex>): its downloads are served again.

    The act is logged with the rule the image was blocked for. A blob that is not
    blocked is left as it is (exit 0); a digest no blob has exits 1. The next
    `fsck --inspect` (`--reinspect` for an image inspected before) judges the bytes
    again under the policy in force, and `--block-unsafe` blocks them again if they
    still break a rule.
    """
    settings = settings_from(**values)
    try:
        block = run(settings, lambda catalog, _blobs: catalog.maintenance.unblock_blob(digest))
    except NotFoundError:
        raise click.ClickException(f"no blob has the digest blake3:{digest}") from None
    if as_json:
        body = {
            "digest": f"blake3:{digest}",
            "unblocked": block is not None,
            "rule": block.rule if block else None,
            "since": block.since.isoformat() if block else None,
        }
        click.echo(json.dumps(body, indent=2, sort_keys=True))
    elif block is None:
        click.echo(f"blake3:{digest} is not blocked; nothing changed")
    else:
        click.echo(
            f"unblocked blake3:{digest} (blocked since {block.since.isoformat()} for the "
            f"image safety rule {block.rule}): its downloads are served again"
        )
