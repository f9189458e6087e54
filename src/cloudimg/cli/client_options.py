"""What every client command shares: the server, credentials, retries, one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from cloudimg.cli.flags import option
from cloudimg.client import ClientError, Credentials, ImageRef, Session, UsageError, parse_image_ref
from cloudimg.client.session import default_netrc
from cloudimg.client.token_source import CommandToken, FileToken, TokenSource

__all__ = ["client_errors", "client_options", "open_session", "reference"]

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SERVER = "http://localhost:8080"


def client_options(func: F) -> F:
    """``--server``, ``--token-file``, ``--token-command`` and ``--retries`` (each with its
    ``CLOUDIMG_*``)."""
    func = option(
        "--token-command",
        default=None,
        expose_value=False,  # kept in the click context: the commands' signatures stay
        callback=_keep_token_command,
        help="A command that prints a bearer token (an OIDC token, e.g. 'kubectl create "
        "token NAME --audience cloudimg'), run without a shell, again when the token "
        "nears its expiry or is refused",
    )(func)
    func = option(
        "--retries",
        type=click.IntRange(min=0),
        default=4,
        help="Retries of a request that failed for a reason a retry can fix "
        "(no connection, a broken transfer, 429/502/503/504), with growing pauses",
    )(func)
    func = option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="File holding the bearer token for writes, re-read when it changes (a "
        "projected service-account token) [default: CLOUDIMG_TOKEN]",
    )(func)
    return option(
        "--server",
        default=DEFAULT_SERVER,
        help="The registry's URL (HOST:PORT means http://HOST:PORT); a path in it is the "
        "API root [default path: /reg]",
    )(func)


_TOKEN_COMMAND = "cloudimg.token_command"


def _keep_token_command(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[_TOKEN_COMMAND] = value


@contextmanager
def client_errors() -> Iterator[None]:
    """Turn a ``ClientError`` into ``Error: <one line>`` on stderr and its exit code."""
    try:
        yield
    except ClientError as exc:
        click.echo(f"Error: {exc.message}", err=True)
        sys.exit(exc.exit_code)


def reference(text: str, *, tag_only: bool = False) -> ImageRef:
    """A reference from the command line; a bad one exits 2 with one line."""
    with client_errors():
        return parse_image_ref(text, tag_only=tag_only)


@contextmanager
def open_session(server: str, token_file: Path | None, retries: int) -> Iterator[Session]:
    """A session with the credentials of the environment; client errors become exits."""
    # httpx logs every request at INFO; a person running the command sees progress instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with client_errors():
        tokens = _tokens(token_file)
        credentials = Credentials(
            token=os.environ.get("CLOUDIMG_TOKEN") or None if tokens is None else None,
            user=os.environ.get("CLOUDIMG_USER") or None,
            password=os.environ.get("CLOUDIMG_PASSWORD"),
            netrc_file=default_netrc(),
            token_source="CLOUDIMG_TOKEN" if tokens is None else tokens.description,
            tokens=tokens,
        )
        with Session(server, credentials, attempts=retries + 1) as session:
            yield session


def _tokens(token_file: Path | None) -> TokenSource | None:
    """The token's source: ``--token-command`` or ``--token-file`` (not both); None:
    ``CLOUDIMG_TOKEN`` or no token."""
    context = click.get_current_context(silent=True)
    command = context.meta.get(_TOKEN_COMMAND) if context is not None else None
    if command and token_file is not None:
        raise UsageError("--token-file and --token-command exclude each other")
    if command:
        return CommandToken(command)
    return FileToken(token_file) if token_file is not None else None
