"""Options shared by commands; each also reads ``CLOUDIMG_<FLAG_NAME>`` from the environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cloudimg.config import Settings

__all__ = ["settings_from", "storage_options"]

F = TypeVar("F", bound=Callable[..., Any])
_DEFAULTS = Settings()


def envvar(flag: str) -> str:
    """``--data-root`` reads ``CLOUDIMG_DATA_ROOT``."""
    return "CLOUDIMG_" + flag.removeprefix("--").replace("-", "_").upper()


def option(flag: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option that also reads its ``CLOUDIMG_*`` variable and shows its default."""
    return click.option(flag, envvar=envvar(flag), show_default=True, show_envvar=True, **kwargs)


def storage_options(func: F) -> F:
    """``--data-root`` and ``--database-url``: where the registry's state lives."""
    func = option(
        "--database-url",
        default=None,
        help="SQLAlchemy async URL of the catalog [default: SQLite file in the data root]",
    )(func)
    return option(
        "--data-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=_DEFAULTS.data_root,
        help="Directory of the blob store (and of the default SQLite catalog)",
    )(func)


def settings_from(**values: Any) -> Settings:
    """Settings from the parsed options (unknown keys are other commands' business)."""
    fields = {name: values[name] for name in Settings.__dataclass_fields__ if name in values}
    return Settings(**fields)
