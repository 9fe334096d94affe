"""``comcoco validate RELEASE``: train and evaluate SAHM on a release and run the language baseline.

A published release never changes: the report goes beside it, to ``RELEASE.validation/`` (validation.json
and a README with the card's validation section), and the run to ``<releases>/sahm-runs/comcoco-X.Y.Z``
unless ``--out``. To ship a validation inside a release, validate while building it:
``comcoco release ... --validate``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from comcoco.commands._common import EXIT_USAGE, UserError
from comcoco.commands.sahm import CACHE_HELP, PRECISION_HELP, THREADS_HELP, precision_option


def validate(
    release: Path = typer.Argument(..., help="An extracted release folder."),
    out: Path | None = typer.Option(None, "--out", "-o", help="The run folder (default: "
                                    "<releases>/sahm-runs/<release name>; an existing run is continued)."),
    config: str = typer.Option("auto", "--config", help="auto (paper on CUDA, tiny on CPU), tiny or paper."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Training steps (default: tiny 300, paper 3000)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Per process (default: paper 8, tiny 4)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
    cache_mb: float = typer.Option(1024, "--cache-mb", min=0, help=CACHE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed for training and the random-text baseline."),
    variant: str = typer.Option("ComCOCO", "--variant", help="ComCOCO or ComCOCO+."),
    fid_net: Path | None = typer.Option(None, "--fid-net", help="TorchScript Inception feature network "
                                        "(or $COMCOCO_FID_WEIGHTS)."),
    alexnet: Path | None = typer.Option(None, "--alexnet", help="alexnet-owt-7be5be79.pth for LPIPS "
                                        "(or $COMCOCO_LPIPS_ALEXNET)."),
    blind: bool = typer.Option(True, "--blind/--no-blind", help="Also train a model on empty expressions (RUN/blind) "
                               "and report a shortcut when it finds the objects anyway; doubles the training time."),
    write: bool = typer.Option(True, "--write/--no-write", help="Write the report to RELEASE.validation/ (beside "
                               "the release, which is never changed)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Validate RELEASE with SAHM: train, evaluate on test, and compare original / random / null text IoU."""
    from comcoco.commands.sahm import _errors
    from comcoco.sahm.runs import Runtime
    from comcoco.sahm.validate import ValidationOptions, pasted_note, validate_release, write_validation

    with _errors():
        if config not in ("auto", "tiny", "paper"):
            raise UserError(f"--config must be auto, tiny or paper, got {config!r}", EXIT_USAGE)
        if not (release / "manifest.json").is_file() and not (release / variant).is_dir():
            raise UserError(f"{release}: not a comcoco release (no manifest.json or {variant}/)")
        options = ValidationOptions(
            config=config, steps=steps, batch_size=batch_size, variant=variant, seed=seed,
            fid_net=str(fid_net) if fid_net else None, alexnet=str(alexnet) if alexnet else None, blind=blind,
            runtime=Runtime(device=device, precision=precision_option(precision), num_workers=workers,
                            progress=progress, cache_mb=cache_mb, threads=threads),
        )
        result = validate_release(release, out, options)
        if not result:  # a non-zero rank under torchrun
            return
        if write:
            path = write_validation(release, result)
    typer.echo(result["title"])
    width = max(map(len, result["metrics"]), default=0) + 1
    for name, value in result["metrics"].items():
        typer.echo(f"  {name:<{width}} {value}")
    typer.echo(f"language baseline: {result['language_baseline']['verdict']}")
    if note := pasted_note(result["language_baseline"]):
        typer.echo(f"  {note}")
    typer.echo(f"run      {result['run']['path']}")
    if write:
        typer.echo(f"written  {path}")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
