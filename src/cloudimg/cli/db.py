"""``cloudimg db``: the catalog schema (the blob store is not reached: a catalog can be
prepared before its bucket exists)."""

from __future__ import annotations

import click

from cloudimg.catalog.schema import (
    ModelMismatchError,
    check_models,
    current_revision,
    head_revision,
)
from cloudimg.cli.options import settings_from, storage_options
from cloudimg.cli.storage import catalog_errors, prepare_storage

__all__ = ["db"]


@click.group()
def db() -> None:
    """Inspect and migrate the catalog schema."""


@db.command()
@storage_options
def upgrade(**values: object) -> None:
    """Apply every pending migration (creates the data root and catalog when missing)."""
    prepare_storage(settings_from(**values), create=True, blobs=False)
    click.echo("catalog schema is up to date")


@db.command()
@storage_options
def current(**values: object) -> None:
    """Print the schema revision of the catalog (exit 1 when there is no catalog)."""
    url = prepare_storage(
        settings_from(**values), create=False, writable=False, migrate=False, blobs=False
    )
    with catalog_errors(url):
        revision = current_revision(url)
    click.echo(f"{revision} (head)" if revision == head_revision() else str(revision))


@db.command()
@storage_options
def check(**values: object) -> None:
    """Exit non-zero when the schema does not match the code's models."""
    url = prepare_storage(
        settings_from(**values), create=False, writable=False, migrate=False, blobs=False
    )
    try:
        with catalog_errors(url):
            check_models(url)
    except ModelMismatchError as exc:
        raise click.ClickException(str(exc)) from None
