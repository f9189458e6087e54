"""Settings: one explicit object built from flags and ``CLOUDIMG_*`` variables."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from cloudimg.images import (
    DEFAULT_ALLOWED_FORMATS,
    DEFAULT_MAX_VIRTUAL_SIZE,
    InspectionPolicy,
    find_qemu_img,
)
from cloudimg.webhooks import EventsConfig, EventsConfigError, load_events_config

__all__ = [
    "MAX_REDIRECT_EXPIRY_SECS",
    "READ_AUTH_MODES",
    "Settings",
    "SettingsError",
    "is_host_port",
    "normalize_prefix",
    "parse_listener_addr",
    "parse_public_url",
    "parse_size",
    "settings_from_json",
    "settings_to_json",
]


READ_AUTH_MODES = ("none", "basic")
MAX_REDIRECT_EXPIRY_SECS = 7 * 24 * 3600
"""The longest life of a presigned URL: S3's SigV4 query signing allows no more."""


class SettingsError(ValueError):
    """A setting that cannot be used: ``setting`` names its field (the CLI maps it to a flag)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a server or maintenance command needs to know."""

    data_root: Path = Path("./data")
    """Directory holding the blob tree, staging files and (by default) the SQLite catalog."""

    database_url: str | None = None
    """SQLAlchemy async URL of the catalog; ``None`` means SQLite inside ``data_root``."""

    listener_addr: str = "localhost:8080"
    """``host:port`` the HTTP server listens on (``:8080`` means every interface)."""

    read_header_timeout_secs: int = 2
    """A client that has not sent its request headers by then is disconnected.

    It also bounds a connection that sends nothing at all, and an idle keep-alive
    connection between two requests (the server speaks HTTP/1.1 only).
    """

    listen_backlog: int = 4096
    """Connections the kernel queues before the server accepts them (capped by somaxconn)."""

    max_connections: int = 4096
    """Connections one worker process serves at once; more wait in the backlog."""

    repo_prefix: str = "reg"
    """First path segment of the registry API."""

    www_prefix: str = "/"
    """Path in front of the repo prefix (for a reverse proxy that keeps its own prefix)."""

    workers: int = 1
    """HTTP worker processes on the one port (1: the server runs in the ``serve`` process)."""

    write_token_file: Path | None = None
    """Bearer tokens (one a line) that POST and DELETE need; ``None`` leaves writes open."""

    read_auth: str = "none"
    """``none`` (reads are open) or ``basic`` (reads need Basic credentials or a write token)."""

    read_credentials_file: Path | None = None
    """``user:password`` lines accepted for reads when ``read_auth`` is ``basic``."""

    policy_file: Path | None = None
    """Scopes of the named credentials (docs/security.md); ``None``: every credential may do all."""

    quota_file: Path | None = None
    """Per-repository limits on bytes and tags (docs/quotas.md); ``None``: no quotas."""

    max_image_size: int | None = None
    """Largest ``img`` part an upload may carry, in bytes; ``None`` means no limit."""

    read_body_timeout_secs: float = 60.0
    """An upload whose body sends nothing for this long is aborted (408) and dropped."""

    sqlite_busy_timeout_secs: float = 15.0
    """How long a SQLite catalog write waits for another writer's lock before a 503."""

    keep_history: int = 3
    """Previous digests each tag keeps downloadable (0: a tag's old bytes go at once)."""

    immutable_tags: tuple[str, ...] = ()
    """Glob patterns over ``repo/image/tag``: existing tags that match cannot be
    overwritten, retagged or deleted."""

    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE
    """Largest virtual size (the disk a VM sees) of an image the server stores, in bytes."""

    allowed_formats: tuple[str, ...] = DEFAULT_ALLOWED_FORMATS
    """Image formats the server stores (qemu-img names; ``vhd`` is ``vpc``)."""

    qemu_img_check: str = "auto"
    """``auto``: qemu-img confirms every accepted image when it is on ``PATH``; ``on``:
    it must be; ``off``: never (see docs/security.md)."""

    events_config: Path | None = None
    """JSON file of the change events' webhook endpoints and delivery settings
    (``cloudimg.webhooks``, docs/events.md); ``None``: events are only pulled."""

    def events(self) -> EventsConfig:
        """The events settings file read and checked (no file: no endpoints).

        Raises:
            SettingsError: on ``events_config``, saying what is wrong in it.
        """
        if self.events_config is None:
            return EventsConfig()
        try:
            return load_events_config(self.events_config)
        except EventsConfigError as exc:
            raise SettingsError("events_config", str(exc)) from None

    @property
    def inspection_policy(self) -> InspectionPolicy:
        """What inspection accepts besides its safety rules (see ``cloudimg.images``).

        Raises:
            SettingsError: ``qemu_img_check`` is ``on`` and no qemu-img is on ``PATH``.
        """
        qemu_img = None if self.qemu_img_check == "off" else find_qemu_img()
        if qemu_img is None and self.qemu_img_check == "on":
            raise SettingsError("qemu_img_check", "is on but no qemu-img is on PATH")
        return InspectionPolicy(
            self.max_virtual_size, frozenset(self.allowed_formats), qemu_img=qemu_img
        )

    web: bool = True
    """Serve the web pages under ``<www-prefix>ui/`` and redirect ``<www-prefix>`` to them."""

    public_url: str | None = None
    """``scheme://host[:port]`` at which clients reach this server (``--public-url``): the
    web pages' copyable snippets name it. ``None``: the address each page was asked for
    (its ``Host``), when that is a valid ``host[:port]``."""

    blob_store: str | None = None
    """Where blobs live: ``s3://bucket`` or ``s3://bucket/prefix`` (an S3-compatible
    object store, reached at ``s3_endpoint``); ``None`` (or empty): the file system in
    ``data_root``. Checked by ``cloudimg.registry.blob_location``."""

    s3_endpoint: str | None = None
    """``http(s)://host[:port]`` of the object store; ``None``: AWS's own for the region."""

    s3_region: str | None = None
    """The object store's region (``None``: ``us-east-1``, what most self-hosted stores take)."""

    s3_path_style: bool = False
    """Address the bucket as ``endpoint/bucket`` (SeaweedFS, MinIO, Ceph RGW) rather than
    ``bucket.endpoint``. Credentials come from boto3's usual chain only (``AWS_*``
    variables, a shared credentials file, a role): never a setting, which a command line
    would show in ``ps``."""

    redirect_downloads: bool = False
    """A ``GET`` of stored image bytes (``/reg`` by tag or digest, ``/v2`` blobs) answers
    ``307`` to a short-lived presigned URL of the object, after the same checks as a
    download the server sends; clients then need a route to the object store. Only with
    ``blob_store`` (the file system has no address to send a client to)."""

    redirect_expiry_secs: int = 300
    """How long a presigned URL of ``redirect_downloads`` is valid (1 s to 7 days): a
    client must start its request within it; one that has started reads on."""

    def check_redirects(self) -> None:
        """Refuse redirects without an object store, and a URL life S3 cannot sign.

        Raises:
            SettingsError: on ``redirect_downloads`` or ``redirect_expiry_secs``.
        """
        if not 1 <= self.redirect_expiry_secs <= MAX_REDIRECT_EXPIRY_SECS:
            raise SettingsError(
                "redirect_expiry_secs", f"is 1 to {MAX_REDIRECT_EXPIRY_SECS} (7 days)"
            )
        if self.redirect_downloads and not self.blob_store:  # empty: the file system too
            raise SettingsError(
                "redirect_downloads",
                "needs blob_store s3://...: the file system store has no address to send "
                "a client to",
            )

    @property
    def uses_data_root(self) -> bool:
        """Whether anything lives in ``data_root``: the file system's blobs or the
        default SQLite catalog (a bucket and a catalog elsewhere need no local volume)."""
        return not self.blob_store or not self.database_url

    @property
    def resolved_database_url(self) -> str:
        """The catalog URL, defaulting to ``catalog.sqlite3`` inside the data root."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_root / 'catalog.sqlite3').resolve()}"

    def check_auth(self) -> None:
        """Refuse authentication settings that do not go together (files are read later).

        Raises:
            SettingsError: naming the setting at fault; its message names others by field.
        """
        if self.read_auth not in READ_AUTH_MODES:
            raise SettingsError("read_auth", f"unknown mode {self.read_auth!r}")
        basic = self.read_auth == "basic"
        if basic and self.read_credentials_file is None:
            raise SettingsError("read_auth", "'basic' needs read_credentials_file")
        if not basic and self.read_credentials_file is not None:
            raise SettingsError("read_credentials_file", "is only used with read_auth basic")
        if basic and self.write_token_file is None and self.policy_file is None:
            raise SettingsError(
                "read_auth", "needs write_token_file or policy_file: writes would be open"
            )
        # A policy_file without write_token_file must list an OIDC issuer: checked when
        # the file is read (cloudimg.api.auth.load_registry_auth).

    def check_web(self) -> None:
        """Refuse a registry API mounted where the web pages are (``<www-prefix>ui``), and
        a public URL the pages could not put into a command.

        Raises:
            SettingsError: on ``repo_prefix``, when the pages are on and it is ``ui``; on
                ``public_url``, when it is not ``http(s)://host[:port]``.
        """
        if self.web and self.repo_prefix.strip("/") == "ui":
            raise SettingsError(
                "repo_prefix", "'ui' is taken by the pages; pick another or turn them off"
            )
        if self.public_url is not None:
            try:
                parse_public_url(self.public_url)
            except ValueError as exc:
                raise SettingsError("public_url", str(exc)) from None

    @property
    def api_base(self) -> str:
        """Path at which the registry API is mounted, e.g. ``/reg`` or ``/mirror/reg``."""
        return normalize_prefix(self.www_prefix).rstrip("/") + "/" + self.repo_prefix.strip("/")


def normalize_prefix(prefix: str) -> str:
    """Return ``prefix`` with exactly one leading slash and no trailing one (``/`` stays ``/``)."""
    stripped = prefix.strip("/")
    return "/" + stripped if stripped else "/"


def parse_listener_addr(addr: str) -> tuple[str, int]:
    """Split ``host:port`` the way Go's ``net.SplitHostPort`` does.

    The host is a name, an IPv4 address, a bracketed IPv6 address (``[::1]:8080``,
    returned without brackets) or empty (``:8080``: every interface, returned as ``""``).

    Raises:
        ValueError: when the port is missing or out of range, or an IPv6 address has no brackets.
    """
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listener address {addr!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"listener address {addr!r}: brackets are for IPv6 addresses")
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"listener address {addr!r} is not host:port (write IPv6 as [::1]:8080)")
    return (host, int(port_text))


# A DNS name (labels of letters, digits, "-" and "_", dot-separated, optionally a final
# dot) or an IPv4 address: RFC 3986's reg-name without its percent-encoding and
# sub-delims ("!$&'()*+,;="), which are shell and YAML syntax.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def is_host_port(authority: str) -> bool:
    """Whether ``authority`` is ``host[:port]`` safe to put into a URL in a command.

    The host is a DNS name or IPv4 address (``registry.example``, ``10.0.0.5``), or an
    IPv6 address in brackets (``[::1]``, no zone); the port is 1 to 5 digits up to 65535.
    That is RFC 3986's ``host [ ":" port ]`` less what a shell or YAML would read as
    syntax: percent-encoding, sub-delims and IPvFuture literals.
    """
    host, port = authority, ""
    if authority.startswith("["):
        literal, close, port = authority[1:].partition("]")
        if not close or "%" in literal:
            return False
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
        if port:
            if not port.startswith(":"):
                return False
            port = port[1:] or "-"
    else:
        host, colon, port = authority.partition(":")
        if colon and not port:
            return False
        if len(host) > 253 or not _HOST_NAME.fullmatch(host):
            return False
    return not port or (_PORT.fullmatch(port) is not None and int(port) <= 65535)


def parse_public_url(text: str) -> str:
    """``http(s)://host[:port]`` from ``text`` (a trailing ``/`` dropped, the scheme
    lower-cased): the origin clients reach the server at, without a path (``/v2`` must
    sit at the host's root).

    Raises:
        ValueError: for another scheme, credentials, a path, a query or fragment, or a
            host that ``is_host_port`` refuses.
    """
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError(f"{text!r} carries credentials; give only scheme://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in text:
        raise ValueError(
            f"{text!r} has a path, query or fragment; give only scheme://host[:port] "
            "(--www-prefix and --repo-prefix add the path)"
        )
    if not is_host_port(parts.netloc):
        raise ValueError(f"{text!r}: the host is not a DNS name, IPv4 or [IPv6] (with a port)")
    return f"{scheme}://{parts.netloc}"


def settings_to_json(settings: Settings) -> str:
    """``settings`` as one JSON object, to hand them to worker processes explicitly."""
    return msgspec.json.encode(settings, enc_hook=_encode_path).decode()


def settings_from_json(text: str) -> Settings:
    """The inverse of :func:`settings_to_json`, checked against the fields' types."""
    return msgspec.json.decode(text, type=Settings, dec_hook=_decode_path)


def _encode_path(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot serialise a setting of type {type(value).__name__}")


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path:
        return Path(value)
    raise NotImplementedError(f"cannot read a setting of type {kind.__name__}")


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes of ``10G``, ``512M``, ``64K`` or ``1048576`` (binary units; ``Gi``/``GiB`` too).

    Raises:
        ValueError: when ``text`` is not a non-negative whole number with an optional unit.
    """
    stripped = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = stripped.rstrip("KMGT"), stripped[len(stripped.rstrip("KMGT")) :]
    if not number.isdigit() or len(unit) > 1 or not number.isascii():
        raise ValueError(f"size {text!r} is not a number of bytes like 1048576, 512M or 10G")
    return int(number) * _SIZE_UNITS[unit]
