"""``cloudimg serve``: migrate the catalog, then run the API in this process."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import click
from granian.constants import Interfaces
from granian.http import HTTP1Settings
from granian.server.embed import Server
from granian.server.mp import MPServer

from cloudimg.api import create_app
from cloudimg.api.app import SETTINGS_ENV
from cloudimg.api.auth import AuthConfigError, load_registry_auth
from cloudimg.api.metrics import reset_multiprocess_dir
from cloudimg.cli.options import limit_options, option, settings_from, storage_options
from cloudimg.cli.storage import prepare_storage
from cloudimg.config import Settings, parse_listener_addr, settings_to_json
from cloudimg.logs import LOG_FORMATS, LogFormat, configure_logging, granian_log_config

__all__ = ["serve"]

_DEFAULTS = Settings()


@click.command()
@option("--listener-addr", default=_DEFAULTS.listener_addr, help="host:port to listen on")
@storage_options
@option(
    "--read-header-timeout-secs",
    type=click.IntRange(min=1),
    default=_DEFAULTS.read_header_timeout_secs,
    help="Disconnect a client that has not sent its request headers in this many seconds",
)
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
        host, port = parse_listener_addr(settings.listener_addr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listener-addr") from None
    try:
        load_registry_auth(settings)  # refuse bad credential files before migrating
    except AuthConfigError as exc:
        raise click.BadParameter(exc.message, param_hint=exc.flag) from None
    prepare_storage(settings, create=True)  # once, before any worker starts
    reset_multiprocess_dir()
    if settings.workers > 1:
        _serve_workers(settings, host, port, log_format)
    else:
        asyncio.run(_serve(settings, host, port, log_format))


async def _serve(settings: Settings, host: str, port: int, log_format: LogFormat) -> None:
    server = Server(
        create_app(settings),
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        http1_settings=HTTP1Settings(header_read_timeout=settings.read_header_timeout_secs * 1000),
        websockets=False,
        log_access=False,
        log_dictconfig=granian_log_config(log_format),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    await server.serve()


def _serve_workers(settings: Settings, host: str, port: int, log_format: LogFormat) -> None:
    """Run ``settings.workers`` processes of Granian's multi-process server on one port.

    Each worker builds the app with ``create_app_from_env`` from the settings this
    process serialises into ``CLOUDIMG_WORKER_SETTINGS``; Granian handles the signals.
    """
    os.environ[SETTINGS_ENV] = settings_to_json(settings)
    server = MPServer(
        "cloudimg.api.app:create_app_from_env",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        factory=True,
        http1_settings=HTTP1Settings(header_read_timeout=settings.read_header_timeout_secs * 1000),
        websockets=False,
        log_access=False,
        log_dictconfig=granian_log_config(log_format),
        respawn_failed_workers=True,
    )
    server.serve()
