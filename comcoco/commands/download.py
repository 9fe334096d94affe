"""``comcoco download``: fetch a release (URL or path of dist/index.json), verify and extract it."""

from __future__ import annotations

from pathlib import Path

import typer

from comcoco.commands._common import fail_with_problems, user_errors
from comcoco.commands._options import out_option


def download(
    location: str = typer.Argument(..., help="URL or path of a release's dist/index.json, or of its folder."),
    out: Path = out_option("Where to extract the release (must not exist or be empty)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Download with resume, check every shard's sha256, extract safely, then verify the manifest."""
    from comcoco.release.download import download_release
    from comcoco.release.manifest import verify_release

    with user_errors():
        out = download_release(location, out, progress=progress)
        problems = verify_release(out, progress=progress)
    if problems:
        fail_with_problems(problems, f"{out}: {len(problems)} file(s) do not match manifest.json")
    typer.echo(f"release extracted and verified: {out}")


def register(app: typer.Typer) -> None:
    app.command("download")(download)
