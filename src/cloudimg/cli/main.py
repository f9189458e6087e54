"""The ``cloudimg`` click group."""

from __future__ import annotations

import gc
import importlib
import logging

import click

from cloudimg import __version__
from cloudimg.logs import quiet_libraries

__all__ = ["cli", "main"]


_COMMANDS = {
    "serve": "cloudimg.cli.serve:serve",
    "db": "cloudimg.cli.db:db",
    "gc": "cloudimg.cli.gc:gc",
    "fsck": "cloudimg.cli.fsck:fsck",
    "import-legacy": "cloudimg.cli.import_legacy:import_legacy_command",
    "du": "cloudimg.cli.du:du",
    "copy-blobs": "cloudimg.cli.copy_blobs:copy_blobs_command",
    "unblock": "cloudimg.cli.unblock:unblock",
    "events": "cloudimg.cli.events:events",
    "push": "cloudimg.cli.transfer:push",
    "pull": "cloudimg.cli.transfer:pull",
    "ls": "cloudimg.cli.browse:ls",
    "inspect": "cloudimg.cli.browse:inspect",
    "history": "cloudimg.cli.browse:history_command",
    "tag": "cloudimg.cli.tagging:tag",
    "rm": "cloudimg.cli.tagging:rm",
    "immutable": "cloudimg.cli.tagging:immutable",
    "sync": "cloudimg.cli.sync:sync",
}
"""Each command's module is imported when the command runs (click's lazy group recipe):
a client command does not load the server, the catalog or the image inspectors."""


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _colon, name = target.partition(":")
        command = getattr(_import_for_good(module), name)
        assert isinstance(command, click.Command)
        return command


def _import_for_good(module: str) -> object:
    """Import a command's module with the garbage collector paused, then freeze what it made.

    A server's imports make about 100,000 tracked objects that live as long as the
    process: collections run during the import find nothing to free (~0.15 s of CPU),
    and every later full collection would walk those objects again, the interpreter's
    last ones at exit included (~0.5 s of CPU and wall time between a server's SIGTERM
    and its exit). ``gc.freeze`` is CPython's way to leave them out of collections;
    they are still freed by their reference counts.
    """
    gc.disable()
    try:
        return importlib.import_module(module)
    finally:
        gc.freeze()
        gc.enable()


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="cloudimg")
def cli() -> None:
    """cloudimg: a registry for virtual-machine disk images."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries()


def main() -> None:
    """Entry point of the console script."""
    cli()
