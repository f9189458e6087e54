"""The credential files of the registry's guard: write tokens (``--write-token-file``) and
read credentials (``--read-credentials-file``), parsed into digests that are checked in
constant time.

Only SHA-256 digests of the secrets are kept, and a check compares the digest of what
the client sent with every candidate through :func:`hmac.compare_digest`, without
stopping at a match, so neither timing nor length tells which entry matched. A line may
name its secret (a token's name, a user): that name, never the secret, is what the
guard hands on (the tag history's writer, the audit line, the policy's scopes).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CredentialSet", "parse_basic_credentials", "parse_tokens"]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class CredentialSet:
    """SHA-256 digests of the accepted secrets; :meth:`matches` is constant-time in the match.

    ``names``: the name given to each secret (None: unnamed), parallel to ``digests``.
    """

    digests: tuple[bytes, ...]
    names: tuple[str | None, ...] = ()

    @classmethod
    def of(cls, secrets: Iterable[str], names: Iterable[str | None] | None = None) -> CredentialSet:
        """Digest every secret (duplicates are kept; they change nothing)."""
        digests = tuple(_digest(secret) for secret in secrets)
        return cls(digests, tuple(names) if names is not None else (None,) * len(digests))

    def __len__(self) -> int:
        return len(self.digests)

    def matches(self, presented: str) -> bool:
        """Whether ``presented`` is one of the secrets, comparing against every candidate."""
        return self.match(presented)[0]

    def match(self, presented: str) -> tuple[bool, str | None]:
        """Whether ``presented`` is one of the secrets, and the name of the one it is.

        Every candidate is compared; only the (non-secret) name of a match is kept.
        """
        wanted = _digest(presented)
        found, name = False, None
        for candidate, candidate_name in zip(self.digests, self.names, strict=True):
            hit = hmac.compare_digest(candidate, wanted)
            found |= hit
            name = candidate_name if hit else name
        return found, name


def _meaningful_lines(text: str) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


def parse_tokens(text: str) -> CredentialSet:
    """Bearer tokens, one a line, each optionally after a name (``ci-pipeline <token>``).

    The name is what the tag history records as the writer; blank lines and ``#``
    comments are skipped.

    Raises:
        ValueError: when no token is left, a line holds more than a name and a token,
            or a name is not letters, digits and ``._@+-`` (up to 128).
    """
    tokens: list[str] = []
    names: list[str | None] = []
    for number, line in _meaningful_lines(text):
        words = line.split()
        if len(words) > 2:
            raise ValueError(f"line {number} holds more than a name and a token")
        if len(words) == 2 and not _TOKEN_NAME.fullmatch(words[0]):
            raise ValueError(
                f"line {number}: a token's name is letters, digits and ._@+- (up to 128)"
            )
        names.append(words[0] if len(words) == 2 else None)
        tokens.append(words[-1])
    if not tokens:
        raise ValueError("it holds no token")
    return CredentialSet.of(tokens, names)


def parse_basic_credentials(text: str) -> CredentialSet:
    """``user:password`` a line (split at the first colon); blank lines and ``#`` comments skipped.

    Raises:
        ValueError: when a line has no colon or an empty user or password, or none is left.
    """
    pairs: list[str] = []
    users: list[str | None] = []
    for number, line in _meaningful_lines(text):
        user, colon, password = line.partition(":")
        if not colon or not user or not password:
            raise ValueError(f"line {number} is not user:password")
        pairs.append(f"{user}:{password}")
        users.append(user)  # the name a policy gives scopes to (not a secret)
    if not pairs:
        raise ValueError("it holds no user:password line")
    return CredentialSet.of(pairs, users)
