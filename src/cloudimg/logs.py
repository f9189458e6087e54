"""Log output: one JSON object per line, or plain text, on stderr.

Every record can carry the id of the request it belongs to: the access log middleware
(``cloudimg.api.middleware``) sets it in a context variable for the duration of the
request, so an error logged while handling a request names the same ``request_id``
as that request's access line.

Credentials never reach the output: nothing logs request headers other than
``User-Agent``, and as a second line of defence every message has ``Bearer``/``Basic``
credentials masked before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal

__all__ = [
    "LOG_FORMATS",
    "QUIET_LOGGERS",
    "JsonFormatter",
    "LogFormat",
    "QuietGranian",
    "TextFormatter",
    "configure_logging",
    "granian_log_config",
    "quiet_libraries",
    "redact",
    "request_id_var",
]

LogFormat = Literal["json", "text"]
LOG_FORMATS: Final = ("json", "text")

request_id_var: ContextVar[str | None] = ContextVar("cloudimg_request_id", default=None)
"""Id of the request being handled by the current task, if any."""

_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s,;\"']+")
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is output.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def redact(text: str) -> str:
    """``text`` with the credentials of ``Bearer xyz`` and ``Basic xyz`` masked."""
    return _CREDENTIALS.sub(r"\1\2[REDACTED]", text)


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` on one line (tracebacks follow)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extra_fields(record)
        request_id = request_id_var.get()
        if request_id is not None and "request_id" not in extras:
            extras["request_id"] = request_id
        if extras:
            first, sep, rest = line.partition("\n")
            pairs = " ".join(f"{k}={v}" for k, v in extras.items())
            line = f"{first} {pairs}{sep}{rest}"
        return redact(line)


class QuietGranian(logging.Filter):
    """Drop Granian's start-up notices that tell an operator nothing.

    "Embedded server is experimental!" comes with every ``serve``: the embedded server
    is the one cloudimg chose (docs/performance.md), so the warning is noise.
    """

    _NOISE: Final = frozenset({"Embedded server is experimental!"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self._NOISE


QUIET_LOGGERS: Final = ("botocore",)
"""Libraries whose INFO lines are noise: botocore tells where it found credentials at
every client it makes, which would turn a start-up's one-line error into three."""


def quiet_libraries() -> None:
    """Keep the ``QUIET_LOGGERS`` to warnings and errors."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(log_format: LogFormat = "text", level: int = logging.INFO) -> None:
    """Send every log record (ours, Litestar's, Granian's) to stderr in ``log_format``."""
    quiet_libraries()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def granian_log_config(log_format: LogFormat = "text") -> dict[str, Any]:
    """A ``log_dictconfig`` for Granian: every record to stderr in ``log_format``.

    Granian applies it in the serving process and in each worker process it starts,
    and its own loggers hand their records to the root logger instead of writing
    plain text to stdout (which would mix into a JSON log).
    """
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"cloudimg": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "filters": {"quiet": {"()": f"{QuietGranian.__module__}.{QuietGranian.__qualname__}"}},
        "handlers": {
            "cloudimg": {
                "class": "logging.StreamHandler",
                "formatter": "cloudimg",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["cloudimg"], "level": "INFO"},
        "loggers": {
            "_granian": {"handlers": [], "level": "INFO", "propagate": True, "filters": ["quiet"]},
            # Our middleware writes the access log; Granian's own stays off.
            "granian.access": {"handlers": [], "level": "WARNING", "propagate": True},
            **{
                name: {"handlers": [], "level": "WARNING", "propagate": True}
                for name in QUIET_LOGGERS
            },
        },
    }
