"""Options shared by commands; each also reads ``CLOUDIMG_<FLAG_NAME>`` from the environment."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cloudimg.cli.flags import envvar, option
from cloudimg.config import Settings, SettingsError, parse_public_url, parse_size
from cloudimg.images import parse_allowed_formats

__all__ = [
    "GlobList",
    "PublicUrlParam",
    "connection_options",
    "envvar",
    "flag_error",
    "inspection_options",
    "limit_options",
    "option",
    "settings_from",
    "storage_options",
]

F = TypeVar("F", bound=Callable[..., Any])
_DEFAULTS = Settings()


def storage_options(func: F) -> F:
    """``--data-root``, ``--database-url`` and the blob store's: where the registry's
    state lives. No credential flag: a secret on a command line shows in ``ps``; the
    object store's credentials come from boto3's ``AWS_*`` variables or files."""
    func = option(
        "--s3-path-style/--no-s3-path-style",
        default=_DEFAULTS.s3_path_style,
        help="Address the bucket as endpoint/bucket (SeaweedFS, MinIO, Ceph RGW), "
        "not bucket.endpoint",
    )(func)
    func = option(
        "--s3-region",
        default=None,
        help="Region of the object store [default: us-east-1]",
    )(func)
    func = option(
        "--s3-endpoint",
        default=None,
        help="http(s)://host[:port] of the object store [default: AWS's for the region]",
    )(func)
    func = option(
        "--blob-store",
        default=None,
        help="s3://bucket[/prefix]: keep blobs in an S3-compatible object store (credentials: "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_SHARED_CREDENTIALS_FILE) "
        "[default: files in the data root]",
    )(func)
    func = option(
        "--database-url",
        default=None,
        help="SQLAlchemy async URL of the catalog [default: SQLite file in the data root]",
    )(func)
    return option(
        "--data-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=_DEFAULTS.data_root,
        help="Directory of the blob store (unless --blob-store) and of the default SQLite catalog",
    )(func)


class SizeParam(click.ParamType):  # type: ignore[type-arg]
    """A byte count: ``1048576``, ``512M``, ``10G`` (binary units)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class PublicUrlParam(click.ParamType):  # type: ignore[type-arg]
    """``http(s)://host[:port]``: where clients reach the server (``parse_public_url``)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_public_url(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class GlobList(click.ParamType):  # type: ignore[type-arg]
    """Comma-separated glob patterns (``release/*/v*,base/*/stable``), as a tuple."""

    name = "globs"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        patterns = tuple(part.strip() for part in str(value).split(",") if part.strip())
        for pattern in patterns:
            if pattern.count("/") != 2:
                self.fail(f"{pattern!r} is not a glob over repo/image/tag", param, ctx)
        return patterns


class FormatsParam(click.ParamType):  # type: ignore[type-arg]
    """A comma-separated list of image formats: ``raw,qcow2,vhd``."""

    name = "formats"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(sorted(parse_allowed_formats(str(value))))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def inspection_options(func: F) -> F:
    """What inspection accepts besides its safety rules: formats and virtual size.

    The server's uploads, and ``fsck --inspect`` and ``import-legacy``, which must judge
    stored and imported images as the servers judge uploads.
    """
    func = option(
        "--qemu-img-check",
        type=click.Choice(("auto", "on", "off")),
        default=_DEFAULTS.qemu_img_check,
        help="Have qemu-img confirm every image inspection accepts, before it is stored: "
        "auto (when qemu-img is on PATH), on (it must be), off",
    )(func)
    func = option(
        "--allowed-formats",
        type=FormatsParam(),
        default=",".join(_DEFAULTS.allowed_formats),
        help="Image formats uploads (and fsck --inspect, import-legacy) accept, "
        "comma-separated (qemu-img names; vhd is vpc)",
    )(func)
    return option(
        "--max-virtual-size",
        type=SizeParam(),
        default=str(_DEFAULTS.max_virtual_size // 1024**4) + "T",
        help="Largest virtual size (the disk a VM sees) of an image uploads (and fsck "
        "--inspect, import-legacy) accept (bytes, or 512G, 2T)",
    )(func)


def limit_options(func: F) -> F:
    """What a server accepts and how long it waits: image size and kind, body stalls,
    catalog locks."""
    func = inspection_options(func)
    func = option(
        "--sqlite-busy-timeout-secs",
        type=click.FloatRange(min=0),
        default=_DEFAULTS.sqlite_busy_timeout_secs,
        help="How long a write waits for a locked SQLite catalog before answering 503",
    )(func)
    func = option(
        "--read-body-timeout-secs",
        type=click.FloatRange(min=0, min_open=True),
        default=_DEFAULTS.read_body_timeout_secs,
        help="Abort an upload (408) whose body sends nothing for this many seconds",
    )(func)
    return option(
        "--max-image-size",
        type=SizeParam(),
        default=None,
        help="Largest image an upload may carry (bytes, or 512M, 10G) [default: unlimited]",
    )(func)


def connection_options(func: F) -> F:
    """How many connections a server takes and how long it waits for a silent one."""
    func = option(
        "--max-connections",
        type=click.IntRange(min=1),
        default=_DEFAULTS.max_connections,
        help="Connections each worker process serves at once; more wait in the backlog",
    )(func)
    func = option(
        "--listen-backlog",
        type=click.IntRange(min=1),
        default=_DEFAULTS.listen_backlog,
        help="Connections the kernel queues until they are accepted (capped by somaxconn)",
    )(func)
    return option(
        "--read-header-timeout-secs",
        type=click.IntRange(min=1),
        default=_DEFAULTS.read_header_timeout_secs,
        help="Close a connection that has not sent a request's headers in this many seconds "
        "(also a silent new connection and an idle keep-alive one)",
    )(func)


def settings_from(**values: Any) -> Settings:
    """Settings from the parsed options (unknown keys are other commands' business)."""
    fields = {name: values[name] for name in Settings.__dataclass_fields__ if name in values}
    return Settings(**fields)


def flag_error(exc: SettingsError) -> click.BadParameter:
    """A settings error told in flags: ``read_auth`` is ``--read-auth``, in the message too."""
    names = "|".join(Settings.__dataclass_fields__)
    message = re.sub(rf"\b({names})\b", lambda match: _flag(match[1]), exc.message)
    return click.BadParameter(message, param_hint=_flag(exc.setting))


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")
