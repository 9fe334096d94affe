"""``comcoco verify``: re-check an extracted release against its manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from comcoco.commands._common import fail_with_problems, user_errors


def verify(
    release: Path = typer.Argument(..., help="An extracted release folder (holds manifest.json)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Re-hash every file listed in manifest.json; exit 0 when all match, 3 with the problems otherwise."""
    from comcoco.release.manifest import ManifestError, verify_release

    with user_errors(ManifestError):
        problems = verify_release(release, progress=progress)
    if problems:
        fail_with_problems(problems, f"{release}: {len(problems)} problem(s)")
    typer.echo(f"ok: every file of {release} matches manifest.json")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
