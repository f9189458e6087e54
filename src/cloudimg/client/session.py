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
import re
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
    UsageError,
)
from cloudimg.client.token_source import TokenSource

__all__ = [
    "API_ROOT",
    "Credentials",
    "Session",
    "check",
    "default_netrc",
    "repr_sha256",
    "server_url",
]

T = TypeVar("T")
API_ROOT = "/reg"
"""Where the API lives when ``--server`` gives no path (the server's default prefixes)."""
_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
_TIMEOUT = httpx.Timeout(300.0, connect=10.0, pool=30.0)
_MAX_HOPS = 5
"""Redirects a download follows from the registry's (the store may send one of its own)."""
_S3_ERROR = re.compile(r"<Code>([^<]{1,100})</Code>(?:.*?<Message>([^<]{0,300})</Message>)?", re.S)


@dataclass(frozen=True)
class Credentials:
    """A bearer token for writes; Basic credentials (or the token) for reads."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    netrc_file: Path | None = None
    """A netrc file to take the server host's Basic credentials from, when there is one."""
    token_source: str = "CLOUDIMG_TOKEN"
    """Where the token came from, for messages (``--token-file PATH``); never the token."""
    tokens: TokenSource | None = None
    """A token that may change (a file re-read, a command run again); wins over ``token``."""

    def read_auth(self, host: str) -> httpx.Auth | None:
        if self.user is not None and self.password is not None:
            return httpx.BasicAuth(self.user, self.password)
        found = self._netrc_entry(host)
        if found is not None:
            return httpx.BasicAuth(*found)
        return self.write_auth()

    def write_auth(self) -> httpx.Auth | None:
        if self.tokens is not None:
            return _RenewedBearer(self.tokens)
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


class _RenewedBearer(httpx.Auth):
    """The current token of a source; after a 401, once more with a renewed token when
    the request can be sent again (its body is bytes, not a stream already sent)."""

    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._tokens.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401 or not isinstance(request.stream, httpx.ByteStream):
            return
        if self._tokens.renew(token):
            request.headers["Authorization"] = f"Bearer {self._tokens.token()}"
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
        url = server_url(server)
        path = url.path.rstrip("/") or API_ROOT
        self.root = str(url.copy_with(path=path, query=None, fragment=None))
        self.origin = str(url.copy_with(path="", query=None, fragment=None)).rstrip("/")
        self.credentials = credentials
        self.attempts = attempts
        self.backoff = backoff
        self._http = httpx.Client(timeout=_TIMEOUT, follow_redirects=False)
        self._registry_seen = False

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
        """``response``, or the error its status stands for.

        An answer under the API root that is a 404, or an error that is not the JSON a
        cloudimg server gives, makes the session ask the root first: a ``--server`` that
        names no cloudimg registry (another service, the OCI face ``/v2``, a wrong path)
        is said as such (``UsageError``) rather than as a missing tag.
        """
        status = response.status_code
        final = status >= 400 and status not in _TRANSIENT_STATUSES
        if (
            final
            and self._under_root(response)
            and (status in (404, 405) or not _cloudimg_error(response))
        ):
            self.ensure_registry()
        check(response, self.credentials)
        return response

    def ensure_registry(self) -> None:
        """Raise ``UsageError`` unless the API root answers as a cloudimg registry does:
        ``GET`` gives the JSON list of repositories, or a cloudimg error asking for
        credentials. Asked once per session; a root that cannot be reached tells nothing
        here (the request that failed says why)."""
        if self._registry_seen:
            return
        try:
            response = self._http.get(self.root, auth=self._auth(False))
        except httpx.TransportError:
            return
        if _lists_repositories(response) or (
            response.status_code in (401, 403) and _cloudimg_error(response)
        ):
            self._registry_seen = True
            return
        raise UsageError(
            f"{self.root} does not answer as a cloudimg registry"
            f" (GET {self.root} gave {_summary(response)}); check --server"
        )

    def _under_root(self, response: httpx.Response) -> bool:
        try:
            url = str(response.request.url.copy_with(query=None, fragment=None))
        except RuntimeError:  # a response made without a request
            return False
        return url == self.root or url.startswith(self.root + "/")

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
                self.checked(response)
            yield response

    @contextmanager
    def follow(self, redirect: httpx.Response, headers: dict[str, str]) -> Iterator[httpx.Response]:
        """The answer to a GET of the ``Location`` of ``redirect`` (a registry's 307 to its
        object store), streamed, without retries.

        Nothing of the registry's goes with it, its ``Authorization`` least of all: a
        presigned URL carries its own signature, S3 refuses a request that has both, and
        the registry's credentials are no business of the store's. A store's error (an
        expired URL's 403, a 5xx, a 404 after a delete) is transient here: the caller's
        retry asks the registry again, for a fresh URL or its own answer.
        """
        url = redirect.url.join(redirect.headers["Location"])
        for _hop in range(_MAX_HOPS):
            with self._http.stream("GET", url, headers=headers, auth=None) as answer:
                if answer.is_redirect and "Location" in answer.headers:
                    url = answer.url.join(answer.headers["Location"])
                    continue
                if answer.status_code >= 400:
                    answer.read()
                    raise _TransientStatusError(answer)
                yield answer
                return
        raise ConnectionFailedError(f"GET {redirect.url}: more than {_MAX_HOPS} redirects")

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


def server_url(server: str) -> httpx.URL:
    """``--server`` as a URL; ``host:port`` (no scheme) means ``http://host:port``.

    Raises:
        UsageError: not an http:// or https:// URL with a host.
    """
    text = server.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"--server {server!r} is not an http:// or https:// URL (or HOST:PORT)")
    return url


def check(response: httpx.Response, credentials: Credentials | None = None) -> None:
    """Raise the error an answer of 400 or more stands for (transient ones are retried).

    A 401 says whether credentials were sent: none (what to set), or sent and rejected
    by the server (``credentials`` names where they came from).
    """
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
        raise RefusedError(_unauthenticated(response, message, credentials or Credentials()))
    raise RefusedError(message)


def _unauthenticated(response: httpx.Response, message: str, credentials: Credentials) -> str:
    """A 401's line: the credentials the request carried were rejected, or there were none."""
    try:
        sent = response.request.headers.get("Authorization", "")
    except RuntimeError:  # a response made without a request
        sent = ""
    scheme = sent.partition(" ")[0].lower()
    if scheme == "bearer":
        # A token that is not the server's: /reg says error="invalid_token" (RFC 6750); the
        # OCI face challenges for Basic instead, but a 401 to a token sent means the same.
        return f"the server rejected the write token from {credentials.token_source} ({message})"
    if scheme == "basic":
        source = (
            "CLOUDIMG_USER and CLOUDIMG_PASSWORD"
            if credentials.user is not None and credentials.password is not None
            else f"the netrc file {credentials.netrc_file}"
        )
        return f"the server rejected the read credentials from {source} ({message})"
    return (
        f"{message} (no credentials were sent: writes need CLOUDIMG_TOKEN or --token-file;"
        " reads netrc, CLOUDIMG_USER and CLOUDIMG_PASSWORD, or a token)"
    )


def _json_body(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def _cloudimg_error(response: httpx.Response) -> bool:
    """Whether the answer is a cloudimg error: ``{"status": "<CODE>", "error": "..."}``."""
    body = _json_body(response)
    return (
        isinstance(body, dict)
        and isinstance(body.get("status"), str)
        and isinstance(body.get("error"), str)
    )


def _lists_repositories(response: httpx.Response) -> bool:
    """Whether the answer is a registry root's: ``{"success": true, "data": [...]}``."""
    body = _json_body(response)
    return (
        response.status_code == 200
        and isinstance(body, dict)
        and body.get("success") is True
        and isinstance(body.get("data"), list)
    )


def _summary(response: httpx.Response) -> str:
    """What an answer that is no registry's was, in a few words (``404 Not Found, HTML``)."""
    status = f"{response.status_code} {response.reason_phrase}".strip()
    body = _json_body(response)
    if _cloudimg_error(response):
        return _describe(response)
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return f"{_describe(response)}, an OCI registry's error"
    if body is not None:
        return f"{status}, JSON that is no list of repositories"
    kind = response.headers.get("Content-Type", "").partition(";")[0].strip()
    return f"{status}, {kind or 'a body'} that is not JSON" if response.content else status


def _describe(response: httpx.Response) -> str:
    """``404 NOT_FOUND: tag not found``: the server's JSON error in one line."""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        body = {"status": errors[0].get("code"), "error": errors[0].get("message")}  # OCI face
    store_error = _S3_ERROR.search(response.text) if body is None else None
    if store_error is not None:  # an object store's XML error (a redirected download)
        code, detail = store_error.group(1), store_error.group(2)
        return " ".join(f"{response.status_code} {code}: {detail or ''}".split()).rstrip(":")
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
