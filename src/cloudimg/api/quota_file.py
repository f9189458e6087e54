"""The quota file of ``--quota-file``: read at start-up, re-read when it changes.

The same reloading as the credential and policy files (:class:`cloudimg.api.secret_file.
SecretFile`): a change shows within a second or so; a file that turns unreadable or
malformed keeps the last good quotas and logs a warning. The rules themselves are the
registry core's (:mod:`cloudimg.core.quotas`).
"""

from __future__ import annotations

from collections.abc import Callable

from cloudimg.api.secret_file import SecretFile
from cloudimg.config import Settings, SettingsError
from cloudimg.core import Quotas
from cloudimg.core.quotas import parse_quotas

__all__ = ["load_quotas"]


def load_quotas(settings: Settings) -> Callable[[], Quotas] | None:
    """The quotas of ``settings.quota_file`` as they are at each call (None: no file).

    Raises:
        SettingsError: on ``quota_file``: missing, unreadable or malformed.
    """
    path = settings.quota_file
    if path is None:
        return None
    try:
        quotas = SecretFile(path, parse_quotas, what="quotas")
    except ValueError as exc:
        raise SettingsError("quota_file", f"{path}: {exc}") from None
    return quotas.get
