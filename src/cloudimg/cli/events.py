"""``cloudimg events``: the change events' dead letters, listed and sent again
(docs/events.md). The servers deliver; these commands only read and mark the catalog."""

from __future__ import annotations

import json
from typing import Any

import click

from cloudimg.blobstore import MaintenanceBlobStore
from cloudimg.catalog import Catalog
from cloudimg.catalog.events import DeadLetter
from cloudimg.cli.options import settings_from, storage_options
from cloudimg.cli.output import run

__all__ = ["events"]


@click.group()
def events() -> None:
    """The change events: dead letters of the webhook endpoints."""


def _view(dead: DeadLetter) -> dict[str, Any]:
    return {
        "id": dead.id,
        "endpoint": dead.endpoint,
        "sequence": dead.event.sequence,
        "event_id": dead.event.uid,
        "type": dead.event.type,
        "subject": dead.event.subject,
        "time": dead.event.time.isoformat(),
        "dead_lettered_at": dead.at.isoformat(),
        "attempts": dead.attempts,
        "error": dead.error,
        "resend": dead.resend,
    }


@events.command("dead-letters")
@storage_options
@click.option("--endpoint", default=None, help="Only this endpoint's dead letters.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
def dead_letters(endpoint: str | None, as_json: bool, **values: object) -> None:
    """List the events an endpoint did not take within its dead-letter time, oldest first."""
    settings = settings_from(**values)
    found = run(
        settings,
        lambda catalog, _blobs: catalog.events.dead_letters(endpoint),
        writable=False,
    )
    if as_json:
        click.echo(json.dumps({"dead_letters": [_view(d) for d in found]}, indent=2))
        return
    if not found:
        click.echo("no dead letters")
    for dead in found:
        mark = " (resend pending)" if dead.resend else ""
        click.echo(
            f"{dead.id}\t{dead.endpoint}\t{dead.event.type}\t{dead.event.subject}\t"
            f"{dead.at.isoformat()}\t{dead.error}{mark}"
        )


@events.command()
@storage_options
@click.argument("ids", nargs=-1, type=click.IntRange(min=1), required=True)
def resend(ids: tuple[int, ...], **values: object) -> None:
    """Send the dead letters IDS again (as `dead-letters` lists them).

    The server holding the delivery lease sends them before its endpoint's next events,
    retrying until the endpoint takes them, then drops them from the list. An id no
    dead letter has exits 1 and marks nothing.
    """
    settings = settings_from(**values)

    async def work(catalog: Catalog, _blobs: MaintenanceBlobStore) -> list[int]:
        known = {d.id for d in await catalog.events.dead_letters()}
        missing = sorted(set(ids) - known)
        if missing:
            return missing
        await catalog.events.mark_resend(list(ids))
        return []

    missing = run(settings, work)
    if missing:
        raise click.ClickException(f"no dead letter has the id {', '.join(map(str, missing))}")
    click.echo(f"marked {len(set(ids))} dead letter(s) to be sent again")
