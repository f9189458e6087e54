"""``cloudimg db``: the catalog schema."""

from __future__ import annotations

import click
from alembic import command
from alembic.util.exc import CommandError

from cloudimg.catalog import upgrade_database
from cloudimg.catalog.database import SchemaVersionError, alembic_config
from cloudimg.cli.options import settings_from, storage_options

__all__ = ["db"]


@click.group()
def db() -> None:
    """Inspect and migrate the catalog schema."""


@db.command()
@storage_options
def upgrade(**values: object) -> None:
    """Apply every pending migration."""
    settings = settings_from(**values)
    settings.data_root.mkdir(parents=True, exist_ok=True)
    try:
        upgrade_database(settings.resolved_database_url)
    except SchemaVersionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("catalog schema is up to date")


@db.command()
@storage_options
def current(**values: object) -> None:
    """Print the schema revision of the catalog."""
    command.current(alembic_config(settings_from(**values).resolved_database_url), verbose=False)


@db.command()
@storage_options
def check(**values: object) -> None:
    """Exit non-zero when the schema does not match the code's models."""
    try:
        command.check(alembic_config(settings_from(**values).resolved_database_url))
    except CommandError as exc:
        raise click.ClickException(str(exc)) from None
