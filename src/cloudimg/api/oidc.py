"""Bearer JWTs from trusted OIDC issuers (the policy file's ``oidc:`` section).

A token is verified with PyJWT (``cryptography`` underneath) against the keys its issuer
publishes: discovery (``<issuer>/.well-known/openid-configuration``, unless the policy
names a ``jwks_uri``), then the JWKS. What is checked, in order:

- the header's ``alg`` is asymmetric (RS*, PS*, ES*, EdDSA): ``none`` and every HS*
  (an HMAC "signed" with the public key as the secret among them) are refused before
  any key is looked at;
- ``iss`` is one of the configured issuers, exactly;
- the key is the JWKS key of the header's ``kid`` (or the one key that fits, when the
  token names none), of the algorithm's key type, and the signature verifies;
- ``aud`` holds the issuer's audience; ``exp`` and ``iat`` are present; ``exp``,
  ``nbf`` and ``iat`` hold with :data:`CLOCK_SKEW_SECS` of leeway.

Keys are cached per issuer. A ``kid`` the cache does not know makes one fetch, at most
one per ``refetch_interval_secs`` per issuer (a burst of forged ``kid`` values cannot
make the server hammer the issuer, nor wait on it); keys older than
:data:`MAX_KEY_AGE_SECS` are refreshed in the background while the cached ones keep
verifying. A fetch is bounded (:data:`FETCH_TIMEOUT_SECS` in all, 1 MiB) and runs on
the event loop without blocking it (httpx's async client); concurrent requests wait for
the one fetch in flight, never start another. An issuer that does not answer leaves the
cached keys working; a token whose key is not cached then fails at once. A fetch that
fails or gives no usable key keeps the previous keys.

Nothing here logs a token or a claim but the subject of one that verified.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from cloudimg.api.oidc_config import OidcIssuer
from cloudimg.api.policy import Grants

__all__ = [
    "ALGORITHMS",
    "CLOCK_SKEW_SECS",
    "OidcIdentity",
    "OidcVerifier",
    "looks_like_jwt",
]

log = logging.getLogger(__name__)

ALGORITHMS = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
"""The algorithms accepted, with the key type (and curve) each needs: asymmetric only."""
CLOCK_SKEW_SECS = 30
MAX_KEY_AGE_SECS = 300.0
FETCH_TIMEOUT_SECS = 5.0
MAX_FETCH_BYTES = 1024 * 1024
MAX_TOKEN_BYTES = 16 * 1024
MAX_NAME = 128
"""The tag history's actor column holds 128 characters."""


def looks_like_jwt(secret: str) -> bool:
    """Three dot-separated parts, the first a JSON header: worth verifying as a JWT."""
    return 0 < len(secret) <= MAX_TOKEN_BYTES and secret.count(".") == 2 and secret[:2] == "ey"


class TokenRefused(Exception):
    """Why a JWT is not accepted (a reason for the log; never the token)."""


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """A verified token's name (the actor of its writes) and what it may do."""

    name: str
    grants: Grants


@dataclass(slots=True)
class _Keys:
    """One issuer's cached JWKS (``kid`` -> JWK) and when it was fetched or tried."""

    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    unnamed: list[dict[str, Any]] = field(default_factory=list)
    fetched: float | None = None
    attempted: float | None = None
    attempts: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OidcVerifier:
    """Verifies JWTs against the issuers of the current policy; caches their keys."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cache: dict[tuple[Any, ...], _Keys] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def identify(self, token: str, issuers: tuple[OidcIssuer, ...]) -> OidcIdentity | None:
        """The identity of a valid token, None for any other (the reason is logged)."""
        if not issuers or not looks_like_jwt(token):
            return None
        try:
            issuer, claims = await self.verify(token, issuers)
        except TokenRefused as exc:
            log.info("refused an OIDC token: %s", exc)
            return None
        name = _name(issuer, claims)
        grants = Grants(issuer.scopes_of(claims), credential=f"oidc {name}")
        return OidcIdentity(name, grants)

    async def verify(
        self, token: str, issuers: tuple[OidcIssuer, ...]
    ) -> tuple[OidcIssuer, dict[str, Any]]:
        """The issuer and the claims of a token that verifies.

        Raises:
            TokenRefused: naming the reason (no part of the token).
        """
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRefused("not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRefused(f"algorithm {str(alg)[:16]!r} is not accepted")
        iss = unverified.get("iss")
        issuer = next((i for i in issuers if i.issuer == iss), None)
        if issuer is None:
            raise TokenRefused(f"issuer {str(iss)[:128]!r} is not configured")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRefused("kid is not a string")
        jwk = await self._key(issuer, kid, alg)
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=CLOCK_SKEW_SECS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused(f"expired (issuer {issuer.issuer})") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused(f"not valid yet (issuer {issuer.issuer})") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused(f"not for audience {issuer.audience!r}") from None
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"{type(exc).__name__} (issuer {issuer.issuer})") from None
        return issuer, claims

    async def _key(self, issuer: OidcIssuer, kid: str | None, alg: str) -> dict[str, Any]:
        state = self._cache.setdefault(issuer.fetch_key, _Keys())
        now = self._clock()
        found = _pick(state, kid, alg)
        if found is not None:
            if state.fetched is not None and now - state.fetched > MAX_KEY_AGE_SECS:
                self._refresh_later(issuer, state)
            return found
        if self._may_fetch(issuer, state):
            await self._fetch(issuer, state)
            found = _pick(state, kid, alg)
            if found is not None:
                return found
        raise TokenRefused(f"no key {str(kid)[:64]!r} for {alg} (issuer {issuer.issuer})")

    def _may_fetch(self, issuer: OidcIssuer, state: _Keys) -> bool:
        return (
            state.attempted is None
            or self._clock() - state.attempted >= issuer.refetch_interval_secs
            or state.lock.locked()  # one is in flight: wait for it instead
        )

    def _refresh_later(self, issuer: OidcIssuer, state: _Keys) -> None:
        if state.lock.locked() or not self._may_fetch(issuer, state):
            return
        task = asyncio.get_running_loop().create_task(self._fetch(issuer, state))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fetch(self, issuer: OidcIssuer, state: _Keys) -> None:
        """Fetch the issuer's keys once (concurrent callers wait for the same fetch)."""
        seen = state.attempts
        async with state.lock:
            if state.attempts != seen:
                return  # another request fetched while this one waited
            state.attempted = self._clock()
            try:
                keys = await asyncio.wait_for(_download_keys(issuer), FETCH_TIMEOUT_SECS)
            except (TimeoutError, TokenRefused, httpx.HTTPError, OSError, ValueError) as exc:
                state.attempts += 1
                reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)[:200]
                log.warning(
                    "cannot fetch the keys of OIDC issuer %s: %s; keeping %d cached key(s)",
                    issuer.issuer,
                    reason or type(exc).__name__,
                    len(state.keys) + len(state.unnamed),
                )
                return
            state.attempts += 1  # counted when done: a waiter sees that a fetch ended
            state.keys = {k["kid"]: k for k in keys if isinstance(k.get("kid"), str)}
            state.unnamed = [k for k in keys if not isinstance(k.get("kid"), str)]
            state.fetched = self._clock()
            log.info("fetched %d key(s) of OIDC issuer %s", len(keys), issuer.issuer)


def _fits(jwk: Mapping[str, Any], alg: str) -> bool:
    kty, crv = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        return False
    return jwk.get("alg") in (None, alg)


def _pick(state: _Keys, kid: str | None, alg: str) -> dict[str, Any] | None:
    """The key of ``kid``; without one, the only key that fits ``alg``."""
    if kid is not None:
        jwk = state.keys.get(kid)
        return jwk if jwk is not None and _fits(jwk, alg) else None
    fitting = [k for k in [*state.keys.values(), *state.unnamed] if _fits(k, alg)]
    return fitting[0] if len(fitting) == 1 else None


def _name(issuer: OidcIssuer, claims: Mapping[str, Any]) -> str:
    """``username_prefix`` + the ``username_claim``: printable, at most 128 characters."""
    value = claims.get(issuer.username_claim)
    if not isinstance(value, str) or not value:
        value = claims.get("sub") if isinstance(claims.get("sub"), str) else "unknown"
    text = "".join(c if c.isprintable() else "?" for c in issuer.username_prefix + str(value))
    return text[:MAX_NAME]


async def _get_json(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> Any:
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise TokenRefused(f"GET {url} answered {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_FETCH_BYTES:
                raise TokenRefused(f"GET {url}: larger than {MAX_FETCH_BYTES} bytes")
    try:
        return json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        raise TokenRefused(f"GET {url}: not JSON") from None


async def _download_keys(issuer: OidcIssuer) -> list[dict[str, Any]]:
    """Discovery (unless a ``jwks_uri`` is set), then the JWKS's asymmetric signing keys."""
    headers = {"Accept": "application/json"}
    if issuer.fetch_token_file is not None:
        # Re-read each time: kubelet rotates a projected token.
        token = issuer.fetch_token_file.read_text(encoding="utf-8").strip()
        headers["Authorization"] = f"Bearer {token}"
    verify: ssl.SSLContext | bool = True
    if issuer.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(issuer.ca_file))
    timeout = httpx.Timeout(FETCH_TIMEOUT_SECS)
    async with httpx.AsyncClient(timeout=timeout, verify=verify, trust_env=False) as client:
        jwks_uri = issuer.jwks_uri
        if jwks_uri is None:
            url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
            discovery = await _get_json(client, url, headers)
            if not isinstance(discovery, dict) or discovery.get("issuer") != issuer.issuer:
                raise TokenRefused(f"{url} names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise TokenRefused(f"{url} names no jwks_uri")
        document = await _get_json(client, jwks_uri, headers)
    listed = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(listed, list):
        raise TokenRefused(f"{jwks_uri} is not a JWK set")
    keys = [
        k
        for k in listed
        if isinstance(k, dict)
        and k.get("kty") in ("RSA", "EC", "OKP")  # never a symmetric ("oct") key
        and k.get("use") in (None, "sig")
    ]
    if not keys:
        raise TokenRefused(f"{jwks_uri} holds no asymmetric signing key")
    return keys
