"""Checks before a command touches the data root and the catalog: one line, never a traceback.

Only ``serve``, ``db upgrade`` and ``import-legacy`` create a registry (the data root,
the SQLite file, the schema); every other command refuses a data root or a catalog
that is not there, so a typo in a CronJob fails instead of reporting a healthy, empty
registry.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from cloudimg.blobstore import OpenedBlobStore
from cloudimg.catalog import upgrade_database
from cloudimg.catalog.database import (
    CatalogUrlError,
    async_url,
    describe_database_error,
    display_url,
    sqlite_path,
)
from cloudimg.catalog.schema import SchemaVersionError, current_revision
from cloudimg.cli.options import flag_error
from cloudimg.config import Settings, SettingsError
from cloudimg.registry import open_blob_store

__all__ = ["catalog_errors", "catalog_url", "prepare_storage"]

_CREATORS = "`cloudimg serve`, `cloudimg db upgrade` and `cloudimg import-legacy` create one"


def prepare_storage(
    settings: Settings,
    *,
    create: bool,
    writable: bool = True,
    migrate: bool = True,
    blobs: bool = True,
) -> str:
    """Check (or, with ``create``, make) the data root, the blob store and the catalog;
    returns the catalog URL.

    ``writable``: the command writes, so this user must be able to write the data root
    and its directories. ``migrate``: bring the schema to this code's head (logged only
    when a migration runs). ``blobs``: the command uses the blob store (not ``db``), so
    a bucket it names must answer (one attempt, no retry loop at start).
    The data root is neither made nor checked when nothing lives there (a bucket and a
    catalog elsewhere).

    Raises:
        click.ClickException: one line saying what is wrong and what to do.
        click.BadParameter: ``--blob-store`` or ``--s3-endpoint`` cannot be used.
    """
    url = catalog_url(settings)
    try:
        store = open_blob_store(settings)
    except SettingsError as exc:
        raise flag_error(exc) from None
    root = settings.data_root
    if settings.uses_data_root:
        if create:
            _create(root)
        elif not _is_dir(root):
            raise click.ClickException(
                f"the data root {root.absolute()} does not exist: check --data-root"
                f" (CLOUDIMG_DATA_ROOT); {_CREATORS}"
            )
        if writable:
            _check_writable(root, store)
    if blobs:
        _check_blob_store(store)
    if create:
        _create_layout(root, store)
    with catalog_errors(url):
        if not create:
            _require_catalog(url)
        if migrate:
            upgrade_database(url)
    return url


def catalog_url(settings: Settings) -> str:
    """The catalog URL of ``settings`` with its async driver, or one line saying why not."""
    try:
        return async_url(settings.resolved_database_url)
    except CatalogUrlError as exc:
        raise click.ClickException(f"--database-url (CLOUDIMG_DATABASE_URL): {exc}") from None


@contextmanager
def catalog_errors(url: str) -> Iterator[None]:
    """Turn a catalog database that cannot be reached or used into one line."""
    try:
        yield
    except SchemaVersionError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        line = describe_database_error(exc, url)
        if line is None:
            raise
        raise click.ClickException(line) from None


def _is_dir(root: Path) -> bool:
    """Whether the data root is a directory; one line when this user cannot even look.

    ``Path.is_dir`` raises ``PermissionError`` (not False) when an ancestor of ``root``
    cannot be searched by this user: a data root inside another user's 0700 directory.
    """
    try:
        return root.is_dir()
    except OSError as exc:
        raise click.ClickException(
            f"cannot reach the data root {root.absolute()} ({exc.strerror}):"
            " check --data-root (CLOUDIMG_DATA_ROOT) and who may search its directories"
            + _owner_hint(root)
        ) from None


def _create(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else root
        raise click.ClickException(
            f"cannot create the data root {root} ({where}: {exc.strerror}):"
            " give --data-root (CLOUDIMG_DATA_ROOT) a directory on a writable volume"
            + _owner_hint(where)
        ) from None


def _check_blob_store(store: OpenedBlobStore) -> None:
    """A bucket that is missing, refuses the credentials or does not answer: one line
    naming the bucket and endpoint (never a secret). The file system store has nothing to
    reach: its data root is checked (with its owner) by the steps here."""
    try:
        asyncio.run(store.check())
    except OSError as exc:
        raise click.ClickException(
            f"cannot use the blob store: {exc.strerror or exc}: check --blob-store"
            " (CLOUDIMG_BLOB_STORE), --s3-endpoint and the AWS_* credentials"
        ) from None


def _create_layout(root: Path, store: OpenedBlobStore) -> None:
    try:
        store.ensure_layout()
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else root
        raise click.ClickException(
            f"cannot create {where}: {exc.strerror}" + _owner_hint(where)
        ) from None


def _check_writable(root: Path, store: OpenedBlobStore) -> None:
    """Every directory the command writes into: the root (catalog file) and the blob
    store's, when its blobs are files."""
    for directory in (root, *store.directories):
        if not directory.exists():
            continue  # created later (serve) or by opening the catalog, in a writable root
        if not os.access(directory, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE):
            raise click.ClickException(
                f"cannot write to {directory}: {_why_not(directory)}" + _owner_hint(directory)
            )


_EFFECTIVE = os.access in os.supports_effective_ids


def _why_not(directory: Path) -> str:
    try:
        readonly = os.statvfs(directory).f_flag & os.ST_RDONLY
    except OSError as exc:
        return exc.strerror or "not accessible"
    return "read-only file system" if readonly else "permission denied"


def _owner_hint(path: Path) -> str:
    """Who runs and who owns ``path`` (or what blocks it), when another uid owns that.

    Walks up past what does not exist and past what cannot be looked at: an ancestor
    this user cannot search (another user's 0700 directory) makes ``stat`` of everything
    below it fail with ``PermissionError``, and that ancestor is the one named.
    """
    seen = path
    while True:
        try:
            owner = os.stat(seen).st_uid
            break
        except OSError:
            if seen == seen.parent:
                return ""
            seen = seen.parent
    uid = os.geteuid()
    if owner == uid:
        return ""
    which = "it" if seen == path else str(seen)
    return (
        f"; {which} belongs to uid {owner} and this runs as uid {uid}: run as its owner, or"
        " chown it (Kubernetes: securityContext.fsGroup)"
    )


def _require_catalog(url: str) -> None:
    """A catalog with a schema must be there already (opening SQLite would create one)."""
    database = sqlite_path(url)
    if database is not None and not database.exists():
        raise click.ClickException(
            f"no catalog at {database}: is --data-root (CLOUDIMG_DATA_ROOT) the registry's?"
            f" {_CREATORS}"
        )
    if current_revision(url) is None:
        shown = database or display_url(url)
        raise click.ClickException(
            f"the catalog {shown} is empty (no cloudimg schema): is --database-url"
            f" (CLOUDIMG_DATABASE_URL) the registry's? {_CREATORS.replace('one', 'it')}"
        )
