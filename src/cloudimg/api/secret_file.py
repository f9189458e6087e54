"""A secret file (tokens, credentials), parsed at start-up and re-read when it changes.

:class:`SecretFile` stats the resolved file at most once per ``recheck_interval`` and
reloads it when its identity (device, inode, size, mtime, ctime) changes: an in-place
rewrite and a kubelet ``..data`` symlink swap both show. A file that turns unreadable,
malformed or empty keeps the last good value and logs a warning. The messages name the
file and what is wrong with it, never its content.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["MAX_SECRET_FILE_BYTES", "SecretFile"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_SECRET_FILE_BYTES = 1024 * 1024

_Identity = tuple[int, int, int, int, int]


class SecretFile(Generic[T]):
    """A credential file, parsed at start-up and re-read when it changes.

    :meth:`get` stats the path (following symlinks, so a kubelet ``..data`` swap counts)
    at most once per ``recheck_interval`` seconds and re-parses the file when its
    identity changed. A failed reload keeps the last good value and logs a warning
    once per distinct failure; the next check tries again.
    """

    def __init__(
        self,
        path: Path,
        parse: Callable[[str], T],
        *,
        what: str,
        recheck_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Read and parse ``path`` now.

        Raises:
            ValueError: when the file cannot be read or parsed (the message names no secret).
        """
        self.path = path
        self.what = what
        self._parse = parse
        self._interval = recheck_interval
        self._clock = clock
        self._failure: str | None = None
        identity, value = self._read()
        self._identity: _Identity = identity
        self._value: T = value
        self._checked = clock()

    def get(self) -> T:
        """The current value, reloaded first when the file changed since the last check."""
        now = self._clock()
        if now - self._checked >= self._interval:
            self._checked = now
            self.refresh()
        return self._value

    def refresh(self) -> bool:
        """Check the file now; return whether a new value was loaded."""
        try:
            if self._stat() == self._identity:
                self._failure = None
                return False
            identity, value = self._read()
        except ValueError as exc:
            if str(exc) != self._failure:
                self._failure = str(exc)
                log.warning("%s %s: %s; keeping the previous ones", self.what, self.path, exc)
            return False
        self._identity, self._value, self._failure = identity, value, None
        log.info("%s reloaded from %s", self.what, self.path)
        return True

    def _stat(self) -> _Identity:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ValueError(f"cannot stat: {exc.strerror}") from None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _read(self) -> tuple[_Identity, T]:
        # Stat before reading: a change during the read shows at the next check.
        identity = self._stat()
        try:
            with open(self.path, "rb") as file:
                data = file.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read: {exc.strerror}") from None
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise ValueError(f"larger than {MAX_SECRET_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None  # the codec's message quotes a byte
        return identity, self._parse(text)
