"""``comcoco compose``: cut, place, harmonize and paste matched objects; write images and samples.parquet."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import typer

from comcoco.commands._common import UserError, user_errors

_PLACEMENTS = "prior|graconet"
_HARMONIZE = "fit|reinhard|none|network"


class _Progress:
    """A stderr progress bar over composites, created once the total is known."""

    def __init__(self) -> None:
        self._bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="composite", desc="compose", file=sys.stderr, leave=False)
        self._bar.update(done - self._bar.n)


def compose(
    source: Path = typer.Argument(..., help="Source root: holds <dataset>/refs(<split-by>).p and <dataset>/instances.json."),
    candidates: Path = typer.Option(..., "--candidates", help="Background candidates Parquet (from `comcoco match`)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory (images/, gt/, masks/, samples.parquet)."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Compose at most N samples (in ref order)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice; same seed, same bytes."),
    placement: str = typer.Option("prior", "--placement", help=f"Placement: {_PLACEMENTS}."),
    graconet_ckpt: Path | None = typer.Option(None, "--graconet-ckpt", help="GracoNet checkpoint (for --placement graconet)."),
    harmonize: str = typer.Option("fit", "--harmonize", help=f"Harmonization: {_HARMONIZE}."),
    harmonizer_ckpt: Path | None = typer.Option(None, "--harmonizer-ckpt", help="Harmonizer checkpoint (for --harmonize network)."),
    objects_per_image: int = typer.Option(1, "--objects-per-image", min=1, help="Paste up to k matched objects into one background."),
    candidates_per_ref: int = typer.Option(1, "--candidates-per-ref", min=1, help="Backgrounds used per ref (best ranks first)."),
    image_format: str = typer.Option("png", "--image-format", help="png (lossless pairs) or jpeg (smaller; reports outside-mask error)."),
    jpeg_quality: int = typer.Option(95, "--jpeg-quality", min=1, max=100, help="JPEG quality for --image-format jpeg."),
    png_level: int = typer.Option(1, "--png-level", min=0, max=9, help="PNG zlib level (1: fast; 0: no compression, 2x size)."),
    dataset: str = typer.Option("refcoco+", "--dataset", help="Dataset folder inside SOURCE."),
    split_by: str = typer.Option("unc", "--split-by", help="Refs file variant: refs(<split-by>).p."),
    images: Path | None = typer.Option(None, "--images", help="Image directory (default SOURCE/images/mscoco/images/train2014)."),
) -> None:
    """Compose samples: composite, exact ground truth, mask and one metadata row each."""
    from comcoco.compose import ComposeConfig, ComposeConfigError, SamplesFileError, run_compose
    from comcoco.matching.scene import CandidatesFileError
    from comcoco.sources.refer import SourceError, load_source

    config = ComposeConfig(
        seed=seed,
        placement=placement,
        harmonize=harmonize,
        objects_per_image=objects_per_image,
        candidates_per_ref=candidates_per_ref,
        image_format=image_format,
        jpeg_quality=jpeg_quality,
        png_compression=png_level,
        graconet_ckpt=str(graconet_ckpt) if graconet_ckpt is not None else None,
        harmonizer_ckpt=str(harmonizer_ckpt) if harmonizer_ckpt is not None else None,
    )
    from comcoco.harmonize.network import CheckpointError
    from comcoco.placement.graconet import GracoNetError

    with user_errors(ComposeConfigError, SourceError, SamplesFileError, CandidatesFileError, GracoNetError, CheckpointError):
        config.validate()
        if not candidates.is_file():
            raise UserError(f"{candidates}: no such candidates file")
        if images is not None and not images.is_dir():
            raise UserError(f"{images}: --images is not a directory")
        src = load_source(source, dataset=dataset, split_by=split_by, images=images)
        with _Progress() as progress:
            rows = run_compose(src, candidates, out, config, limit=limit, progress=progress)
    counts = Counter(r.status for r in rows)
    summary = ", ".join(f"{k} {counts[k]}" for k in sorted(counts)) or "nothing to compose"
    typer.echo(f"composed {len(rows)} samples into {out} ({summary}); config {config.fingerprint()}")
    ok = [r for r in rows if r.ok]
    if config.image_format == "jpeg" and ok:
        worst = max(r.outside_error or 0.0 for r in ok)
        mean = sum(r.outside_error or 0.0 for r in ok) / len(ok)
        typer.echo(f"jpeg q{jpeg_quality}: mean abs error outside the dilated mask {mean:.3f} (worst {worst:.3f})")
    for r in [r for r in rows if not r.ok][:10]:
        typer.echo(f"  {r.status}: {r.reason}", err=True)


def register(app: typer.Typer) -> None:
    app.command("compose")(compose)
