"""``cloudimg serve``: migrate the catalog, then run the API in this process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import click
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings

from cloudimg.api import create_app
from cloudimg.api.app import SETTINGS_ENV
from cloudimg.api.auth import RegistryAuth, load_registry_auth
from cloudimg.api.metrics import reset_multiprocess_dir
from cloudimg.api.quota_file import load_quotas
from cloudimg.cli.flags import option
from cloudimg.cli.listener import (
    ListenerError,
    SocketMPServer,
    SocketServer,
    open_listener,
    raise_fd_limit,
)
from cloudimg.cli.options import (
    GlobList,
    PublicUrlParam,
    connection_options,
    flag_error,
    limit_options,
    settings_from,
    storage_options,
)
from cloudimg.cli.storage import prepare_storage
from cloudimg.config import MAX_REDIRECT_EXPIRY_SECS, Settings, SettingsError, settings_to_json
from cloudimg.logs import LOG_FORMATS, LogFormat, configure_logging, granian_log_config
from cloudimg.registry import blob_location

__all__ = ["serve"]

_DEFAULTS = Settings()
# Descriptors besides connections and open blobs: catalog, logs, metrics files, pipes.
_SPARE_DESCRIPTORS = 256


@click.command()
@option(
    "--listener-addr",
    default=_DEFAULTS.listener_addr,
    help="host:port to listen on: a host name (its first address, IPv4 first), an IPv4 "
    "address, [IPv6] or empty (:8080, every interface)",
)
@storage_options
@connection_options
@limit_options
@option("--repo-prefix", default=_DEFAULTS.repo_prefix, help="Path segment of the registry API")
@option("--www-prefix", default=_DEFAULTS.www_prefix, help="Path in front of the repo prefix")
@option(
    "--workers",
    type=click.IntRange(min=1),
    default=_DEFAULTS.workers,
    help="HTTP worker processes sharing the port (1: serve in this process)",
)
@option(
    "--write-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File of bearer tokens (one a line) that POST and DELETE need [default: writes open]",
)
@option(
    "--read-auth",
    type=click.Choice(["none", "basic"]),
    default=_DEFAULTS.read_auth,
    help="'basic': reads need HTTP Basic credentials (or a write token)",
)
@option(
    "--read-credentials-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File of user:password lines for --read-auth basic",
)
@option(
    "--policy-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML or JSON file giving named credentials their scopes [default: no scopes]",
)
@option(
    "--quota-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML or JSON file of per-repository limits on stored bytes and tags "
    "(docs/quotas.md) [default: no quotas]",
)
@option(
    "--web/--no-web",
    default=_DEFAULTS.web,
    help="Serve the web pages under <www-prefix>ui/ (and redirect <www-prefix> to them)",
)
@option(
    "--public-url",
    type=PublicUrlParam(),
    default=None,
    help="http(s)://host[:port] at which clients reach this server: the URLs in the web "
    "pages' commands [default: the Host each page is asked for, when it is a valid host:port]",
)
@option(
    "--keep-history",
    type=click.IntRange(min=0),
    default=_DEFAULTS.keep_history,
    help="Previous digests each tag keeps downloadable by digest (0: freed at once)",
)
@option(
    "--immutable-tags",
    type=GlobList(),
    default="",
    help="Comma-separated globs over repo/image/tag (release/*/v*): existing tags that "
    "match cannot be overwritten, retagged or deleted",
)
@option(
    "--redirect-downloads/--no-redirect-downloads",
    default=_DEFAULTS.redirect_downloads,
    help="Answer a GET of stored image bytes (/reg, /v2 blobs) with 307 to a presigned URL "
    "of the object store, after the same checks (needs --blob-store; clients must reach "
    "the store)",
)
@option(
    "--redirect-expiry-secs",
    type=click.IntRange(min=1, max=MAX_REDIRECT_EXPIRY_SECS),
    default=_DEFAULTS.redirect_expiry_secs,
    help="Seconds a presigned URL of --redirect-downloads is valid (a client must start "
    "its download within them)",
)
@option(
    "--events-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON file of the webhook endpoints the change events are delivered to "
    "(docs/events.md) [default: none; events are pulled from <repo-prefix>/_events]",
)
@option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    help="Access and error logs on stderr: one JSON object a line, or text",
)
def serve(log_format: LogFormat, **values: object) -> None:
    """Serve the registry API (migrates the catalog first)."""
    configure_logging(log_format)
    settings = settings_from(**values)
    try:
        auth = load_registry_auth(settings)  # refuse bad credential files before migrating
        load_quotas(settings)  # and a bad quota file
        settings.check_web()
        blob_location(settings)  # a bad --blob-store is refused before the bind
        settings.check_redirects()
        settings.events()  # a bad --events-config is refused before the bind
        settings.inspection_policy  # noqa: B018  (refuses --qemu-img-check on without qemu-img)
    except SettingsError as exc:
        raise flag_error(exc) from None
    listener = _listen(settings)  # before the data root is touched: an address in use
    prepare_storage(settings, create=True)  # once, before any worker starts
    reset_multiprocess_dir()
    if settings.workers > 1:
        _serve_workers(settings, listener, log_format)
    else:
        asyncio.run(_serve(settings, auth, listener, log_format))


def _listen(settings: Settings) -> socket.socket:
    """Bind the address for this server alone, or exit with one line saying why not."""
    raise_fd_limit(2 * settings.max_connections + _SPARE_DESCRIPTORS)
    try:
        return open_listener(settings.listener_addr, settings.listen_backlog)
    except ListenerError as exc:
        raise click.ClickException(str(exc)) from None


def _granian_options(settings: Settings, log_format: LogFormat) -> dict[str, Any]:
    """What both Granian servers are given: HTTP/1.1 only, the connection limits, logging.

    HTTP/1-only mode, because in ``auto`` mode Granian never closes a connection that
    sends nothing; in HTTP/1 the header read timeout closes it, and an idle keep-alive
    connection too. ``backpressure`` is the number of connections a worker serves at
    once (Granian's default follows the backlog).
    """
    return {
        "interface": Interfaces.ASGI,
        "http": HTTPModes.http1,
        "http1_settings": HTTP1Settings(
            header_read_timeout=settings.read_header_timeout_secs * 1000
        ),
        "backlog": settings.listen_backlog,
        "backpressure": settings.max_connections,
        "websockets": False,
        "log_access": False,
        "log_dictconfig": granian_log_config(log_format),
    }


async def _serve(
    settings: Settings, auth: RegistryAuth | None, listener: socket.socket, log_format: LogFormat
) -> None:
    server = SocketServer(
        create_app(settings, auth), listener=listener, **_granian_options(settings, log_format)
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    await server.serve()


def _serve_workers(settings: Settings, listener: socket.socket, log_format: LogFormat) -> None:
    """Run ``settings.workers`` processes of Granian's multi-process server on one socket.

    Each worker builds the app with ``create_app_from_env`` from the settings this
    process serialises into ``CLOUDIMG_WORKER_SETTINGS``; Granian handles the signals.
    """
    os.environ[SETTINGS_ENV] = settings_to_json(settings)
    server = SocketMPServer(
        "cloudimg.api.app:create_app_from_env",
        listener=listener,
        workers=settings.workers,
        factory=True,
        respawn_failed_workers=True,
        **_granian_options(settings, log_format),
    )
    server.serve()
