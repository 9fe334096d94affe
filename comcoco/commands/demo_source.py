"""``comcoco demo-source``: write the embedded RefCOCO+-style demo source."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from comcoco.commands._common import EXIT_USAGE, UserError, user_errors
from comcoco.commands._options import out_option


def demo_source(
    out: Path = out_option("Directory to write the source into (created if missing)."),
    images: int = typer.Option(200, "--images", "-n", min=1, help="Number of images to draw (at least 4)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice; same seed and size, same bytes."),
    workers: int | None = typer.Option(
        None, "--workers", min=1,
        help="Processes drawing images (default: the CPU cores available, at most 8; 1 draws in this "
             "process). The files are the same bytes for any number."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress on stderr "
                                         "(default: on a terminal; in a log, one line per 10 %)."),
) -> None:
    """Write a synthetic REFER-format RefCOCO+ source: refs(unc).p, instances.json and JPEG images."""
    from comcoco.sources.demo import MIN_IMAGES, DemoSourceError, default_workers, generate_demo

    start = time.perf_counter()
    with user_errors(DemoSourceError):
        if images < MIN_IMAGES:
            raise UserError(f"--images: the demo source needs at least {MIN_IMAGES} images (one per split), "
                            f"got {images}", EXIT_USAGE)
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: a file stands where the source folder belongs")
        n_workers = default_workers() if workers is None else workers
        show = sys.stderr.isatty() if progress is None else progress
        report = generate_demo(out, n_images=images, seed=seed, workers=n_workers, progress=show)
    elapsed = time.perf_counter() - start
    splits = ", ".join(f"{name} {count}" for name, count in report.splits.items())
    typer.echo(
        f"wrote demo source {report.root}: {report.images} images, {report.annotations} annotations, "
        f"{report.refs} refs, {report.expressions} expressions in {elapsed:.1f} s "
        f"({n_workers} worker{'s' if n_workers > 1 else ''})"
    )
    typer.echo(f"refs per split: {splits}; scene clusters: {len(report.clusters)}")


def register(app: typer.Typer) -> None:
    app.command("demo-source")(demo_source)
