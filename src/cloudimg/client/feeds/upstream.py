"""Reads of an upstream server: small files with conditional requests, images resumably.

The upstream is not a cloudimg registry: a plain ``httpx`` client, its own retries
(tenacity, as the registry session's: no connection, a broken transfer, 429/5xx), and
answers told in one line. A 404 or 410 means the feed is gone (``NotFoundError``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tenacity

from cloudimg.client.errors import ConnectionFailedError, NotFoundError, RefusedError
from cloudimg.progress import Progress, ProgressMeter

__all__ = ["Fetched", "Upstream"]

T = TypeVar("T")
_TIMEOUT = httpx.Timeout(300.0, connect=10.0, pool=30.0)
_TRANSIENT = frozenset({429, 500, 502, 503, 504})
_MAX_SMALL = 64 * 1024 * 1024
"""The most a checksum file or an index may hold: it is read into memory."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """A small upstream file (``None`` from a conditional read: not modified)."""

    url: str
    content: bytes
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None


class _Transient(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass
class Upstream:
    """An HTTP client for upstream servers, with ``attempts`` tries per read."""

    attempts: int = 5
    backoff: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)
    _http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(timeout=_TIMEOUT, follow_redirects=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fetched | None:
        """``url``'s body; None when ``etag``/``last_modified`` say it did not change."""
        sent = {**self.headers, **(headers or {})}
        if etag:
            sent["If-None-Match"] = etag
        if last_modified:
            sent["If-Modified-Since"] = last_modified

        def attempt() -> Fetched | None:
            with self._http.stream("GET", url, headers=sent) as response:
                if response.status_code == 304:
                    return None
                _check(response, url)
                length = int(response.headers.get("Content-Length") or 0)
                if length > _MAX_SMALL:
                    raise RefusedError(f"GET {url}: {length} bytes, more than a feed file holds")
                body = b"".join(response.iter_bytes())
                return Fetched(
                    str(response.url),
                    body,
                    response.headers.get("ETag"),
                    response.headers.get("Last-Modified"),
                    response.headers.get("Content-Type"),
                )

        return self.retrying(attempt, f"GET {url}")

    def download(
        self,
        url: str,
        partial: Path,
        progress: Progress | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Download ``url`` into ``partial``, continuing what it already holds (``Range``);
        the bytes it held before (0: none were reused). A broken transfer is retried
        from where it stopped."""
        resumed = partial.stat().st_size if partial.exists() else 0
        meter = ProgressMeter(progress, 0, "downloaded")

        def attempt() -> None:
            have = partial.stat().st_size if partial.exists() else 0
            sent = {**self.headers, **(headers or {})}
            if have:
                sent["Range"] = f"bytes={have}-"
            with self._http.stream("GET", url, headers=sent) as response:
                if response.status_code == 416 and have:
                    return  # the partial file already holds every byte: the check decides
                _check(response, url)
                append = response.status_code == 206
                start = have if append else 0
                total = start + int(response.headers.get("Content-Length") or 0)
                meter.total, meter.done = total, start
                with partial.open("ab" if append else "wb") as file:
                    # As the bytes come: what arrived before a cut is kept for the resume.
                    for chunk in response.iter_bytes():
                        file.write(chunk)
                        meter.add(len(chunk))

        self.retrying(attempt, f"GET {url}")
        meter.finish()
        return resumed

    def retrying(self, work: Callable[[], T], what: str) -> T:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff, max=30),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _Transient)),
            reraise=True,
        )
        try:
            return retrying(work)
        except _Transient as exc:
            raise ConnectionFailedError(
                f"{what}: {exc.what} (after {self.attempts} attempt(s))"
            ) from None
        except httpx.TransportError as exc:
            raise ConnectionFailedError(
                f"{what} failed: {type(exc).__name__}: {exc or 'connection lost'}"
                f" (after {self.attempts} attempt(s))"
            ) from None

    def raw(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, its answer whatever the status (the OCI source's token dance)."""
        return self._http.request(method, url, **kwargs)


def _check(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status < 400:
        return
    response.read()
    said = f"{status} {response.reason_phrase}".strip()
    if status in _TRANSIENT:
        raise _Transient(said)
    if status in (404, 410):
        raise NotFoundError(f"the upstream {url} is gone ({said})")
    raise RefusedError(f"GET {url}: {said}")
