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
from cloudimg.client import ClientError, Credentials, ImageRef, Session, parse_image_ref
from cloudimg.client.session import default_netrc

__all__ = ["client_errors", "client_options", "open_session", "reference"]

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SERVER = "http://localhost:8080"


def client_options(func: F) -> F:
    """``--server``, ``--token-file`` and ``--retries`` (each with its ``CLOUDIMG_*``)."""
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
        help="File holding the bearer token for writes [default: CLOUDIMG_TOKEN]",
    )(func)
    return option(
        "--server",
        default=DEFAULT_SERVER,
        help="The registry's URL (HOST:PORT means http://HOST:PORT); a path in it is the "
        "API root [default path: /reg]",
    )(func)


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
        credentials = Credentials(
            token=_token(token_file),
            user=os.environ.get("CLOUDIMG_USER") or None,
            password=os.environ.get("CLOUDIMG_PASSWORD"),
            netrc_file=default_netrc(),
            token_source="CLOUDIMG_TOKEN" if token_file is None else f"--token-file {token_file}",
        )
        with Session(server, credentials, attempts=retries + 1) as session:
            yield session


def _token(token_file: Path | None) -> str | None:
    """The token file's first word (lines starting with ``#`` skipped), else ``CLOUDIMG_TOKEN``."""
    if token_file is None:
        return os.environ.get("CLOUDIMG_TOKEN") or None
    try:
        lines = token_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read --token-file {token_file}: {exc}") from None
    for line in lines:
        words = line.split()
        if words and not words[0].startswith("#"):
            return words[-1]
    raise ClientError(f"--token-file {token_file} holds no token")
