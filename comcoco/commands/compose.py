"""``comcoco compose``: cut, place, harmonize and paste matched objects; write images and samples.parquet."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from comcoco.commands._common import EXIT_PARTIAL, UserError, fail, usage_errors, user_errors
from comcoco.commands._options import (
    ComposeOptions,
    check_image_root,
    compose_options,
    image_root_option,
    out_option,
)
from comcoco.progress import Progress


class _Progress:
    """Progress over composites on stderr (a bar, or a line per 10 % in a log), created once the total is known."""

    def __init__(self) -> None:
        self._bar: Progress | None = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = Progress("compose", total, unit="composite")
        self._bar.advance(done - self._bar.done)


@compose_options
def compose(
    source: Path = typer.Argument(..., help="Source root: holds <dataset>/refs(<split-by>).p and <dataset>/instances.json."),
    candidates: Path = typer.Option(..., "--candidates", help="Background candidates Parquet (from `comcoco match`)."),
    out: Path = out_option("Output directory (images/, gt/, masks/, samples.parquet)."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Compose at most N samples (in ref order)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice; same seed, same bytes."),
    dataset: str = typer.Option("refcoco+", "--dataset", help="Dataset folder inside SOURCE."),
    split_by: str = typer.Option("unc", "--split-by", help="Refs file variant: refs(<split-by>).p."),
    images: Path | None = typer.Option(None, "--images", help="Image directory (default SOURCE/images/mscoco/images/train2014)."),
    image_root: Path | None = image_root_option(),
    strict: bool = typer.Option(False, "--strict", help="Any failed sample makes the verb fail (exit 4)."),
    compose: ComposeOptions = ComposeOptions(),
) -> None:
    """Compose samples: composite, exact ground truth, mask and one metadata row each.

    Given the candidates of `comcoco match` (same seed and matching options), it makes exactly the samples
    `comcoco build` makes, in one folder instead of shards.
    """
    from comcoco.compose.run import run_compose
    from comcoco.sources.refer import SourceError, load_source

    with user_errors():
        compose.check_paths()
    with usage_errors():
        config = compose.config(seed)
        config.validate()
    with user_errors(SourceError):
        if not candidates.is_file():
            raise UserError(f"{candidates}: no such candidates file" if not candidates.exists()
                            else f"{candidates}: --candidates is not a file")
        if images is not None and not images.is_dir():
            raise UserError(f"{images}: --images is not a directory")
        src = load_source(source, dataset=dataset, split_by=split_by, images=images,
                          image_root=check_image_root(image_root))
        with _Progress() as progress:
            rows = run_compose(src, candidates, out, config, limit=limit, progress=progress)
    counts = Counter(r.status for r in rows)
    summary = ", ".join(f"{k} {counts[k]}" for k in sorted(counts)) or "nothing to compose"
    typer.echo(f"composed {len(rows)} samples into {out} ({summary}); config {config.fingerprint()}")
    ok = [r for r in rows if r.ok]
    if config.image_format == "jpeg" and ok:
        worst = max(r.outside_error or 0.0 for r in ok)
        mean = sum(r.outside_error or 0.0 for r in ok) / len(ok)
        typer.echo(f"jpeg q{config.jpeg_quality}: mean abs error outside the dilated mask {mean:.3f} (worst {worst:.3f})")
    failed = [r for r in rows if not r.ok]
    for r in failed[:10]:
        typer.echo(f"  {r.status}: {r.reason}", err=True)
    if len(failed) > 10:
        typer.echo(f"  ... and {len(failed) - 10} more in {out / 'samples.parquet'} (status != 'ok')", err=True)
    if rows and not ok:
        fail(f"none of {len(rows)} samples is ok ({summary})", EXIT_PARTIAL)
    if strict and failed:
        fail(f"{len(failed)} of {len(rows)} samples failed (--strict)", EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    app.command("compose")(compose)
