"""`comcoco build`: the whole pipeline from a REFER-format source to a finished work directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from comcoco.commands._common import (
    EXIT_PARTIAL,
    PartialResult,
    UserError,
    describe_os_error,
    fail,
    is_disk_full,
    usage_errors,
    user_errors,
)
from comcoco.commands._options import (
    ComposeOptions,
    check_image_root,
    compose_options,
    image_root_option,
    out_option,
)


@compose_options
def build(
    source: Path = typer.Argument(..., help="REFER-format source root (holds <dataset>/refs(<split-by>).p)."),
    out: Path = out_option("Work directory (created; resumed when it exists)."),
    dataset: str = typer.Option("refcoco+", help="Dataset folder under SOURCE."),
    split_by: str = typer.Option("unc", help="Split name in refs(<split-by>).p."),
    images: Path | None = typer.Option(None, help="Image folder (default SOURCE/images/mscoco/images/train2014)."),
    image_root: Path | None = image_root_option(),
    limit: int | None = typer.Option(None, min=1, help="Compose at most N samples (the first refs by id)."),
    seed: int = typer.Option(0, help="Seed for matching ties, placement and everything random."),
    k: int = typer.Option(5, min=1, help="Background candidates per object from scene matching."),
    similarity: str = typer.Option("max", help="Jaccard aggregation: max | union."),
    max_uses: int | None = typer.Option(None, min=1, help="Cap on how often one background is chosen."),
    match_across_splits: bool = typer.Option(
        False, "--match-across-splits",
        help="Draw backgrounds from any split (default: only the object's own train/val/test group, "
             "so releases can be split without leaks)."),
    shard_size: int = typer.Option(256, min=1, help="Samples per shard (the unit of work and resume)."),
    runner: str = typer.Option("local", help="local (threads in this process) | dask."),
    workers: int = typer.Option(1, min=1, help="Threads (local) or worker processes (dask local cluster)."),
    dask_address: str | None = typer.Option(None, help="Join an existing Dask scheduler tcp://HOST:PORT."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Recompose only samples that failed before."),
    strict: bool = typer.Option(False, "--strict", help="Any failed sample makes the build fail "
                                "(exit 4, the Prefect run Failed) instead of a summary of the failures."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
    compose: ComposeOptions = ComposeOptions(),
) -> None:
    """Validate, match, plan and compose SOURCE into the work directory OUT, resumably.

    Exit 0 when every sample is ok or failed with a reason (listed); 4 when a shard did not complete,
    nothing is ok, nothing was planned, or (with --strict) any sample failed; see docs/cli.md.
    """
    from comcoco.build import prepare_workdir
    from comcoco.plan import BuildConfig, SourceSpec
    from comcoco.workdir import Workdir, cached_models, cached_source
    from pipelines.runners import RunnerSpec

    with user_errors():
        compose.check_paths()
    with usage_errors():
        compose_config = compose.config(seed)
        compose_config.validate()
        config = BuildConfig(seed=seed, k=k, similarity=similarity, max_uses=max_uses,
                             match_within_splits=not match_across_splits, limit=limit,
                             shard_size=shard_size, compose=compose_config)
        config.match_options()  # an unusable matching option fails here, naming it
        runner_spec = RunnerSpec(kind=runner, workers=workers, address=dask_address)
    with user_errors():
        if not source.is_dir():
            raise UserError(f"{source}: SOURCE is not a folder" if source.exists() else f"{source}: no such source folder")
        if images is not None and not images.is_dir():
            raise UserError(f"{images}: --images is not a folder" if images.exists() else f"{images}: no such --images folder")
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: a file stands where the work directory belongs")
        spec = SourceSpec(root=str(source.resolve()), dataset=dataset, split_by=split_by,
                          images=str(images.resolve()) if images else None, image_root=check_image_root(image_root))
        out.mkdir(parents=True, exist_ok=True)  # an output path that cannot be a folder fails here
        with Workdir(out.resolve()).lock("build"):  # a second build (or a pull) is refused before any work
            # so are a mismatched work directory and a source that changed since the plan
            prepare_workdir(out, config, spec, retry_failed)
            cached_source(spec)  # an unreadable source fails here, in one line, before the flow starts
            cached_models(config)  # so does a checkpoint that does not load
            from pipelines.build import run_build

            show = sys.stderr.isatty() if progress is None else progress
            try:
                summary = run_build(spec, out, config, runner_spec, retry_failed=retry_failed, progress=show,
                                    strict=strict)
            except OSError as exc:
                if is_disk_full(exc):
                    raise PartialResult(f"{describe_os_error(exc)}; what was finished is kept in {out}: free "
                                        "some space and run the same command again to resume") from None
                raise
    _print_summary(out, summary)


def _print_summary(out: Path, summary: dict) -> None:
    from comcoco.build import failure_summary, outcome_of
    from comcoco.outcome import decoys_line
    from comcoco.records import STATUS_NOT_BUILT

    status, record = summary["status"], summary["record"]
    by = status["by_status"]
    ok = by.get("ok", 0)
    failed = {k: v for k, v in by.items() if k != "ok"}
    typer.echo(f"built {out}: {ok} of {status['samples']} samples ok in {summary['shards']} shards"
               f" ({record['runner']}, {record['workers']} worker(s))")
    for line in (summary.get("matching") or {}).get("headline", []):
        typer.echo(f"matching: {line}")
    if decoys := status.get("decoys"):
        typer.echo(f"decoys: {decoys_line(decoys)}")
    if failed:
        typer.echo("failed: " + ", ".join(f"{k} {v}" for k, v in sorted(failed.items())))
        shown = [r for r in failure_summary(out, limit=None) if r.status != STATUS_NOT_BUILT][:5]
        for row in shown:
            typer.echo(f"  {row.status}: sample {row.sample_id} (ref {row.fg_ref_id}, "
                       f"background {row.bg_image_id}): {row.reason}")
        rest = sum(v for k, v in failed.items() if k != STATUS_NOT_BUILT) - len(shown)
        if rest > 0:
            typer.echo(f"  ... and {rest} more in {os.path.join(out, 'status.parquet')} (status != 'ok')")
    by_error: dict[str, list[str]] = {}
    for shard, err in record["shard_errors"].items():
        by_error.setdefault(err, []).append(f"{int(shard):05d}")
    for err, shards in by_error.items():
        typer.echo(f"shard(s) {', '.join(shards)} did not complete: {err}")
    for shard, what in (record.get("shards_redone") or {}).items():
        typer.echo(f"shard {int(shard):05d} was made again: its files differed from the hashes recorded "
                   f"when it was made ({what})")
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in record["seconds"].items())
    typer.echo(f"seconds: {secs}; {record['samples_per_second']:.1f} samples/s")
    typer.echo(f"status: {os.path.join(out, 'status.parquet')}  manifest: {os.path.join(out, 'manifest.json')}")
    outcome = outcome_of(summary)
    if outcome.verdict == "failures":
        typer.echo(f"next: {outcome.next_step}")
    elif outcome.verdict == "partial":
        fail(outcome.line(), EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    app.command("build")(build)
