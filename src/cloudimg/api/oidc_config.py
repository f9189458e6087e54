"""The ``oidc:`` section of the policy file: trusted issuers and rules from claims to scopes.

::

    oidc:
      - issuer: https://keycloak.example.org/realms/lab
        audience: cloudimg
        username_claim: preferred_username   # the name the history and the log show
        username_prefix: "keycloak:"
        rules:
          - match: {groups: [team-a]}        # the token's groups claim contains team-a
            scopes:
              - names: ["team-a/*"]
                actions: [pull, push, delete]
      - issuer: https://kubernetes.default.svc.cluster.local
        audience: cloudimg
        jwks_uri: https://kubernetes.default.svc/openid/v1/jwks
        ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        fetch_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
        rules:
          - match: {namespace: ci, serviceaccount: image-builder}
            scopes:
              - names: ["ci/*"]
                actions: [pull, push]

A rule's ``match`` holds conditions that must all hold (an empty mapping: every token
of the issuer); a condition's value is one string or a list of which one must fit:
``sub`` (the subject), ``groups`` (the ``groups_claim`` list contains it), ``namespace``
and ``serviceaccount`` (a Kubernetes service account's, from the ``kubernetes.io``
claim or a ``system:serviceaccount:NS:NAME`` subject) and ``claims`` (any claim by name:
a string claim equals, a list claim contains). The scopes of every matching rule add
up; a token no rule matches is authenticated but has no scope (it fails closed, as an
unnamed token does). Parsing only here: :mod:`cloudimg.api.oidc` verifies tokens.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from cloudimg.api.policy import Scope

__all__ = ["OidcIssuer", "OidcRule", "parse_issuers", "service_account"]

_ISSUER_KEYS = {
    "issuer",
    "audience",
    "jwks_uri",
    "ca_file",
    "fetch_token_file",
    "username_claim",
    "username_prefix",
    "groups_claim",
    "refetch_interval_secs",
    "rules",
}
_MATCH_KEYS = ("sub", "groups", "namespace", "serviceaccount", "claims")
_SA_PREFIX = "system:serviceaccount:"
DEFAULT_REFETCH_SECS = 10.0
"""At most one JWKS fetch per issuer in this many seconds (an unknown ``kid`` asks again)."""


def service_account(claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """A Kubernetes service-account token's namespace and name (None where it says none).

    The API server puts them in the ``kubernetes.io`` claim and in the subject
    ``system:serviceaccount:NS:NAME``; the claim wins when both are there.
    """
    namespace = name = None
    sub = claims.get("sub")
    if isinstance(sub, str) and sub.startswith(_SA_PREFIX):
        parts = sub[len(_SA_PREFIX) :].split(":")
        if len(parts) == 2 and all(parts):
            namespace, name = parts
    k8s = claims.get("kubernetes.io")
    if isinstance(k8s, dict):
        if isinstance(k8s.get("namespace"), str):
            namespace = k8s["namespace"]
        account = k8s.get("serviceaccount")
        if isinstance(account, dict) and isinstance(account.get("name"), str):
            name = account["name"]
    return namespace, name


def _fits(value: Any, wanted: tuple[str, ...]) -> bool:
    """A string claim equal to one of ``wanted``, or a list claim holding one of them."""
    if isinstance(value, str):
        return value in wanted
    if isinstance(value, list):
        return any(isinstance(item, str) and item in wanted for item in value)
    return False


@dataclass(frozen=True, slots=True)
class OidcRule:
    """Conditions on a token's claims (all must hold) and the scopes they give."""

    scopes: tuple[Scope, ...]
    sub: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    namespace: tuple[str, ...] | None = None
    serviceaccount: tuple[str, ...] | None = None
    claims: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def matches(self, claims: Mapping[str, Any], groups_claim: str) -> bool:
        namespace, name = service_account(claims)
        checks: list[tuple[Any, tuple[str, ...] | None]] = [
            (claims.get("sub"), self.sub),
            (claims.get(groups_claim), self.groups),
            (namespace, self.namespace),
            (name, self.serviceaccount),
        ]
        checks += [(claims.get(claim), wanted) for claim, wanted in self.claims]
        return all(wanted is None or _fits(value, wanted) for value, wanted in checks)


@dataclass(frozen=True, slots=True)
class OidcIssuer:
    """One trusted issuer: where its keys are, what its tokens must say, who gets what."""

    issuer: str
    audience: str
    rules: tuple[OidcRule, ...] = ()
    jwks_uri: str | None = None
    """None: found through the issuer's ``/.well-known/openid-configuration``."""
    ca_file: Path | None = None
    """CA bundle for the discovery and JWKS fetches (None: the system's)."""
    fetch_token_file: Path | None = None
    """A bearer token sent with those fetches (the API server's discovery wants one)."""
    username_claim: str = "sub"
    username_prefix: str = ""
    groups_claim: str = "groups"
    refetch_interval_secs: float = DEFAULT_REFETCH_SECS

    @property
    def fetch_key(self) -> tuple[str, str | None, Path | None, Path | None]:
        """What the key cache is kept under: a policy reload that changes none of it keeps
        the keys fetched so far."""
        return (self.issuer, self.jwks_uri, self.ca_file, self.fetch_token_file)

    def scopes_of(self, claims: Mapping[str, Any]) -> tuple[Scope, ...]:
        """The scopes of every rule the claims match (none: authenticated, no scope)."""
        found: list[Scope] = []
        for rule in self.rules:
            if rule.matches(claims, self.groups_claim):
                found.extend(rule.scopes)
        return tuple(found)


def _url(where: str, key: str, value: Any) -> str:
    """An https URL (http only to a loopback host: a test's or a sidecar's)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: '{key}' is a URL")
    parts = urlsplit(value)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{where}: '{key}' must be an https:// URL (http:// only to loopback)")
    if not host:
        raise ValueError(f"{where}: '{key}' has no host")
    return value


def _text(where: str, key: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty) or len(value) > 256:
        raise ValueError(f"{where}: '{key}' is a string (up to 256 characters)")
    return value


def _values(where: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: '{key}' is a string or a non-empty list of strings")
    return tuple(value)


def _rule(where: str, entry: Any, scopes: Callable[[str, Any], tuple[Scope, ...]]) -> OidcRule:
    if not isinstance(entry, dict) or set(entry) != {"match", "scopes"}:
        raise ValueError(f"{where}: a rule is a mapping of 'match' and 'scopes'")
    match = entry["match"]
    if match is None:
        match = {}
    if not isinstance(match, dict):
        raise ValueError(f"{where}: 'match' is a mapping ({', '.join(_MATCH_KEYS)})")
    unknown = sorted(str(key) for key in match if key not in _MATCH_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown condition {unknown[0][:64]!r} ({', '.join(_MATCH_KEYS)})"
        )
    claims: list[tuple[str, tuple[str, ...]]] = []
    if "claims" in match:
        if not isinstance(match["claims"], dict) or not match["claims"]:
            raise ValueError(f"{where}: 'claims' is a mapping of claim names to values")
        for claim, wanted in match["claims"].items():
            claims.append((_text(where, "claims", claim), _values(where, str(claim), wanted)))
    conditions = {key: _values(where, key, match[key]) for key in _MATCH_KEYS[:4] if key in match}
    return OidcRule(
        scopes=scopes(f"{where} scopes", entry["scopes"]), claims=tuple(claims), **conditions
    )


def _issuer(where: str, entry: Any, scopes: Callable[[str, Any], tuple[Scope, ...]]) -> OidcIssuer:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: an issuer is a mapping ('issuer', 'audience', 'rules', ...)")
    unknown = sorted(str(key) for key in entry if key not in _ISSUER_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0][:64]!r}")
    for required in ("issuer", "audience"):
        if required not in entry:
            raise ValueError(f"{where}: '{required}' is missing")
    rules = entry.get("rules") or []
    if not isinstance(rules, list):
        raise ValueError(f"{where}: 'rules' is a list")
    interval = entry.get("refetch_interval_secs", DEFAULT_REFETCH_SECS)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
        raise ValueError(f"{where}: 'refetch_interval_secs' is a number of seconds (0 or more)")
    paths = {}
    for key in ("ca_file", "fetch_token_file"):
        if entry.get(key) is not None:
            paths[key] = Path(_text(where, key, entry[key]))
    return OidcIssuer(
        issuer=_url(where, "issuer", entry["issuer"]),  # compared with `iss` as it is
        audience=_text(where, "audience", entry["audience"]),
        rules=tuple(_rule(f"{where} rule {n}", r, scopes) for n, r in enumerate(rules, start=1)),
        jwks_uri=_url(where, "jwks_uri", entry["jwks_uri"]) if entry.get("jwks_uri") else None,
        username_claim=_text(where, "username_claim", entry.get("username_claim", "sub")),
        username_prefix=_text(
            where, "username_prefix", entry.get("username_prefix", ""), empty=True
        ),
        groups_claim=_text(where, "groups_claim", entry.get("groups_claim", "groups")),
        refetch_interval_secs=float(interval),
        **paths,
    )


def parse_issuers(
    value: Any, scopes: Callable[[str, Any], tuple[Scope, ...]]
) -> tuple[OidcIssuer, ...]:
    """The ``oidc`` section (None: no issuer); ``scopes`` parses a list of scopes.

    Raises:
        ValueError: naming the first thing that is wrong.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("'oidc' is a list of issuers")
    issuers = tuple(_issuer(f"oidc issuer {n}", e, scopes) for n, e in enumerate(value, 1))
    seen: set[str] = set()
    for issuer in issuers:
        if issuer.issuer in seen:
            raise ValueError(f"oidc: the issuer {issuer.issuer[:128]!r} is listed twice")
        seen.add(issuer.issuer)
    return issuers
