"""How long work shows its progress on stderr: one mechanism for every command.

On a terminal, a rich progress bar per task (counts or bytes, rate, ETA), redrawn in
place; otherwise (a CronJob's log, a pipe) a plain line per task every
``--progress-interval`` seconds and one when the task ends; with ``--quiet``, nothing.
Progress always goes to stderr, so a command's report (JSON or text) on stdout stays
the only thing there.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from cloudimg.cli.flags import option
from cloudimg.progress import Unit
from cloudimg.units import human_bytes

__all__ = ["ProgressDisplay", "progress_options"]

F = TypeVar("F", bound=Callable[..., Any])


def progress_options(func: F) -> F:
    """``--quiet`` and ``--progress-interval``: whether and how often progress is told."""
    func = option(
        "--progress-interval",
        type=click.FloatRange(min=0, min_open=True),
        default=10.0,
        help="Seconds between plain progress lines when stderr is not a terminal",
    )(func)
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        envvar="CLOUDIMG_QUIET",
        show_envvar=True,
        help="Show no progress on stderr",
    )(func)


class _CountColumn(ProgressColumn):
    """``3/10`` for counted things, ``1.2/4.0 GB`` for bytes (rich renders both)."""

    def __init__(self) -> None:
        super().__init__()
        self._items, self._bytes = MofNCompleteColumn(), DownloadColumn(binary_units=True)

    def render(self, task: Task) -> Text:
        column = self._bytes if task.fields.get("unit") == "bytes" else self._items
        return column.render(task)


class _RateColumn(ProgressColumn):
    """``512.0 MiB/s`` for bytes, ``120/s`` for counted things."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "bytes":
            return self._bytes.render(task)
        speed = task.finished_speed or task.speed
        return Text("?/s" if speed is None else f"{speed:.0f}/s", style="progress.data.speed")


class ProgressDisplay:
    """A ``cloudimg.progress.Progress`` callback that shows what it is told.

    Use as a context manager around the work; callable from any thread.
    """

    def __init__(
        self,
        *,
        quiet: bool = False,
        interval: float = 10.0,
        stream: TextIO | None = None,
        label: str = "",
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._quiet = quiet
        self._interval = interval
        self._prefix = f"{label} " if label else ""
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._plain: dict[str, _PlainTask] = {}
        self._bar: Progress | None = None
        if not quiet and self._stream.isatty():
            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                TextColumn("[progress.percentage]{task.percentage:>3.0f}%"),
                _CountColumn(),
                _RateColumn(),
                TimeRemainingColumn(compact=True, elapsed_when_finished=True),
                console=Console(file=self._stream),
                transient=False,
            )

    def __enter__(self) -> ProgressDisplay:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, task: str, done: int, total: int, unit: Unit) -> None:
        if self._quiet:
            return
        with self._lock:
            if self._bar is not None:
                self._update_bar(task, done, total, unit)
            else:
                self._update_plain(task, done, total, unit)

    def restart(self, task: str) -> None:
        """Start ``task`` again from nothing (a transfer that begins anew after a retry)."""
        with self._lock:
            if self._bar is not None and task in self._tasks:
                self._bar.reset(self._tasks[task])
            self._plain.pop(task, None)

    def _update_bar(self, task: str, done: int, total: int, unit: Unit) -> None:
        assert self._bar is not None
        if task not in self._tasks:
            description = self._prefix + task
            self._tasks[task] = self._bar.add_task(description, total=total or None, unit=unit)
        self._bar.update(self._tasks[task], completed=done, total=total or None)

    def _update_plain(self, task: str, done: int, total: int, unit: Unit) -> None:
        state = self._plain.setdefault(task, _PlainTask(time.monotonic()))
        now = time.monotonic()
        finished = done >= total
        if state.ended or (not finished and now - state.shown < self._interval):
            return
        state.shown, state.ended = now, finished
        line = _plain_line(self._prefix + task, done, total, unit, now - state.started)
        click.echo(line, file=self._stream)


class _PlainTask:
    __slots__ = ("ended", "shown", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.shown = started  # the first line comes one interval in (or at the end)
        self.ended = False


def _plain_line(name: str, done: int, total: int, unit: Unit, elapsed: float) -> str:
    """``hashed: 1.5 GiB of 4.0 GiB (37%), 512.0 MiB/s, 5s left``: one log line."""
    show = human_bytes if unit == "bytes" else str
    rate = done / elapsed if elapsed > 0 else 0.0
    shown_rate = f"{human_bytes(rate)}/s" if unit == "bytes" else f"{rate:.0f}/s"
    if done >= total:
        return f"{name}: {show(done)} of {show(total)} (100%) in {elapsed:.1f}s, {shown_rate}"
    left = f"{(total - done) / rate:.0f}s left" if rate > 0 else "? left"
    percent = 100 * done / total
    return f"{name}: {show(done)} of {show(total)} ({percent:.0f}%), {shown_rate}, {left}"
