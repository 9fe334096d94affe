"""Helpers shared by CLI verbs: expected errors become one line on stderr and an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from comcoco.errors import ComcocoError


class UserError(ComcocoError):
    """An expected, explainable failure: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn expected failures into ``error: <message>`` and exit code 2 (or the error's code).

    Expected failures are ``ComcocoError`` (every wing's errors derive from it) and the ``kinds`` a verb
    names (the operating system's ``OSError`` where a verb reads or writes user paths). Anything else is
    a bug and keeps its traceback.
    """
    try:
        yield
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except (ComcocoError, *kinds) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None



def fail_with_problems(problems: list[str], summary: str, limit: int = 50) -> None:
    """Print up to ``limit`` problems and a summary line on stderr, then exit 1 (a release failed its check)."""
    for p in problems[:limit]:
        typer.echo(f"  {p}", err=True)
    if len(problems) > limit:
        typer.echo(f"  ... and {len(problems) - limit} more", err=True)
    typer.echo(f"error: {summary}", err=True)
    raise typer.Exit(1)
