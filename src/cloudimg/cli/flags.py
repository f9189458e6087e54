"""Options that also read a ``CLOUDIMG_*`` variable (a leaf: no server import behind it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["envvar", "option"]

F = TypeVar("F", bound=Callable[..., Any])


def envvar(flag: str) -> str:
    """``--data-root`` reads ``CLOUDIMG_DATA_ROOT``; ``--web/--no-web`` reads ``CLOUDIMG_WEB``."""
    name = flag.partition("/")[0]
    return "CLOUDIMG_" + name.removeprefix("--").replace("-", "_").upper()


def option(flag: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option that also reads its ``CLOUDIMG_*`` variable and shows its default."""
    return click.option(flag, envvar=envvar(flag), show_default=True, show_envvar=True, **kwargs)
