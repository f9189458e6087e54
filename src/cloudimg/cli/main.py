"""The ``cloudimg`` click group."""

from __future__ import annotations

import logging

import click

from cloudimg import __version__
from cloudimg.cli.db import db
from cloudimg.cli.serve import serve

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


def main() -> None:
    """Entry point of the console script."""
    cli()
