"""A TCP proxy between a client and a real server, to make transfer faults for real.

It forwards bytes both ways and can, in the server's answer, flip one byte of the body
(a corrupting middlebox) or close the connection after some body bytes (a network
that drops); it can flip a byte of what the client sends, and counts those bytes (what
a resumed push sends again); it can answer requests of one method (on paths with one
ending, if told) with 405 itself, as a server older than that route does.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

__all__ = ["Proxy", "RecordedRequest", "RecordingProxy", "proxy"]

_HEADER_END = b"\r\n\r\n"


@dataclass
class Proxy:
    """Where to connect (``url``) and what the proxy saw and did."""

    upstream_port: int
    flip_body_byte: int | None = None
    """Flip the bits of this byte of each answer's body (the first answer per connection)."""
    cut_after_body_bytes: int | None = None
    """Close the connection once this many body bytes of an answer have gone through."""
    flip_sent_byte: int | None = None
    """Flip the bits of this byte of what the clients send, counted over all connections
    (past the first request's headers, it lands in an upload's body)."""
    refuse_method: str | None = None
    """Answer each request with this method 405 (its body read first), as a server without
    the route does; other requests go through."""
    refuse_path_suffix: str | None = None
    """With ``refuse_method``: refuse only the requests whose path ends with this (a server
    without that one route)."""
    refuse_at_most: int | None = None
    """With ``refuse_method``: refuse this many requests, then let the others through."""
    refused: int = 0
    """Requests answered 405 (``refuse_method``)."""
    port: int = 0
    sent_upstream: int = 0
    """Bytes the client sent, all connections together."""
    sent_downstream: int = 0
    """Bytes the server answered, all connections together (what a pull fetched)."""
    _listener: socket.socket = field(default_factory=socket.socket)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept)

    def stop(self) -> None:
        self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            if self.refuse_method is not None:
                self._spawn(self._refusing, client, server, self.refuse_method)
                continue
            self._spawn(self._upstream, client, server)
            self._spawn(self._downstream, server, client)

    def _upstream(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    at = self.sent_upstream
                    self.sent_upstream += len(data)
                flip = self.flip_sent_byte
                if flip is not None and at <= flip < at + len(data):
                    changed = bytearray(data)
                    changed[flip - at] ^= 0xFF
                    data = bytes(changed)
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(server)

    def _refusing(self, client: socket.socket, server: socket.socket, method: str) -> None:
        """Requests one at a time (``Content-Length`` bodies): answer ``method`` with 405,
        forward the others and their answers."""
        pending = b""
        try:
            while True:
                while _HEADER_END not in pending:
                    data = client.recv(65536)
                    if not data:
                        return
                    pending += data
                end = pending.index(_HEADER_END) + len(_HEADER_END)
                head, pending = pending[:end], pending[end:]
                length = _content_length(head)
                while len(pending) < length:
                    data = client.recv(65536)
                    if not data:
                        return
                    pending += data
                body, pending = pending[:length], pending[length:]
                limit = self.refuse_at_most
                if _refused(head, method, self.refuse_path_suffix) and (
                    limit is None or self.refused < limit
                ):
                    with self._lock:
                        self.refused += 1
                    client.sendall(_METHOD_NOT_ALLOWED)
                    continue
                server.sendall(head + body)
                client.sendall(_answer(server))
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)

    def _downstream(self, server: socket.socket, client: socket.socket) -> None:
        head = b""
        body = -1  # body bytes seen; -1 while the header is still coming
        try:
            while data := server.recv(65536):
                if body < 0:
                    head += data
                    if _HEADER_END not in head:
                        continue
                    end = head.index(_HEADER_END) + len(_HEADER_END)
                    client.sendall(head[:end])
                    data, body = head[end:], 0
                data = self._fault(bytearray(data), body)
                body += len(data)
                with self._lock:
                    self.sent_downstream += len(data)
                client.sendall(data)
                cut = self.cut_after_body_bytes
                if cut is not None and body >= cut:
                    break
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)

    def _fault(self, data: bytearray, offset: int) -> bytearray:
        cut = self.cut_after_body_bytes
        if cut is not None:
            data = data[: max(cut - offset, 0)]
        flip = self.flip_body_byte
        if flip is not None and offset <= flip < offset + len(data):
            data[flip - offset] ^= 0xFF
        return data


# The JSON error shape cloudimg answers a method without a route with.
_METHOD_NOT_ALLOWED = (
    b"HTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\n"
    b"content-length: 58\r\n\r\n"
    b'{"status":"INVALID_ARGUMENT","error":"Method Not Allowed"}'
)


_EXPIRED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message></Error>"
)
# What S3 answers a presigned URL past its expiry.
_EXPIRED = (
    b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\n"
    + f"content-length: {len(_EXPIRED_BODY)}\r\n\r\n".encode()
    + _EXPIRED_BODY
)


def _refused(head: bytes, method: str, suffix: str | None) -> bool:
    """Whether the request ``head`` is one to answer 405: ``method``, and its path ends
    with ``suffix`` when one is given."""
    verb, _, rest = head.partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    return verb == method.encode() and (suffix is None or target.endswith(suffix.encode()))


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _answer(server: socket.socket) -> bytes:
    """One answer of the server, with a ``Content-Length`` body."""
    answer = b""
    while _HEADER_END not in answer:
        data = server.recv(65536)
        if not data:
            raise OSError("the server closed the connection before answering")
        answer += data
    end = answer.index(_HEADER_END) + len(_HEADER_END)
    while len(answer) < end + _content_length(answer[:end]):
        data = server.recv(65536)
        if not data:
            break
        answer += data
    return answer


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextmanager
def proxy(upstream_port: int, **faults: int | None) -> Iterator[Proxy]:
    """A running proxy to ``127.0.0.1:upstream_port`` with ``faults``; closed at the end."""
    running = Proxy(upstream_port, **faults)  # type: ignore[arg-type]
    running.start()
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class RecordedRequest:
    """One request a :class:`RecordingProxy` passed on: its line and its header fields."""

    method: str
    target: str
    headers: dict[str, str]
    """Names in lower case."""


@dataclass
class RecordingProxy:
    """Passes bytes both ways unchanged (the ``Host`` a signature covers stays the
    client's) and records every request's head, to check what clients send a server.

    Requests follow one another on a connection, each with a ``Content-Length`` body or
    none (what boto3 and the download clients send); ``Expect: 100-continue`` works, as
    bodies are passed on as they come. ``host`` may be another loopback address than
    the server's (127.0.0.2), so that clients see another host name.
    """

    upstream_port: int
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    expire_presigned: int = 0
    """Answer this many of the next requests by a presigned URL (``X-Amz-Signature``)
    with S3's 403 for an expired URL, without passing them on."""
    _listener: socket.socket = field(default_factory=socket.socket)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._listener.bind((self.host, 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._listener.close()

    def recorded(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.requests)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        pending = b""
        try:
            while True:
                while _HEADER_END not in pending:
                    data = client.recv(65536)
                    if not data:
                        return
                    pending += data
                end = pending.index(_HEADER_END) + len(_HEADER_END)
                head, pending = pending[:end], pending[end:]
                if self._record(head):
                    client.sendall(_EXPIRED)
                    continue
                server.sendall(head)
                remaining = _content_length(head)
                while remaining > 0:
                    if not pending:
                        pending = client.recv(65536)
                        if not pending:
                            return
                    piece, pending = pending[:remaining], pending[remaining:]
                    server.sendall(piece)
                    remaining -= len(piece)
        except OSError:
            pass
        finally:
            _close(server)

    def _record(self, head: bytes) -> bool:
        """Record the request ``head``; whether to answer it as expired instead."""
        line, *fields = head.decode("latin-1").split("\r\n")
        method, _, rest = line.partition(" ")
        headers = {}
        for text in fields:
            name, colon, value = text.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        target = rest.rpartition(" ")[0]
        with self._lock:
            self.requests.append(RecordedRequest(method, target, headers))
            if self.expire_presigned > 0 and "X-Amz-Signature=" in target:
                self.expire_presigned -= 1
                return True
        return False

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)
