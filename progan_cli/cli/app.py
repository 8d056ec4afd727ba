"""The Typer app behind the `progan` console script.

Each command lives in its own module under `progan_cli.cli` with a `register(app)` function; heavy imports
(torch, h5py) happen inside the commands so `progan --help` stays instant.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

from progan_cli.errors import ProganError

# Modules under progan_cli.cli that add commands, in the order `progan --help` lists them.
COMMAND_MODULES = ("demo", "prep", "info", "train", "sample", "metrics", "eval", "download", "plot")


class _ProganGroup(TyperGroup):
    """Turns a ProganError raised by any command into one line `Error: ...` on stderr and its exit code."""

    def invoke(self, ctx):  # click's hook around every subcommand
        try:
            return super().invoke(ctx)
        except ProganError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="progan",
    cls=_ProganGroup,
    help="Progressive Growing of GANs: prep photos, train, sample and score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    """--version acts while the options are parsed (is_eager), before click asks for a command."""
    if value:
        from progan_cli import __version__

        typer.echo(f"progan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version, expose_value=False),
) -> None:
    """Progressive Growing of GANs: prep photos, train, sample and score."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"progan_cli.cli.{_name}").register(app)


def main() -> None:
    """Entry point of the `progan` console script."""
    app()
