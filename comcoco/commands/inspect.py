"""``comcoco inspect``: validate a REFER-format source and print its counts and problems."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from comcoco.commands._common import UserError, user_errors
from comcoco.commands._options import check_image_root, image_root_option
from comcoco.sources.format import short
from comcoco.sources.refer import DEFAULT_DATASET, DEFAULT_SPLIT_BY, SourceError, load_source
from comcoco.sources.validate import InspectReport, inspect_source

MAX_LISTED = 20


def _print_report(report: InspectReport) -> None:
    typer.echo(f"source   {report.source}  ({Path(report.refs_file).name}, instances.json)")
    typer.echo(f"images   {report.image_dir}")
    typer.echo(f"{'split':<10}{'refs':>10}{'expressions':>14}{'images':>10}")
    for name, counts in report.splits.items():
        # a split name is data: never a terminal escape, never a line without end
        shown = name if name.isprintable() and len(name) <= 40 else short(name)
        typer.echo(f"{shown:<10}{counts.refs:>10}{counts.expressions:>14}{counts.images:>10}")
    typer.echo(f"{'total':<10}{report.refs:>10}{report.expressions:>14}{report.referred_images:>10}")
    typer.echo(f"instances.json: {report.images} images, {report.annotations} annotations")
    check = "every image decoded" if report.deep else "image headers read (--deep decodes every image)"
    typer.echo(f"checked: {check}")
    if not report.problems:
        typer.echo("problems: none")
        return
    summary = ", ".join(f"{kind} {n}" for kind, n in report.problem_counts().items())
    typer.echo(f"problems: {len(report.problems)} ({summary})")
    for p in report.problems[:MAX_LISTED]:
        typer.echo(f"  {p.kind}: {p.message}  [{p.file}]")
    if len(report.problems) > MAX_LISTED:
        typer.echo(f"  ... {len(report.problems) - MAX_LISTED} more (use --json for the full list)")


def inspect(
    source: Path = typer.Argument(..., help="Source root: holds <dataset>/refs(<split-by>).p and <dataset>/instances.json."),
    dataset: str = typer.Option(DEFAULT_DATASET, "--dataset", help="Dataset folder inside SOURCE."),
    split_by: str = typer.Option(DEFAULT_SPLIT_BY, "--split-by", help="Refs file variant: refs(<split-by>).p."),
    images: Path | None = typer.Option(
        None, "--images", help="Image directory (default SOURCE/images/mscoco/images/train2014)."
    ),
    image_root: Path | None = image_root_option(),
    deep: bool = typer.Option(False, "--deep", help="Fully decode every image instead of reading headers."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Threads for image checks (default: cores, max 8)."),
) -> None:
    """Validate a REFER-format source: counts per split and a list of problems (exit 0 if usable)."""
    with user_errors(SourceError):
        if images is not None and not images.is_dir():
            raise UserError(f"{images}: --images is not a directory")
        src = load_source(source, dataset=dataset, split_by=split_by, images=images,
                          image_root=check_image_root(image_root))
        report = inspect_source(src, deep=deep, workers=workers)
    if as_json:
        text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
        typer.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))  # a lone surrogate stays escaped
    else:
        _print_report(report)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
