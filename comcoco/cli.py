"""The ``comcoco`` command line: one verb per module in ``comcoco/commands``.

Each command module defines ``register(app)``; this face only collects them, so verbs can be added
without touching this file. No domain logic lives here or in the command modules beyond argument
handling and reporting.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import comcoco
import comcoco.commands
from comcoco.commands._common import OneLineErrors, stop_like_ctrl_c_on_termination

app = typer.Typer(
    name="comcoco",
    cls=OneLineErrors,
    help="Build ComCOCO-style referring object removal datasets from RefCOCO+ sources.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"comcoco {comcoco.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Build ComCOCO-style referring object removal datasets from RefCOCO+ sources."""


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(comcoco.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"comcoco.commands.{info.name}")
        module.register(app)


_register_commands()


def main() -> None:
    stop_like_ctrl_c_on_termination()
    app()
