"""Where the client's bearer token comes from: a file re-read when it changes, or a command.

An OIDC token expires (a projected service-account token after an hour or less), so
the client does not read it once:

- :class:`FileToken` (``--token-file``) stats the file before each request and reads it
  again when it changed (kubelet rewrites a projected token before it expires, by a
  ``..data`` symlink swap);
- :class:`CommandToken` (``--token-command``, for example ``kubectl create token ci
  --audience cloudimg``) runs the command for a token, and again when the token is
  within :data:`REFRESH_MARGIN_SECS` of its ``exp`` or after the server refused it.

``exp`` is read from the token's payload *without* verifying it (the server verifies;
the client only wants to know when to ask again). A token that is not a JWT (a static
write token) never expires here. No token is ever put in a message, an argument list or
a log line.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cloudimg.client.errors import ClientError, UsageError

__all__ = ["REFRESH_MARGIN_SECS", "CommandToken", "FileToken", "TokenSource", "jwt_expiry"]

REFRESH_MARGIN_SECS = 60.0
"""A token that expires within this many seconds is replaced before it is sent."""
COMMAND_TIMEOUT_SECS = 60.0


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT's payload, unverified (None: not a JWT, or no ``exp``)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class TokenSource:
    """A bearer token that may change while the client runs."""

    description = "the token"
    """Where the token comes from, for messages (``--token-file PATH``); never the token."""

    def token(self) -> str:
        raise NotImplementedError

    def renew(self, refused: str) -> bool:
        """The server refused ``refused``: look for another; whether one was found."""
        return False


class FileToken(TokenSource):
    """The token of a file (its first line not starting with ``#``, the line's last word),
    read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        """Read the file now.

        Raises:
            ClientError: it cannot be read or holds no token.
        """
        self.path = path
        self.description = f"--token-file {path}"
        self._identity: tuple[int, ...] | None = None
        self._token = ""
        self._load()

    def _stat(self) -> tuple[int, ...]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ClientError(f"cannot read {self.description}: {exc.strerror}") from None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> None:
        identity = self._stat()
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(f"cannot read {self.description}: {exc}") from None
        for line in lines:
            words = line.split()
            if words and not words[0].startswith("#"):
                self._identity, self._token = identity, words[-1]
                return
        raise ClientError(f"{self.description} holds no token")

    def token(self) -> str:
        if self._stat() != self._identity:
            self._load()
        return self._token

    def renew(self, refused: str) -> bool:
        self._load()
        return self._token != refused


class CommandToken(TokenSource):
    """The token a command prints (its standard output, stripped), run again when the
    token nears its ``exp`` or is refused. The command runs without a shell; its standard
    error goes to ours (a ``kubectl`` error is worth seeing)."""

    def __init__(self, command: str, clock: Callable[[], float] = time.time) -> None:
        """Raises: UsageError: the command line cannot be split into words."""
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"--token-command cannot be split into words: {exc}") from None
        if not self.argv:
            raise UsageError("--token-command is empty")
        self.description = f"--token-command {self.argv[0]}"
        self._clock = clock
        self._token: str | None = None

    def _run(self) -> str:
        try:
            done = subprocess.run(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                timeout=COMMAND_TIMEOUT_SECS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = "timed out" if isinstance(exc, subprocess.TimeoutExpired) else str(exc)
            raise ClientError(f"{self.description} failed: {reason}") from None
        if done.returncode != 0:
            raise ClientError(f"{self.description} failed: exit status {done.returncode}")
        try:
            words = done.stdout.decode("utf-8").split()
        except UnicodeDecodeError:
            words = []
        if len(words) != 1:
            raise ClientError(f"{self.description} printed no token (one word expected)")
        self._token = words[0]
        return self._token

    def token(self) -> str:
        if self._token is None:
            return self._run()
        exp = jwt_expiry(self._token)
        if exp is not None and exp - self._clock() < REFRESH_MARGIN_SECS:
            return self._run()
        return self._token

    def renew(self, refused: str) -> bool:
        return self._run() != refused
