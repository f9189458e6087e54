"""The one translation of database driver errors into domain errors, for reads and writes.

Locked, unreachable, lost connections, serialization failures and a full volume are
the database's state, not bugs: each becomes a ``CloudimgError`` here, so no layer
above the catalog looks at SQLAlchemy's or a driver's exceptions.
"""

from __future__ import annotations

import socket

from sqlalchemy.exc import (
    DatabaseError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)

from cloudimg.errors import CloudimgError, InsufficientStorageError, UnavailableError

__all__ = ["is_retryable", "translate", "unavailable_reason"]

_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
_RETRYABLE_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def translate(exc: BaseException) -> CloudimgError | None:
    """The domain error ``exc`` means; None when it is no database state (a bug keeps it)."""
    if isinstance(exc, DBAPIError) and _is_disk_full(exc):
        return InsufficientStorageError("the catalog database has no room left; nothing changed")
    reason = unavailable_reason(exc)
    if reason is None:
        return None
    return UnavailableError("the catalog database is unavailable; try again", {"reason": reason})


def is_retryable(exc: BaseException) -> bool:
    """Lost races: a unique or foreign key clash, a deadlock, a serialization failure."""
    if isinstance(exc, IntegrityError):
        return True
    return isinstance(exc, DBAPIError) and _sqlstate(exc.orig) in _RETRYABLE_STATES


def unavailable_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means the catalog database cannot serve now; None for any other error.

    Operational errors (locked, unreachable, disk I/O, no such table on a database that
    went away) and connection failures are the database's state, not a bug: a retry
    may succeed. Driver messages carry no file paths; socket errors are reduced to
    their ``strerror`` so no address is shown either.
    """
    if isinstance(exc, DBAPIError):
        operational = isinstance(exc, OperationalError | InterfaceError)
        if operational or exc.connection_invalidated or type(exc) is DatabaseError:
            return (_first_line(exc.orig) if exc.orig else "") or type(exc).__name__
        return None
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return exc.strerror or type(exc).__name__
    # asyncpg raises its own errors while connecting (a database that was dropped, a
    # server shutting down); SQLAlchemy hands them through unwrapped.
    if type(exc).__module__.startswith("asyncpg"):
        state = _sqlstate(exc)
        if state.startswith(("08", "3D", "53", "57P")) or "Connection" in type(exc).__name__:
            return _first_line(exc) or type(exc).__name__
    return None


def _is_disk_full(exc: DBAPIError) -> bool:
    """SQLite's SQLITE_FULL or PostgreSQL's disk_full: the database's volume is full."""
    orig = exc.orig
    return getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL or _sqlstate(orig) == (
        _PG_DISK_FULL
    )


def _sqlstate(error: object) -> str:
    return str(getattr(error, "sqlstate", None) or getattr(error, "pgcode", None) or "")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().split("\n", 1)[0][:200]
