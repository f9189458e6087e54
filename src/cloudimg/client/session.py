"""One HTTP session with a server: its API root, credentials, retries and error answers.

Retries (tenacity) cover what a later attempt can fix: no connection, a connection that
broke mid-transfer, and 502/503/504/429 answers. Every other answer is final. The
credentials go only in request headers; no message this module builds contains them.
"""

from __future__ import annotations

import base64
import json
import netrc
import os
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tenacity

from cloudimg.client.errors import (
    ClientError,
    ConnectionFailedError,
    NotFoundError,
    RefusedError,
)

__all__ = ["API_ROOT", "Credentials", "Session", "check", "default_netrc", "repr_sha256"]

T = TypeVar("T")
API_ROOT = "/reg"
"""Where the API lives when ``--server`` gives no path (the server's default prefixes)."""
_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
_TIMEOUT = httpx.Timeout(300.0, connect=10.0, pool=30.0)


@dataclass(frozen=True)
class Credentials:
    """A bearer token for writes; Basic credentials (or the token) for reads."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    netrc_file: Path | None = None
    """A netrc file to take the server host's Basic credentials from, when there is one."""

    def read_auth(self, host: str) -> httpx.Auth | None:
        if self.user is not None and self.password is not None:
            return httpx.BasicAuth(self.user, self.password)
        found = self._netrc_entry(host)
        if found is not None:
            return httpx.BasicAuth(*found)
        return self.write_auth()

    def write_auth(self) -> httpx.Auth | None:
        return _Bearer(self.token) if self.token else None

    def _netrc_entry(self, host: str) -> tuple[str, str] | None:
        if self.netrc_file is None or not self.netrc_file.is_file():
            return None
        try:
            entry = netrc.netrc(str(self.netrc_file)).authenticators(host)
        except (OSError, netrc.NetrcParseError) as exc:
            raise ClientError(f"cannot read {self.netrc_file}: {exc}") from None
        if entry is None:
            return None
        login, _account, password = entry
        return login, password or ""


class _Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class _TransientStatusError(Exception):
    """A 502/503/504/429 answer: worth another attempt."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class Session:
    """Requests to one server's API root, with retries and one-line errors."""

    def __init__(
        self,
        server: str,
        credentials: Credentials,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
    ) -> None:
        url = httpx.URL(server)
        if url.scheme not in ("http", "https") or not url.host:
            raise ClientError(f"--server {server!r} is not an http:// or https:// URL")
        path = url.path.rstrip("/") or API_ROOT
        self.root = str(url.copy_with(path=path, query=None, fragment=None))
        self.origin = str(url.copy_with(path="", query=None, fragment=None)).rstrip("/")
        self.credentials = credentials
        self.attempts = attempts
        self.backoff = backoff
        self._http = httpx.Client(timeout=_TIMEOUT, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def url(self, path: str, *, absolute: bool = False) -> str:
        """The URL of ``path`` under the API root (``absolute``: under the server's origin,
        as the OCI face's paths and the ``Location`` headers are)."""
        return str(httpx.URL(self.origin).join(path)) if absolute else self.root + path

    def absolute(self, location: str) -> str:
        """A ``Location`` the server sent (an absolute path) as a full URL."""
        return str(httpx.URL(self.origin).join(location))

    def request(
        self,
        method: str,
        path: str,
        *,
        write: bool = False,
        absolute: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """``method path`` with retries; an answer of 400 or more is raised as its error."""

        def attempt() -> httpx.Response:
            return self.checked(self.raw(method, path, write=write, absolute=absolute, **kwargs))

        return self.retrying(attempt, f"{method} {path}")

    def raw(
        self,
        method: str,
        path: str,
        *,
        write: bool = False,
        absolute: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """One attempt, its answer whatever the status (``checked`` tells the errors)."""
        url = self.url(path, absolute=absolute)
        return self._http.request(method, url, auth=self._auth(write), **kwargs)

    def checked(self, response: httpx.Response) -> httpx.Response:
        """``response``, or the error its status stands for."""
        check(response)
        return response

    @contextmanager
    def stream(
        self, method: str, path: str, *, write: bool = False, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """One streamed request, without retries (the caller retries the whole transfer)."""
        with self._http.stream(
            method, self.url(path), auth=self._auth(write), **kwargs
        ) as response:
            if response.status_code >= 400:
                response.read()
                check(response)
            yield response

    def retrying(
        self,
        work: Callable[[], T],
        what: str,
        before_retry: Callable[[], None] | None = None,
    ) -> T:
        """Run ``work``, again after a transient failure, up to ``attempts`` times in all."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff, max=30),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _TransientStatusError)),
            before_sleep=(lambda _state: before_retry()) if before_retry else None,
            reraise=True,
        )
        try:
            return retrying(work)
        except _TransientStatusError as exc:
            raise ConnectionFailedError(
                f"{what}: {_describe(exc.response)} (after {self.attempts} attempt(s))"
            ) from None
        except httpx.ConnectError as exc:
            raise ConnectionFailedError(
                f"cannot connect to {self.origin}: {exc} (after {self.attempts} attempt(s))"
            ) from None
        except httpx.TransportError as exc:
            raise ConnectionFailedError(
                f"{what} failed: {type(exc).__name__}: {exc or 'connection lost'}"
                f" (after {self.attempts} attempt(s))"
            ) from None

    def _auth(self, write: bool) -> httpx.Auth | None:
        if write:
            return self.credentials.write_auth()
        return self.credentials.read_auth(httpx.URL(self.origin).host)


def check(response: httpx.Response) -> None:
    """Raise the error an answer of 400 or more stands for (transient ones are retried)."""
    status = response.status_code
    if status < 400:
        return
    if status in _TRANSIENT_STATUSES:
        raise _TransientStatusError(response)
    message = _describe(response)
    if status == 404:
        raise NotFoundError(message)
    if status >= 500 and status != 507:
        raise ConnectionFailedError(message)
    if status == 401:
        message += " (writes need CLOUDIMG_TOKEN or --token-file; reads netrc or CLOUDIMG_USER)"
    raise RefusedError(message)


def _describe(response: httpx.Response) -> str:
    """``404 NOT_FOUND: tag not found``: the server's JSON error in one line."""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        body = {"status": errors[0].get("code"), "error": errors[0].get("message")}  # OCI face
    if isinstance(body, dict) and "error" in body:
        code = body.get("status", "")
        text = f"{response.status_code} {code}: {body['error']}"
        context = body.get("context")
        if isinstance(context, dict) and context:
            details = ", ".join(f"{key}={value}" for key, value in sorted(context.items()))
            text += f" ({details})"
    else:
        text = f"{response.status_code} {response.reason_phrase}"
    return " ".join(text.split())


def repr_sha256(headers: httpx.Headers) -> str | None:
    """The hex sha256 of ``Repr-Digest: sha-256=:<base64>:`` (RFC 9530), if given."""
    for member in headers.get("Repr-Digest", "").split(","):
        name, _eq, value = member.strip().partition("=")
        if name == "sha-256":
            return base64.b64decode(value.strip(":")).hex()
    return None


def default_netrc() -> Path:
    """``$NETRC``, else ``~/.netrc``."""
    return Path(os.environ.get("NETRC") or Path.home() / ".netrc")
