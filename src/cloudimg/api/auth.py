"""Authentication of the registry endpoints: bearer tokens for writes, optional Basic for reads.

How it is wired: a Litestar *guard* (:class:`RegistryAuth`) on the router that mounts the
registry API (``<www-prefix>/<repo-prefix>``). Litestar runs guards after routing and
before it parses parameters or reads the body, so an unauthenticated request never reaches
a handler, never touches the catalog and never writes a byte to the data volume. Paths
outside that router (``/healthz``, ``/readyz``, ``/docs``) have no guard and stay open for
probes and for qlkube, which builds its schema from ``/docs/openapi.json``. A guard, not an
ASGI middleware, because it is the framework's own place for "may this connection use this
route", it only sees routed requests (an unknown path is a 404 either way) and its
exceptions go through the one error mapping in :mod:`cloudimg.api.errors`.

The rules:

- Writes (every method but the safe GET, HEAD and OPTIONS) need
  ``Authorization: Bearer <token>`` with a token from ``--write-token-file`` when that
  flag is set. A token line may name its token (``ci-pipeline <token>``): the guard
  puts that name in the request's scope state (:func:`actor_of`) and the tag history
  records it as the writer. No or unusable credentials: 401 ``UNAUTHENTICATED`` with
  ``WWW-Authenticate: Bearer realm="cloudimg"``; a token that is not in the file: 401
  with ``error="invalid_token"`` in the challenge (RFC 6750, and the gRPC meaning of
  ``UNAUTHENTICATED``); valid *read* credentials on a write: 403 ``PERMISSION_DENIED``
  (authenticated, but not allowed to write).
- Reads (GET, HEAD, OPTIONS) are open unless ``--read-auth basic``: then they need HTTP
  Basic credentials from ``--read-credentials-file`` or a write token as a bearer token;
  without either, 401 with
  ``WWW-Authenticate: Basic realm="cloudimg", charset="UTF-8"``.

Credential files are read and re-read by :class:`cloudimg.api.secret_file.SecretFile`
(a file that turns unreadable, malformed or empty keeps the last good credentials; it
never opens the door) and parsed by :mod:`cloudimg.api.credentials`, which keeps only
digests of the secrets. Secrets never appear in logs, error messages or error context.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from cloudimg.api.body import drain_refused
from cloudimg.api.credentials import CredentialSet, parse_basic_credentials, parse_tokens
from cloudimg.api.policy import (
    Grants,
    Policy,
    actions_of,
    credential_label,
    grants_of,
    parse_policy,
    set_grants,
)
from cloudimg.api.secret_file import SecretFile
from cloudimg.config import Settings, SettingsError
from cloudimg.errors import PermissionDeniedError

if TYPE_CHECKING:
    from cloudimg.api.oidc import OidcIdentity, OidcVerifier

__all__ = ["OciAuth", "RegistryAuth", "actor_of", "audit_write", "load_registry_auth"]

log = logging.getLogger(__name__)

REALM = "cloudimg"
BEARER_CHALLENGE = f'Bearer realm="{REALM}"'
BASIC_CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # the safe methods that are routed
_ACTOR = "cloudimg.actor"
"""Key in the request's scope state: the name of the write token the guard accepted."""


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Presented:
    """What the ``Authorization`` header carried (the secret itself, never logged)."""

    scheme: str  # "bearer", "basic", "" (no header) or "other" (unusable)
    secret: str = ""


def _presented(header: str | None) -> _Presented:
    if not header:
        return _Presented("")
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return _Presented("bearer", value)
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return _Presented("other")
        if ":" in decoded:
            return _Presented("basic", decoded)
    return _Presented("other")


def _verifier() -> OidcVerifier:
    """A verifier for the policy's OIDC issuers. Imported only with a policy: its JOSE
    library and HTTP client cost every start ~0.2 s of CPU."""
    from cloudimg.api.oidc import OidcVerifier

    return OidcVerifier()


class RegistryAuth:
    """The guard of the registry router (see the module docstring for the rules)."""

    def __init__(
        self,
        write_tokens: SecretFile[CredentialSet] | None,
        read_credentials: SecretFile[CredentialSet] | None,
        *,
        body_timeout: float | None,
        policy: SecretFile[Policy] | None = None,
        oidc: OidcVerifier | None = None,
    ) -> None:
        """``body_timeout``: how long a refused write's body may send nothing while it is
        drained (``--read-body-timeout-secs``, as for every body the server reads);
        ``policy``: the scopes of ``--policy-file`` (None: every credential may do all);
        ``oidc``: the verifier of the policy's OIDC issuers (its key cache; shared by the
        ``/reg`` and ``/v2`` guards; a new one when None and there is a policy)."""
        self.write_tokens = write_tokens
        self.read_credentials = read_credentials
        self.body_timeout = body_timeout
        self.policy = policy
        self.oidc = oidc if oidc is not None or policy is None else _verifier()

    @property
    def _writes_open(self) -> bool:
        """No write token file and no policy (whose OIDC issuers would sign writers in)."""
        return self.write_tokens is None and self.policy is None

    async def _oidc_identity(self, presented: _Presented, *, basic: bool) -> OidcIdentity | None:
        """The identity of an OIDC token sent as the bearer token (or, ``basic``, as the
        Basic password): None when it is none, or does not verify (see cloudimg.api.oidc)."""
        if self.oidc is None or self.policy is None:
            return None
        if presented.scheme == "bearer":
            token = presented.secret
        elif basic and presented.scheme == "basic":
            token = presented.secret.partition(":")[2]
        else:
            return None
        return await self.oidc.identify(token, self.policy.get().issuers)

    def _identify(self, presented: _Presented) -> tuple[str, str | None]:
        """``("token", name)``, ``("user", name)`` or ``("", None)`` (not valid credentials)."""
        writer, name = self._writer(presented)
        if writer:
            return "token", name
        reader, user = self._reader(presented)
        return ("user", user) if reader else ("", None)

    def _is_writer(self, presented: _Presented) -> bool:
        return self._writer(presented)[0]

    def _writer(self, presented: _Presented) -> tuple[bool, str | None]:
        """Whether a write token was presented, and that token's name."""
        if self.write_tokens is None or presented.scheme != "bearer":
            return False, None
        return self.write_tokens.get().match(presented.secret)

    def _is_reader(self, presented: _Presented) -> bool:
        return self._reader(presented)[0]

    def _reader(self, presented: _Presented) -> tuple[bool, str | None]:
        """Whether read credentials were presented, and their user name."""
        if self.read_credentials is None or presented.scheme != "basic":
            return False, None
        return self.read_credentials.get().match(presented.secret)

    async def _authorize(
        self,
        connection: ASGIConnection[Any, Any, Any, Any],
        handler: BaseRouteHandler,
        kind: str,
        name: str | None,
        grants: Grants | None = None,
    ) -> None:
        """Check the scopes of an authenticated credential (``--policy-file``; ``grants``:
        an OIDC token's) for the names this route touches; listings filter by the grants
        kept in the scope state.

        Raises:
            PermissionDeniedError: the credential has no scope for the action on the name.
        """
        if self.policy is None:
            # Every credential may do everything; its name is kept for the audit lines.
            set_grants(connection, Grants(unlimited=True, credential=credential_label(kind, name)))
            return
        if grants is None:
            grants = self.policy.get().grants(kind, name)
        set_grants(connection, grants)
        method = str(connection.scope.get("method", "GET"))
        params = connection.path_params
        repo, image = params.get("repo"), params.get("image")
        if method == "OPTIONS" or not isinstance(repo, str) or not isinstance(image, str):
            return  # no name to check here: a listing filters what it shows
        for action in actions_of(connection, handler, method):
            if not grants.allows(action, repo, image):
                await self._refuse(connection, grants, action, f"{repo}/{image}")

    async def _refuse(
        self,
        connection: ASGIConnection[Any, Any, Any, Any],
        grants: Grants,
        action: str,
        path: str,
    ) -> NoReturn:
        if connection.scope.get("method", "GET") not in READ_METHODS:
            audit_write(connection, action, path, refused="no scope")
            await drain_refused(connection, self.body_timeout)
        raise PermissionDeniedError(
            f"these credentials may not {action} {path}", {"action": action, "name": path}
        )

    async def _admit_writer(
        self,
        connection: ASGIConnection[Any, Any, Any, Any],
        handler: BaseRouteHandler,
        presented: _Presented,
        token: tuple[bool, str | None],
        *,
        basic: bool = False,
    ) -> bool:
        """Whether a write token (``token``: found, its name) or an OIDC token (as the
        Basic password too when ``basic``) lets the write in, its name the write's actor.

        Raises:
            PermissionDeniedError: the credential has no scope for the write.
        """
        writer, name = token
        identity = None if writer else await self._oidc_identity(presented, basic=basic)
        if not writer and identity is None:
            return False
        state = connection.scope.setdefault("state", {})
        if identity is None:
            state[_ACTOR] = name
            await self._authorize(connection, handler, "token", name)
        else:
            state[_ACTOR] = identity.name
            await self._authorize(connection, handler, "oidc", None, identity.grants)
        return True

    def _audit_unwritable(
        self,
        connection: ASGIConnection[Any, Any, Any, Any],
        handler: BaseRouteHandler,
        presented: _Presented,
    ) -> bool:
        """Log the refusal of a write whose credentials may not write at all (read
        credentials, named by their user) or are not valid; whether they were read
        credentials."""
        reader, user = self._reader(presented)
        label = credential_label("user", user) if reader else "no valid credentials"
        set_grants(connection, Grants(credential=label))
        action = actions_of(connection, handler, str(connection.scope.get("method", "POST")))
        repo, image = connection.path_params.get("repo"), connection.path_params.get("image")
        named = isinstance(repo, str) and isinstance(image, str)
        name = f"{repo}/{image}" if named else str(connection.scope.get("path", ""))
        reason = "read credentials may not write" if reader else "not authenticated"
        audit_write(connection, action[0], name, refused=reason)
        return reader

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        """Let the request through, or raise the 401/403 it gets."""
        presented = _presented(connection.headers.get("authorization"))
        if connection.scope.get("method", "GET") in READ_METHODS:
            if self.read_credentials is None:
                return  # open reads: every caller may pull everything
            kind, name = self._identify(presented)
            if kind:
                return await self._authorize(connection, _handler, kind, name)
            identity = await self._oidc_identity(presented, basic=False)
            if identity is not None:
                return await self._authorize(connection, _handler, "oidc", None, identity.grants)
            raise NotAuthorizedException(
                detail="reading needs credentials", headers={"WWW-Authenticate": BASIC_CHALLENGE}
            )
        if self._writes_open:
            return
        if await self._admit_writer(connection, _handler, presented, self._writer(presented)):
            return
        # Read and drop the body (as other refusals do) so the client sees the answer
        # and keeps its connection.
        reader = self._audit_unwritable(connection, _handler, presented)
        await drain_refused(connection, self.body_timeout)
        if reader:
            raise PermissionDeniedException(detail="these credentials may only read")
        if presented.scheme == "bearer":
            raise NotAuthorizedException(
                detail="the bearer token is not valid",
                headers={"WWW-Authenticate": f'{BEARER_CHALLENGE}, error="invalid_token"'},
            )
        raise NotAuthorizedException(
            detail="writing needs a bearer token", headers={"WWW-Authenticate": BEARER_CHALLENGE}
        )


class OciAuth(RegistryAuth):
    """The guard of ``/v2``: registry clients speak HTTP Basic only.

    A write token is accepted as the Basic password (any user name) and, as on
    ``/reg``, as a bearer token; read credentials (or a write token) let reads through
    when ``--read-auth basic`` is set. ``GET /v2/`` challenges a client that presents
    no valid credentials whenever any are configured: clients (containers/image, oras)
    learn from that first answer to send credentials at all. Every challenge is
    ``Basic``, the scheme they answer.
    """

    def _oci_writer(self, presented: _Presented) -> tuple[bool, str | None]:
        if presented.scheme == "basic" and self.write_tokens is not None:
            _user, _, password = presented.secret.partition(":")
            return self.write_tokens.get().match(password)
        return self._writer(presented)

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        presented = _presented(connection.headers.get("authorization"))
        writer, name = self._oci_writer(presented)
        challenge = {"WWW-Authenticate": BASIC_CHALLENGE}
        if connection.scope.get("method", "GET") in READ_METHODS:
            reader, user = self._reader(presented)
            if writer or reader:
                if self.read_credentials is None:
                    return  # open reads: every caller may pull everything
                kind, who = ("token", name) if writer else ("user", user)
                return await self._authorize(connection, _handler, kind, who)
            identity = await self._oidc_identity(presented, basic=True)
            if identity is not None:
                if self.read_credentials is None:
                    return
                return await self._authorize(connection, _handler, "oidc", None, identity.grants)
            version_check = connection.scope["path"].rstrip("/") == "/v2"
            if self.read_credentials is not None or version_check:
                raise NotAuthorizedException(
                    detail="this registry needs credentials", headers=challenge
                )
            return
        if self._writes_open:
            return
        if await self._admit_writer(connection, _handler, presented, (writer, name), basic=True):
            return
        reader = self._audit_unwritable(connection, _handler, presented)
        await drain_refused(connection, self.body_timeout)
        if reader:
            raise PermissionDeniedException(detail="these credentials may only read")
        raise NotAuthorizedException(
            detail="pushing needs a write token as the password", headers=challenge
        )


def audit_write(
    connection: ASGIConnection[Any, Any, Any, Any],
    action: str,
    name: str,
    what: str = "",
    *,
    refused: str | None = None,
) -> None:
    """The audit line of a write: accepted (info, once the write is done; ``what`` says
    what it did) or ``refused`` (warning, with the reason), naming the credential as
    the guard identified it (``token ci-team-a``), never its secret."""
    who = grants_of(connection).credential or "open writes (no credentials)"
    if refused is not None:
        log.warning("refused %s of %s to %s (%s)", action, name, who, refused)
    else:
        log.info("accepted %s of %s by %s%s", action, name, who, f": {what}" if what else "")


def actor_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The name of the write token a write was authenticated with, or the OIDC token's
    subject (None: unnamed or open)."""
    state = connection.scope.get("state") or {}
    actor = state.get(_ACTOR)
    return actor if isinstance(actor, str) else None


def _secret_file(setting: str, path: Path, parse: Callable[[str], T], what: str) -> SecretFile[T]:
    try:
        return SecretFile(path, parse, what=what)
    except ValueError as exc:
        raise SettingsError(setting, f"{path}: {exc}") from None


def load_registry_auth(settings: Settings) -> RegistryAuth | None:
    """The guard the settings ask for (``None``: everything open), with its files loaded.

    Call it once per process: the guard reloads its files when they change.

    Raises:
        SettingsError: a missing, unreadable, malformed or empty credential file, or
            settings that do not go together.
    """
    settings.check_auth()
    write = read = None
    if settings.write_token_file is not None:
        write = _secret_file(
            "write_token_file", settings.write_token_file, parse_tokens, "write tokens"
        )
    if settings.read_credentials_file is not None:
        read = _secret_file(
            "read_credentials_file",
            settings.read_credentials_file,
            parse_basic_credentials,
            "read credentials",
        )
    policy = None
    if settings.policy_file is not None:
        policy = _secret_file("policy_file", settings.policy_file, parse_policy, "policy")
    if policy is not None and write is None and not policy.get().issuers:
        raise SettingsError(
            "policy_file", "needs write_token_file or an oidc issuer: writes would be open"
        )
    if write is None and read is None and policy is None:
        return None
    return RegistryAuth(write, read, body_timeout=settings.read_body_timeout_secs, policy=policy)
