"""The ``cloudimg`` click group."""

from __future__ import annotations

import logging

import click

from cloudimg import __version__
from cloudimg.cli.browse import history_command, inspect, ls
from cloudimg.cli.db import db
from cloudimg.cli.du import du
from cloudimg.cli.fsck import fsck
from cloudimg.cli.gc import gc
from cloudimg.cli.import_legacy import import_legacy_command
from cloudimg.cli.serve import serve
from cloudimg.cli.tagging import rm, tag
from cloudimg.cli.transfer import pull, push

__all__ = ["cli", "main"]


@click.group()
@click.version_option(__version__, prog_name="cloudimg")
def cli() -> None:
    """cloudimg: a registry for virtual-machine disk images."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


cli.add_command(serve)
cli.add_command(db)
cli.add_command(gc)
cli.add_command(fsck)
cli.add_command(import_legacy_command)
cli.add_command(du)
for client_command in (push, pull, ls, inspect, history_command, tag, rm):
    cli.add_command(client_command)


def main() -> None:
    """Entry point of the console script."""
    cli()
