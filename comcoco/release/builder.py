"""Building a release: work directory → selection → splits → variants → exports → card → manifest → dist.

Every stage is a function of paths (so the Prefect flow can wrap each one as a task) and works inside
``RELEASES/comcoco-X.Y.Z.incomplete/``; the last stage renames it to ``comcoco-X.Y.Z``. Intermediate
state lives in ``<staging>/_build/`` (never hashed, never shipped, removed on success). An existing
version is never overwritten.

Selection: samples with status ``ok`` are candidates. A placement review ``reject`` leaves a sample
out; ``accept`` and ``adjust`` (recomposed in place by the review stage) keep it. Samples with no
placement decision are *unreviewed*: ``unreviewed="include"`` (default) keeps them, ``"exclude"``
leaves them out; either way they are counted in the manifest and the card. An expressions review
keeps only the kept source sentences and adds the reviewer's spatial phrases (ComCOCO only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from comcoco.io import write_text_atomic
from comcoco.matching.clusters import cluster_of
from comcoco.records import STATUS_OK, ReviewDecision
from comcoco.release.download import DEFAULT_SHARD_BYTES, pack_release
from comcoco.release.export import (
    DEFAULT_ROWS_PER_PARQUET,
    RELEASE_ID_BASE,
    VARIANTS,
    Expression,
    ReleaseEntry,
    clip_polygons,
    export_files,
    read_entries,
    variant_counts,
    write_entries,
    write_instruct,
    write_parquet,
    write_refer,
)
from comcoco.release.splits import SplitItem, assign_splits, release_split_of

BUILD_DIR = "_build"
ENTRIES_FILE = f"{BUILD_DIR}/entries.json"
SELECTION_FILE = f"{BUILD_DIR}/selection.json"
EXPORT_FILE = f"{BUILD_DIR}/export.json"
VALIDATION_FILE = "validation/validation.json"
UNREVIEWED_CHOICES = ("include", "exclude")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")

ValidationHook = Callable[[str], dict[str, Any]]


class ReleaseError(Exception):
    """The release cannot be built as asked (bad version, existing release, unusable work directory)."""


@dataclass(frozen=True)
class ReleaseOptions:
    """Everything besides the work directory that decides a release's content."""

    proportions: dict[str, float] | None = None
    split_seed: int = 0
    unreviewed: str = "include"
    rows_per_parquet: int = DEFAULT_ROWS_PER_PARQUET
    shard_bytes: int = DEFAULT_SHARD_BYTES
    card_pairs: int = 8

    def __post_init__(self) -> None:
        if self.unreviewed not in UNREVIEWED_CHOICES:
            raise ReleaseError(f"--unreviewed must be one of {UNREVIEWED_CHOICES}, got {self.unreviewed!r}")
        if self.rows_per_parquet < 1 or self.shard_bytes < 1:
            raise ReleaseError("rows per Parquet file and shard bytes must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def release_name(version: str) -> str:
    return f"comcoco-{version}"


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise ReleaseError(f"version {version!r} is not of the form X.Y.Z")
    return version


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


# --- stage 0: the staging directory ------------------------------------------------------------------


def start_release(releases: str | os.PathLike[str], version: str) -> Path:
    """Create a fresh ``comcoco-X.Y.Z.incomplete``; refuse when that version already exists."""
    check_version(version)
    releases = Path(releases)
    final = releases / release_name(version)
    if final.exists():
        raise ReleaseError(f"{final}: release {version} already exists; releases are never overwritten")
    staging = releases / f"{release_name(version)}.incomplete"
    if staging.exists():  # left by an interrupted build: nothing in it was published
        shutil.rmtree(staging)
    (staging / BUILD_DIR).mkdir(parents=True)
    return staging


# --- stage 1: selection, splits, ids ----------------------------------------------------------------


def _plan_meta(workdir: Path) -> dict[str, Any]:
    from comcoco.plan import PLAN_META

    path = workdir / PLAN_META
    if not path.is_file():
        raise ReleaseError(f"{path}: not a built work directory (no plan); run `comcoco build` first")
    return json.loads(path.read_text())


def _expressions(ref: Any, decision: ReviewDecision | None) -> tuple[list[tuple[int, str]], list[str], int]:
    """(kept source sentences as (sent_id, raw), spatial phrases, dropped count) after review."""
    source = [(s.sent_id, s.raw) for s in ref.sentences]
    if decision is None:
        return source, [], 0
    dropped = set(decision.dropped_sent_ids)
    kept = set(decision.kept_sent_ids)
    chosen = [(i, raw) for i, raw in source if i not in dropped and (not kept or i in kept)]
    phrases = [p.strip() for p in decision.spatial_phrases if p.strip()]
    return chosen, list(dict.fromkeys(phrases)), len(source) - len(chosen)


def _review_dict(d: ReviewDecision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    out = {"decision": d.decision, "reviewer": d.reviewer, "reviewed_at": d.reviewed_at}
    if d.reason:
        out["reason"] = d.reason
    if d.box is not None:
        out["box"] = list(d.box)
    return out


def select_entries(workdir: str | os.PathLike[str], options: ReleaseOptions) -> tuple[list[ReleaseEntry], dict[str, Any]]:
    """The release entries of a work directory (ids, splits, expressions, provenance) and a report."""
    from comcoco.plan import SourceSpec
    from comcoco.review.decisions import read_decisions
    from comcoco.sources.images import annotation_mask, image_size
    from comcoco.workdir import STATUS_FILE, read_status

    workdir = Path(workdir)
    meta = _plan_meta(workdir)
    if not (workdir / STATUS_FILE).is_file():
        raise ReleaseError(f"{workdir / STATUS_FILE}: missing; the build has not finished")
    # Written by an interrupted review pull (comcoco.review.apply) until status.parquet is refreshed.
    stale = workdir / "review" / ".status-stale"
    if stale.exists():
        raise ReleaseError(f"{stale}: status.parquet is out of date after an interrupted review pull; "
                           "run the review pull again before releasing")
    rows = sorted(read_status(workdir), key=lambda r: r["sample_id"])
    source = SourceSpec(**meta["source"]).load()
    decisions = read_decisions(workdir)
    status_counts = Counter(r["status"] for r in rows)
    excluded: Counter[str] = Counter()
    review = Counter()
    fg_image_of = {r["sample_id"]: int(r["fg_image_id"]) for r in rows}

    kept: list[tuple[dict[str, Any], list[tuple[int, str]], list[str], dict[str, Any]]] = []
    for r in rows:
        if r["status"] != STATUS_OK:
            excluded[f"status:{r['status']}"] += 1
            continue
        sid = r["sample_id"]
        placement = decisions.get((sid, "placement"))
        expr_dec = decisions.get((sid, "expressions"))
        if placement is None:
            review["unreviewed"] += 1
            if options.unreviewed == "exclude":
                excluded["unreviewed"] += 1
                continue
        else:
            review[placement.decision] += 1
            if placement.decision == "reject":
                excluded["rejected_by_review"] += 1
                continue
        try:
            ref = source.ref(int(r["fg_ref_id"]))
        except KeyError:
            raise ReleaseError(f"{workdir / STATUS_FILE}: sample {sid} names ref {r['fg_ref_id']}, "
                               f"which the source {meta['source']['root']} does not have") from None
        sents, phrases, dropped = _expressions(ref, expr_dec)
        if expr_dec is not None:
            review["expressions_reviewed"] += 1
            review["sentences_dropped"] += dropped
            review["spatial_phrases_added"] += len(phrases)
        if not sents and not phrases:
            excluded["no_expressions"] += 1
            continue
        prov = {
            "fg_ref_id": int(r["fg_ref_id"]), "fg_ann_id": int(r["fg_ann_id"]),
            "fg_image_id": int(r["fg_image_id"]), "bg_image_id": int(r["bg_image_id"]),
            "candidate_rank": int(r["candidate_rank"]), "seed": int(r["seed"]), "sample_config": r["config"],
            "placement": {"s": r["s"], "rx": r["rx"], "ry": r["ry"], "score": r["plausibility"],
                          "box": [r["box_x"], r["box_y"], r["box_w"], r["box_h"]]},
            "filter_args": {k: r[k] for k in ("temperature", "brightness", "contrast", "saturation",
                                              "highlight", "shadow")},
            "other_objects_ann_ids": [int(a) for a in r["object_ann_ids"]],
            "review": _review_dict(placement),
            "expressions_review": (None if expr_dec is None else {
                "reviewer": expr_dec.reviewer, "reviewed_at": expr_dec.reviewed_at,
                "dropped_sent_ids": list(expr_dec.dropped_sent_ids)}),
            "build_mask": r["mask"],
        }
        kept.append((r, sents, phrases, prov))

    # Geometry: the composite's size and the placed polygons clamped into it; a polygon that covers
    # no pixel cannot be annotated, so its sample is left out before splits and ids are assigned.
    sizes: dict[str, tuple[int, int]] = {}
    placed: list[tuple[dict[str, Any], list[tuple[int, str]], list[str], dict[str, Any], list[list[float]]]] = []
    for r, sents, phrases, prov in kept:
        if r["composite_id"] not in sizes:
            path = workdir / r["composite"]
            if not path.is_file():
                raise ReleaseError(f"{path}: composite of sample {r['sample_id']} is missing")
            sizes[r["composite_id"]] = image_size(path)
        width, height = sizes[r["composite_id"]]
        polys = clip_polygons(polygons_of(r), width, height)
        if not polys or not annotation_mask(polys, height, width).any():
            excluded["empty_polygon"] += 1
            continue
        placed.append((r, sents, phrases, prov, polys))

    # Splits: a sample uses its background and the source image of every object in its composite.
    items = []
    for r, *_ in placed:
        images = {int(r["bg_image_id"]), int(r["fg_image_id"])}
        images.update(fg_image_of[o] for o in r["objects"] if o in fg_image_of)
        try:
            preferred = release_split_of(source.ref(int(r["fg_ref_id"])).split)
        except ValueError:  # a source split name outside RefCOCO+'s: no preference
            preferred = None
        items.append(SplitItem(r["sample_id"], tuple(sorted(images)), cluster_of(int(r["category_id"])), preferred))
    splits = assign_splits(items, options.proportions, seed=options.split_seed)

    # Ids: sequential in sorted composite / sample order (placed is in sample_id order).
    composite_ids = sorted({r["composite_id"] for r, *_ in placed})
    image_id_of = {c: RELEASE_ID_BASE + n for n, c in enumerate(composite_ids)}
    entries: list[ReleaseEntry] = []
    next_sent = 0
    for n, (r, sents, phrases, prov, polys) in enumerate(placed):
        width, height = sizes[r["composite_id"]]
        exprs = []
        for src_id, raw in sents:
            exprs.append(Expression(sent_id=next_sent, raw=raw, spatial=False, source_sent_id=src_id))
            next_sent += 1
        for raw in phrases:
            exprs.append(Expression(sent_id=next_sent, raw=raw, spatial=True))
            next_sent += 1
        entries.append(ReleaseEntry(
            sample_id=r["sample_id"], composite_id=r["composite_id"], split=splits.assignment[r["sample_id"]],
            ref_id=n, ann_id=RELEASE_ID_BASE + n, image_id=image_id_of[r["composite_id"]],
            category_id=int(r["category_id"]), cluster=cluster_of(int(r["category_id"])),
            width=width, height=height, src_composite=r["composite"], src_ground_truth=r["ground_truth"],
            polygons=tuple(tuple(p) for p in polys), expressions=tuple(exprs), provenance=prov,
        ))
    report = {
        "workdir_status": dict(sorted(status_counts.items())),
        "candidates": len(kept),
        "selected": len(entries),
        "excluded": dict(sorted(excluded.items())),
        "review": {k: review.get(k, 0) for k in ("accept", "adjust", "reject", "unreviewed",
                                                 "expressions_reviewed", "sentences_dropped",
                                                 "spatial_phrases_added")},
        "unreviewed_policy": options.unreviewed,
        "splits": splits.report(),
    }
    return entries, report


def polygons_of(row: dict[str, Any]) -> list[list[float]]:
    try:
        polys = json.loads(row["polygon"] or "[]")
        return [list(p) for p in polys]
    except (ValueError, TypeError):
        raise ReleaseError(f"status.parquet: sample {row['sample_id']} has an unreadable polygon") from None


def select_stage(workdir: str | os.PathLike[str], staging: str | os.PathLike[str], options: ReleaseOptions) -> dict[str, Any]:
    staging = Path(staging)
    entries, report = select_entries(workdir, options)
    if not entries:
        raise ReleaseError(f"{workdir}: no sample qualifies for a release ({report['excluded']})")
    write_entries(staging / ENTRIES_FILE, entries)
    write_text_atomic(staging / SELECTION_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


# --- stage 2: exports --------------------------------------------------------------------------------


def export_stage(workdir: str | os.PathLike[str], staging: str | os.PathLike[str], options: ReleaseOptions,
                 progress: bool = False) -> dict[str, Any]:
    staging = Path(staging)
    entries = read_entries(staging / ENTRIES_FILE)
    files = export_files(workdir, staging, entries, progress=progress)
    out: dict[str, Any] = {"files": files, "variants": {}}
    for variant in VARIANTS:
        write_refer(staging, entries, variant, info={"description": f"{variant}: referring object removal pairs"})
        parquet = write_parquet(staging, entries, variant, options.rows_per_parquet)
        instruct = write_instruct(staging, entries, variant)
        out["variants"][variant] = {"counts": variant_counts(entries, variant), "parquet": parquet,
                                    "instruct": instruct}
    write_text_atomic(staging / EXPORT_FILE, json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


# --- stage 3: validation (optional) and card ----------------------------------------------------------


def validation_stage(staging: str | os.PathLike[str], hook: ValidationHook | str | None) -> dict[str, Any] | None:
    """Run a validation hook (a callable or ``"module:function"``) on the staged release.

    The hook gets the staging path and returns ``{"title", "metrics": {name: value}, "notes"}``;
    the result is shipped as ``validation/validation.json`` and shown in the card.
    """
    if hook is None:
        return None
    if isinstance(hook, str):
        import importlib

        module, _, name = hook.partition(":")
        if not name:
            raise ReleaseError(f"validation hook {hook!r} must be of the form module:function")
        hook = getattr(importlib.import_module(module), name)
    result = hook(str(staging))
    if not isinstance(result, dict):
        raise ReleaseError(f"validation hook returned {type(result).__name__}, expected a dict")
    write_text_atomic(Path(staging) / VALIDATION_FILE, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def refresh_validation(release: str | os.PathLike[str], result: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """Record a validation run in a published release: validation.json, the card's section, manifest, dist.

    Only those files change (and the tar shards that carry them); every sample file keeps its hash,
    so `comcoco verify` passes again afterwards and downloads get the validated card.
    """
    from comcoco.release.card import replace_validation_section
    from comcoco.release.manifest import MANIFEST_NAME, hash_files, read_manifest

    release = Path(release)
    manifest = read_manifest(release)
    write_text_atomic(release / VALIDATION_FILE, json.dumps(result, indent=2, sort_keys=True) + "\n")
    replace_validation_section(release, result)
    changed = [VALIDATION_FILE, "README.md", "card.html"]
    manifest["files"].update(hash_files(release, changed, False))
    manifest["files"] = dict(sorted(manifest["files"].items()))
    write_text_atomic(release / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shard_bytes = manifest.get("release_config", {}).get("shard_bytes", ReleaseOptions().shard_bytes)
    for old in (release / "dist").glob("*.tar"):
        old.unlink()
    files = sorted(manifest["files"]) + [MANIFEST_NAME]
    shards = pack_release(release, files, release / "dist", manifest["version"], shard_bytes, progress=progress)
    return {"files": changed, "shards": len(shards)}


def card_stage(staging: str | os.PathLike[str], version: str, options: ReleaseOptions) -> list[str]:
    from comcoco.release.card import write_card

    staging = Path(staging)
    entries = read_entries(staging / ENTRIES_FILE)
    selection = json.loads((staging / SELECTION_FILE).read_text())
    export = json.loads((staging / EXPORT_FILE).read_text())
    validation_path = staging / VALIDATION_FILE
    validation = json.loads(validation_path.read_text()) if validation_path.is_file() else None
    return write_card(staging, version, entries, selection, export, validation, pairs=options.card_pairs)


# --- stage 4: manifest and changelog -----------------------------------------------------------------


def manifest_stage(workdir: str | os.PathLike[str], staging: str | os.PathLike[str], version: str,
                   options: ReleaseOptions, progress: bool = False) -> dict[str, Any]:
    from comcoco.release.manifest import build_manifest, changelog_entry, previous_release, write_changelog

    staging = Path(staging)
    releases = staging.parent
    selection = json.loads((staging / SELECTION_FILE).read_text())
    export = json.loads((staging / EXPORT_FILE).read_text())
    counts = {v: export["variants"][v]["counts"] for v in VARIANTS}
    previous = previous_release(releases, version)
    entry = changelog_entry(version, counts, selection, staging, previous)
    write_changelog(staging / "CHANGELOG.md", releases / "CHANGELOG.md", entry)
    return build_manifest(Path(workdir), staging, version, options.to_dict(), counts, selection,
                          export["files"], progress=progress)


# --- stage 5: dist, and publishing ---------------------------------------------------------------------


def dist_stage(staging: str | os.PathLike[str], version: str, options: ReleaseOptions, progress: bool = False) -> dict[str, Any]:
    from comcoco.release.manifest import MANIFEST_NAME

    staging = Path(staging)
    manifest = json.loads((staging / MANIFEST_NAME).read_text())
    files = sorted(manifest["files"]) + [MANIFEST_NAME]
    shards = pack_release(staging, files, staging / "dist", version, options.shard_bytes, progress=progress)
    return {"shards": len(shards), "bytes": sum(s.size for s in shards)}


def finish_release(staging: str | os.PathLike[str]) -> Path:
    """Drop the build state and rename ``.incomplete`` into place (refusing to overwrite)."""
    staging = Path(staging)
    final = staging.with_name(staging.name.removesuffix(".incomplete"))
    if final.exists():
        raise ReleaseError(f"{final}: appeared during the build; not overwritten")
    shutil.rmtree(staging / BUILD_DIR, ignore_errors=True)
    os.rename(staging, final)
    # The releases folder's own changelog is the newest release's (which holds every earlier entry).
    shutil.copyfile(final / "CHANGELOG.md", final.parent / "CHANGELOG.md")
    return final


def build_release(workdir: str | os.PathLike[str], releases: str | os.PathLike[str], version: str,
                  options: ReleaseOptions | None = None, validate: ValidationHook | str | None = None,
                  progress: bool = False) -> Path:
    """Every release stage in this process; returns the published release directory."""
    options = options or ReleaseOptions()
    workdir = Path(workdir)
    _plan_meta(workdir)  # fail before creating anything when the work directory is unusable
    staging = start_release(releases, version)
    try:
        select_stage(workdir, staging, options)
        export_stage(workdir, staging, options, progress)
        validation_stage(staging, validate)
        card_stage(staging, version, options)
        manifest_stage(workdir, staging, version, options, progress)
        dist_stage(staging, version, options, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return finish_release(staging)
