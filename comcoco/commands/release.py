"""``comcoco release``: build a versioned release from a work directory; ``release diff A B`` compares two;
``release pack RELEASE`` packs a release published with ``--no-dist`` into tar shards beside it.

``comcoco release WORKDIR -o RELEASES --version X.Y.Z`` is short for ``comcoco release create ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from comcoco.commands._common import UserError, usage_errors, user_errors
from comcoco.commands._options import out_option

DIFF_ROWS = 20
release_app = typer.Typer(help="Build a versioned ComCOCO release, compare two (release diff A B), or pack "
                          "one published with --no-dist (release pack RELEASE).",
                          no_args_is_help=True, add_completion=False)


class _DefaultCreateGroup(TyperGroup):
    """A group whose first argument, when not a subcommand or option, means ``create``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


def _proportions(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--split {text!r}: expected e.g. train=0.8,val=0.1,test=0.1") from None
    return out


@release_app.command("create")
def create(
    workdir: Path = typer.Argument(..., help="A built work directory (comcoco build)."),
    out: Path = out_option("Releases folder; the release goes to OUT/comcoco-X.Y.Z."),
    version: str = typer.Option(..., "--version", help="Release version X.Y.Z (an existing one is never overwritten)."),
    unreviewed: str = typer.Option("include", "--unreviewed",
                                   help="include|exclude samples without a placement review (default include)."),
    split: str | None = typer.Option(None, "--split", help="Split proportions, e.g. train=0.8,val=0.1,test=0.1 "
                                     "(default: the paper's 20,324 / 1,843 / 1,784)."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed for the split assignment."),
    rows_per_parquet: int = typer.Option(1000, "--rows-per-parquet", min=1, help="Rows per Parquet file."),
    shard_mb: int = typer.Option(512, "--shard-mb", min=1, help="Size of the dist/ tar shards in MB."),
    dist: bool = typer.Option(True, "--dist/--no-dist", help="Pack dist/ (tar shards for `comcoco download`; as "
                              "many bytes again as the release). --no-dist for a release published as a folder; "
                              "`comcoco release pack` packs it later, beside the release."),
    validate: bool = typer.Option(False, "--validate", help="Validate the release with SAHM before publishing it "
                                  "(the result ships in validation/ and the card)."),
    validate_config: str = typer.Option("auto", "--validate-config", help="SAHM configuration: auto|tiny|paper."),
    validate_steps: int | None = typer.Option(None, "--validate-steps", min=1,
                                              help="Training steps (default: 300 tiny, 3000 paper)."),
    validate_device: str = typer.Option("auto", "--validate-device", help="auto|cpu|cuda."),
    validate_blind: bool = typer.Option(True, "--validate-blind/--no-validate-blind",
                                        help="Also train a model on empty expressions (the shortcut test)."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Processes exporting the sample and Parquet files (default: every "
                                       "CPU core this process may use); the release is byte for byte the same."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Build OUT/comcoco-X.Y.Z (ComCOCO and ComCOCO+, Parquet, card, manifest, dist) from WORKDIR."""
    from comcoco.release.builder import ReleaseOptions, check_version, release_locks
    from comcoco.release.manifest import split_ordered
    from comcoco.release.splits import normalize_proportions
    from comcoco.sources.refer import SourceError
    from comcoco.workdir import Workdir

    with usage_errors():
        check_version(version)
        normalize_proportions(_proportions(split))  # unknown split names and bad shares are usage errors
        options = ReleaseOptions(proportions=_proportions(split), split_seed=split_seed, unreviewed=unreviewed,
                                 rows_per_parquet=rows_per_parquet, shard_bytes=shard_mb * 1024 * 1024)
        validation = None
        if validate:
            from comcoco.sahm.runs import Runtime
            from comcoco.sahm.validate import ValidationOptions

            validation = ValidationOptions(config=validate_config, steps=validate_steps, blind=validate_blind,
                                           runtime=Runtime(device=validate_device, progress=progress))
    with user_errors(SourceError):
        if not workdir.is_dir():
            raise UserError(f"{workdir}: no such work directory" if not workdir.exists()
                            else f"{workdir}: not a folder (a work directory made by `comcoco build`)")
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: a file stands where the releases folder belongs")
        Workdir(workdir).require_plan()  # a work directory that was never built fails here, before the flow
        out.mkdir(parents=True, exist_ok=True)
        with release_locks(workdir, out, version):  # a second release of this version (or one of a work
            from pipelines.release import run_release  # directory being built) is refused here, at once

            result = run_release(workdir, out, version, options, validate=validation, progress=progress,
                                 workers=workers, pack=dist)
    path = Path(result["release"])
    manifest = json.loads((path / "manifest.json").read_text())
    typer.echo(f"release  {path}")
    for variant, per_split in manifest["counts"]["per_split"].items():
        parts = "  ".join(f"{s} {c['samples']}/{c['expressions']}" for s, c in split_ordered(per_split))
        typer.echo(f"{variant:<10} samples/expressions: {parts}")
    sel = manifest["selection"]
    typer.echo(f"selected {sel['selected']} of {sel['workdir_status'].get('ok', 0)} built samples; "
               f"left out: {sel['excluded'] or 'none'}; unreviewed: {sel['review']['unreviewed']} "
               f"({sel['unreviewed_policy']}d)")
    typer.echo(f"files    {len(manifest['files'])} in manifest.json; "
               + ("dist/index.json for download" if dist else f"no dist/ (comcoco release pack {path} packs it)"))
    audit = result.get("audit")
    if audit:
        typer.echo(f"audit    {audit['verdict']} ({audit['targets_audited']} of {audit['targets_in_release']} "
                   f"targets; audit.json)")
    typer.echo("seconds  " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))
    compared = result["manifest"].get("compared")
    if compared is not None:
        typer.echo(f"compared with {compared['previous']}: {compared['summary']}")
        for change in compared["config_changes"]:
            typer.echo(f"  configuration: {change}")
        if compared["identical_data"]:
            typer.echo(f"note: {compared['note']}")


@release_app.command("pack")
def pack(
    release: Path = typer.Argument(..., help="A release published without dist/ (comcoco release --no-dist)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Folder for the shards and index.json "
                                    "(default: RELEASE.dist beside the release, which is never written to)."),
    shard_mb: int = typer.Option(512, "--shard-mb", min=1, help="Size of the tar shards in MB."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Pack a release published without dist/ into tar shards and index.json for `comcoco download`,
    after checking every file against its manifest.json."""
    from comcoco.release.builder import ReleaseError, pack_published
    from comcoco.release.manifest import ManifestError

    with user_errors(ReleaseError, ManifestError):
        dist, info = pack_published(release, out, shard_mb * 1024 * 1024, progress=progress)
    typer.echo(f"dist     {dist}: {info['shards']} tar shard(s), {info['bytes'] / 1e6:.1f} MB; "
               f"comcoco download {dist} fetches the release")


@release_app.command("diff")
def diff(
    a: Path = typer.Argument(..., help="The older release folder."),
    b: Path = typer.Argument(..., help="The newer release folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (every sample, with its reasons)."),
    show_all: bool = typer.Option(False, "--all", help="List every sample added, removed or changed."),
    rows: int = typer.Option(DIFF_ROWS, "--rows", min=0, help="Samples listed without --all."),
) -> None:
    """What changed from release A to B: configuration first, then each sample added, removed or changed
    with what changed (split, category, expressions, files, placement), then count deltas."""
    from comcoco.release.diff import diff_releases, identical_note, summary_line
    from comcoco.release.manifest import split_ordered

    with user_errors():
        d = diff_releases(a, b)
    if as_json:
        typer.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    typer.echo(f"{d['a']} -> {d['b']}")
    if d["config_changes"] or d["code_changes"]:
        typer.echo("configuration:")
        for change in d["config_changes"] + d["code_changes"]:
            typer.echo(f"  {change}")
    else:
        typer.echo("configuration: unchanged")
    typer.echo(f"samples: {summary_line(d)}")
    if d["identical_data"]:
        typer.echo(f"note: {identical_note(d)}")
    listed = [(kind, r) for kind in ("added", "removed", "changed") for r in d[kind]]
    shown = listed if show_all else listed[:rows]
    for kind, r in shown:
        typer.echo(f"  {kind:<8} ref {r['fg_ref_id']} ann {r['fg_ann_id']} on background {r['bg_image_id']}: "
                   + "; ".join(r["reasons"]))
    if len(shown) < len(listed):
        typer.echo(f"  ... {len(listed) - len(shown)} more not shown (--all lists every sample; "
                   "--json holds all with their reasons)")
    for variant, per_split in d["count_deltas"].items():
        for split, c in split_ordered(per_split):
            typer.echo(f"  {variant:<9} {split:<6} samples {c['samples']:+d}  expressions {c['expressions']:+d}  "
                       f"images {c['images']:+d}")


def register(app: typer.Typer) -> None:
    app.add_typer(release_app, name="release", cls=_DefaultCreateGroup)
