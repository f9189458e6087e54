"""``cloudimg ls``, ``inspect`` and ``history``: what a server holds, as tables or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cloudimg.cli.client_options import client_errors, client_options, open_session, reference
from cloudimg.client import parse_listing_target
from cloudimg.client.browse import (
    describe,
    history,
    list_images,
    list_repositories,
    list_tags,
    query_tags,
)
from cloudimg.units import human_bytes

__all__ = ["history_command", "inspect", "ls"]

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def _meta_pair(
    _context: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        pairs.append((key, wanted))
    return pairs


@click.command()
@click.argument("target", required=False, metavar="[REPO[/IMAGE]]")
@click.option(
    "--meta",
    "meta",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_meta_pair,
    help="Only tags whose metadata has KEY equal to VALUE (repeatable: all must hold); "
    "lists tags across repositories, or within REPO[/IMAGE].",
)
@click.option(
    "--has",
    "has",
    multiple=True,
    metavar="KEY",
    help="Only tags whose metadata has KEY, whatever its value (repeatable).",
)
@_json_option
@client_options
def ls(
    target: str | None,
    meta: list[tuple[str, str]],
    has: tuple[str, ...],
    as_json: bool,
    server: str,
    token_file: Path | None,
    retries: int,
) -> None:
    """List repositories, the images of REPO, or the tags of REPO/IMAGE with their details.

    With --meta or --has: the tags (of every repository, or of REPO[/IMAGE]) whose
    metadata matches, from one query of the server.
    """
    with client_errors():
        repo, image = parse_listing_target(target)
    with open_session(server, token_file, retries) as session, client_errors():
        if meta or has:
            # The server matches prefixes; the exact names are kept here.
            found = [
                tag
                for tag in query_tags(session, meta, has, repo or "", image or "")
                if repo in (None, tag.get("repo")) and image in (None, tag.get("image"))
            ]
            if as_json:
                _print_json(found)
            else:
                _print_matches(found)
            return
        if repo is None:
            names, heading = list_repositories(session), "REPOSITORY"
        elif image is None:
            images = list_images(session, repo)
            if as_json:
                _print_json(images)
            else:
                _print_images(images)
            return
        else:
            tags = list_tags(session, repo, image)
            if as_json:
                _print_json(tags)
            else:
                _print_tags(tags)
            return
    if as_json:
        _print_json(names)
    else:
        _print_table([heading], [[name] for name in names])


@click.command()
@click.argument("ref", metavar="REF")
@_json_option
@client_options
def inspect(ref: str, as_json: bool, server: str, token_file: Path | None, retries: int) -> None:
    """Details of REF (a tag or a digest): digests, size, format, metadata, history."""
    image = reference(ref)
    with open_session(server, token_file, retries) as session, client_errors():
        details = describe(session, image)
        if image.tag is not None:
            details["history"] = history(session, image)
    if as_json:
        _print_json(details)
        return
    for key in ("reference", "url", "digest", "sha256", "size", "format", "virtual_size"):
        if key in details:
            click.echo(f"{key + ':':<14}{_shown(key, details[key])}")
    for key in ("created", "updated"):
        if details.get(key):
            click.echo(f"{key + ':':<14}{details[key]}")
    if "immutable" in details:  # a tag's (a digest reference names fixed bytes anyway)
        click.echo(f"{'immutable:':<14}{_immutable(details)}")
    for key, value in sorted(details.get("meta", {}).items()):
        click.echo(f"{'meta.' + key + ':':<14}{value}")
    if "history" in details:
        click.echo("history:")
        _print_history(details["history"])


@click.command("history")
@click.argument("ref", metavar="REPO/IMAGE:TAG")
@_json_option
@client_options
def history_command(
    ref: str, as_json: bool, server: str, token_file: Path | None, retries: int
) -> None:
    """The changes of a tag, newest first, with the digests its history still holds."""
    image = reference(ref, tag_only=True)
    with open_session(server, token_file, retries) as session, client_errors():
        entries = history(session, image)
    if as_json:
        _print_json(entries)
    else:
        _print_history(entries)


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("size", "virtual_size") and isinstance(value, int):
        return f"{human_bytes(value)} ({value} bytes)"
    return str(value)


def _immutable(details: dict[str, Any]) -> str:
    """``yes``, ``yes (rule release/*)``, ``no``; ``-`` from a server that does not say."""
    value = details.get("immutable")
    if value is None:
        return "-"
    rule = details.get("immutable_rule")
    return ("yes" + (f" (rule {rule})" if rule else "")) if value else "no"


def _print_tags(tags: list[dict[str, Any]]) -> None:
    rows = [
        [
            tag["tag"],
            _size(tag.get("size")),
            tag.get("format") or "-",
            _size(tag.get("virtual_size")),
            _short(tag.get("digest")),
            (tag.get("updated") or "")[:19].replace("T", " "),
            _immutable(tag),
        ]
        for tag in tags
    ]
    headings = ["TAG", "SIZE", "FORMAT", "VIRTUAL SIZE", "DIGEST", "UPDATED (UTC)", "IMMUTABLE"]
    _print_table(headings, rows)


def _print_matches(tags: list[dict[str, Any]]) -> None:
    rows = [
        [
            f"{tag.get('repo')}/{tag.get('image')}:{tag.get('tag')}",
            _size(tag.get("size")),
            _short(tag.get("digest")),
            (tag.get("updated") or "")[:19].replace("T", " "),
            " ".join(f"{key}={value}" for key, value in sorted((tag.get("meta") or {}).items())),
        ]
        for tag in tags
    ]
    _print_table(["TAG", "SIZE", "DIGEST", "UPDATED (UTC)", "META"], rows)


def _print_images(images: list[dict[str, Any]]) -> None:
    rows = [
        [
            str(image.get("image")),
            str(image.get("tags", "-")),
            _size(image.get("size")),
            (image.get("updated") or "")[:19].replace("T", " "),
        ]
        for image in images
    ]
    _print_table(["IMAGE", "TAGS", "SIZE", "UPDATED (UTC)"], rows)


def _print_history(entries: list[dict[str, Any]]) -> None:
    rows = [
        [
            (entry.get("at") or "")[:19].replace("T", " "),
            str(entry.get("action")),
            _short(entry.get("digest")),
            _size(entry.get("size")),
            entry.get("actor") or "-",
            "yes" if entry.get("retained") else "no",
        ]
        for entry in entries
    ]
    _print_table(["AT (UTC)", "ACTION", "DIGEST", "SIZE", "ACTOR", "RETAINED"], rows)


def _size(value: Any) -> str:
    return human_bytes(value) if isinstance(value, int) else "-"


def _short(digest: Any) -> str:
    """``blake3:0123456789ab``: enough to tell images apart (``--json`` has them whole)."""
    return str(digest)[:19] if digest else "-"


def _print_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(*headings, box=None, pad_edge=False, show_edge=False)
    for row in rows:
        table.add_row(*row)
    # Off a terminal (a pipe, a CI log) no width cuts a column short.
    width = None if sys.stdout.isatty() else 1000
    Console(file=sys.stdout, width=width, highlight=False).print(table)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))
