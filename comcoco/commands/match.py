"""``comcoco match``: scene matching, every referred object → its least similar backgrounds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from comcoco.commands._common import usage_errors, user_errors
from comcoco.commands._options import out_option


def match(
    source: Path = typer.Argument(
        ..., help="Source root: holds <dataset>/refs(<split-by>).p and instances.json."
    ),
    out: Path = out_option("Candidates parquet to write."),
    k: int = typer.Option(
        5, "--k", min=1, help="Backgrounds per referred object (fewer if its cluster is smaller)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the tie-break hash and of the usage-cap order."),
    similarity: str = typer.Option(
        "max", "--similarity", help="max: best sentence pair; union: Jaccard of the two word unions."
    ),
    max_uses: int | None = typer.Option(
        None, "--max-uses", min=1, help="Cap on how often one background is chosen (default: no cap)."
    ),
    match_across_splits: bool = typer.Option(
        False, "--match-across-splits",
        help="Draw backgrounds from any split (default: only the object's own train/val/test group, "
             "so releases can be split without leaks; `comcoco build` does the same)."),
    stop_words: str = typer.Option(
        "none", "--stop-words", help="Stop words dropped before Jaccard: none or english."
    ),
    dataset: str = typer.Option("refcoco+", "--dataset", help="Dataset folder inside SOURCE."),
    split_by: str = typer.Option("unc", "--split-by", help="Refs file variant: refs(<split-by>).p."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Choose background images per referred object: same scene cluster, least similar expressions.

    Reads only refs and instances.json (no image files). Writes one row per (ref_id, rank). With the
    same seed and options, `comcoco compose` on these candidates makes the samples `comcoco build` makes.
    """
    from comcoco.matching.candidates import match_summary, write_candidates
    from comcoco.matching.gaps import match_gaps
    from comcoco.matching.rules import DISTINCT_JACCARD
    from comcoco.matching.source import MatchOptions, match_source
    from comcoco.sources.refer import SourceError, load_source

    start = time.perf_counter()
    with usage_errors():
        options = MatchOptions(k=k, seed=seed, similarity=similarity, max_uses=max_uses,
                               within_splits=not match_across_splits, stop_words=stop_words)
    with user_errors(SourceError):
        src = load_source(source, dataset=dataset, split_by=split_by)
        refs = src.refs()
        candidates = match_source(refs, src.annotations(), options,
                                  progress=sys.stderr.isatty() if progress is None else progress)
        write_candidates(out, candidates, options.params() | {"dataset": dataset, "split_by": split_by})
        gaps = match_gaps(refs, src.annotations(), candidates, options)
    summary = match_summary(refs, candidates, k) | {
        "gaps": gaps.to_dict(),
        "output": str(out),
        "source_problems": len(src.problems),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    typer.echo(
        f"wrote {summary['candidates']} candidates for {summary['refs']} refs "
        f"({summary['backgrounds']} distinct backgrounds) to {out} in {summary['seconds']:.1f} s"
    )
    for line in gaps.lines():
        typer.echo(line)
    if summary["above_distinct"]:
        typer.echo(f"{summary['above_distinct']} chosen backgrounds have expressions more similar than "
                   f"{DISTINCT_JACCARD} to their object's: their cluster has no less similar image")
    if src.problems:
        typer.echo(f"source has {len(src.problems)} problems (see `comcoco inspect`)", err=True)


def register(app: typer.Typer) -> None:
    app.command("match")(match)
