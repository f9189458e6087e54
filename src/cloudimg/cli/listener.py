"""The server's listening socket: bound once, exclusively, before anything else happens.

Granian binds its own sockets with ``SO_REUSEPORT``, which lets a second server on the
same address start silently and the kernel split clients between two registries. So
``cloudimg serve`` binds the socket itself, without ``SO_REUSEPORT``, before it touches
the data root: a taken address is one line and a non-zero exit, and nothing can join the
socket later. Granian gets the descriptor (worker processes inherit it and accept on it
together), through the hand-off it uses on platforms without ``SO_REUSEPORT``.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import socket
from typing import Any

from granian._granian import SocketHolder
from granian.server.embed import Server
from granian.server.mp import MPServer

from cloudimg.config import parse_listener_addr

__all__ = [
    "ListenerError",
    "SocketMPServer",
    "SocketServer",
    "open_listener",
    "raise_fd_limit",
]

_log = logging.getLogger(__name__)


class ListenerError(Exception):
    """The address cannot be listened on; the message is one line for the operator."""


def open_listener(addr: str, backlog: int) -> socket.socket:
    """A TCP socket listening on ``addr`` (``host:port``) that no other process shares.

    A host name binds the first address it resolves to, IPv4 first (as Go's
    ``net.Listen``); an empty host listens on every interface, IPv6 and IPv4 where the
    machine has IPv6.

    Raises:
        ListenerError: when ``addr`` is malformed, does not resolve, or cannot be bound
            (in use by another program or another cloudimg, not an address of this
            machine, a privileged port).
    """
    try:
        host, port = parse_listener_addr(addr)
    except ValueError as exc:
        raise ListenerError(str(exc)) from None
    if host:
        return _bind(addr, *_resolve(addr, host, port), backlog, v6only=True)
    if socket.has_dualstack_ipv6():
        try:
            return _bind(addr, socket.AF_INET6, ("::", port), backlog, v6only=False)
        except _AddressUnavailable:
            pass  # IPv6 is switched off on this host (or in this pod): IPv4 alone
    return _bind(addr, socket.AF_INET, ("0.0.0.0", port), backlog, v6only=True)


class _AddressUnavailable(ListenerError):
    """The address is not one of this host's (for ``::``: IPv6 is off), not a port in use."""


def _bind(
    addr: str, family: socket.AddressFamily, sockaddr: Any, backlog: int, v6only: bool
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only lets a restart bind over the old server's TIME_WAIT
        # connections; without SO_REUSEPORT a listening socket is never shared.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" serves IPv4 too (":port"); an explicit IPv6 address only IPv6.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = addr if _format(sockaddr) == addr else f"{addr} ({_format(sockaddr)})"
        error = (
            _AddressUnavailable
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
            else ListenerError
        )
        raise error(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


def _resolve(addr: str, host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    """The family and socket address of ``host``'s first address, IPv4 first."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ListenerError(
            f"cannot listen on {addr}: {host!r} does not resolve ({exc.strerror})"
        ) from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # stable: IPv4 first
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, sockaddr


def _format(sockaddr: Any) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound_address(sock: socket.socket) -> tuple[str, int]:
    """Host and port ``sock`` is bound to (the port the kernel chose for ``:0``)."""
    name = sock.getsockname()
    return str(name[0]), int(name[1])


class SocketServer(Server):
    """Granian's embedded server on a socket bound by :func:`open_listener`."""

    def __init__(self, target: Any, *, listener: socket.socket, **options: Any) -> None:
        host, port = bound_address(listener)  # for Granian's "Listening at" line
        super().__init__(target, address=host, port=port, **options)
        self._listener = listener

    def _init_shared_socket(self) -> None:
        # The holder owns the descriptor from here on.
        _hand_over(self, self._listener.detach())


class SocketMPServer(MPServer):
    """Granian's multi-process server; every worker accepts on the one inherited socket."""

    def __init__(self, target: Any, *, listener: socket.socket, **options: Any) -> None:
        host, port = bound_address(listener)
        super().__init__(target, address=host, port=port, **options)
        self._listener = listener
        _stop_starting_workers_by_default()

    def _init_shared_socket(self) -> None:
        # The holder goes to each worker by descriptor number; the socket object beside
        # it (``_sso``) carries that descriptor into the child (pickling passes it on
        # under the "spawn" start method) and is closed by Granian at shutdown.
        self._listener.set_inheritable(True)
        _hand_over(self, self._listener.fileno())
        self._sso = self._listener


_fork_hook_registered = False


def _stop_starting_workers_by_default() -> None:
    """Let SIGTERM and SIGINT end a forked worker that is still starting.

    A forked worker inherits the parent's Python handler, which only flags the parent's
    (copied) state, until it installs its own after building the app; a stop in that
    window was swallowed, the parent waited for the worker forever, and a kill of the
    parent left the worker serving the socket. The default action ends it instead.
    """
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_default_stop_signals)
        _fork_hook_registered = True


def _default_stop_signals() -> None:
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, signal.SIG_DFL)


def _hand_over(server: Any, fd: int) -> None:
    """Give Granian a listening descriptor it did not bind.

    This is Granian's own path on platforms where it does not bind one socket per
    worker with ``SO_REUSEPORT`` (``AbstractServer._init_shared_socket``): no socket
    spec, a ``SocketHolder`` of the descriptor. Granian offers no supported way to take
    a bound socket, so these private names hold for the pinned version only: what to
    check on an upgrade, and the test that guards it, are in docs/development.md
    ("Granian is pinned").
    """
    holder: Any = SocketHolder  # its stub declares no constructor arguments
    server._ssp = None
    server._shd = holder(fd, False, server.backlog)
    server._sfd = fd


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; warn when it stays below ``wanted``.

    Every connection is a descriptor and every download one more (the open blob), so
    the usual soft limit of 1,024 would refuse connections long before the
    connection limit. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            _log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        _log.warning(
            "open-file limit %d is below the %d that --max-connections needs; "
            "connections beyond it fail (raise the hard limit, ulimit -Hn)",
            soft,
            wanted,
        )
    return soft
