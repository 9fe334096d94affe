"""Choosing a release's samples from a work directory: review decisions, expressions, splits, ids.

Samples with status ``ok`` are candidates. A placement review ``reject`` leaves a sample out;
``accept`` and ``adjust`` (recomposed in place by the review stage) keep it. Samples with no placement
decision are *unreviewed*: ``unreviewed="include"`` (default) keeps them, ``"exclude"`` leaves them
out; either way they are counted in the manifest and the card. An expressions review keeps only the
kept source sentences and adds the reviewer's spatial phrases (ComCOCO only).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from comcoco.compose.samples import decoy_counts
from comcoco.decisions import agreement_of
from comcoco.matching.clusters import cluster_of
from comcoco.records import FILTER_NAMES, STATUS_OK, ReviewDecision, release_split_of
from comcoco.release.export import RELEASE_ID_BASE, Expression, ReleaseEntry, clip_polygons
from comcoco.release.options import ReleaseError, ReleaseOptions
from comcoco.release.splits import SplitItem, assign_splits
from comcoco.sources.format import text_problem, usable_sentences
from comcoco.sources.parse import loads_json
from comcoco.workdir import STATUS_FILE, StatusRow, Workdir, WorkdirError, as_workdir


@dataclass(frozen=True)
class _Chosen:
    """A sample that passed review, with its expressions after review and its provenance."""

    row: StatusRow
    sentences: list[tuple[int, str]]  # (source sent_id, raw)
    phrases: list[str]
    provenance: dict[str, Any]
    polygons: list[list[float]] | None = None


def _expressions(ref: Any, decision: ReviewDecision | None) -> tuple[list[tuple[int, str]], list[str], int]:
    """(kept source sentences as (sent_id, raw), spatial phrases, dropped count) after review."""
    source = [(s.sent_id, s.raw) for s in usable_sentences(ref.sentences)]  # shippable text only
    if decision is None:
        return source, [], 0
    dropped = set(decision.dropped_sent_ids)
    kept = set(decision.kept_sent_ids)
    chosen = [(i, raw) for i, raw in source if i not in dropped and (not kept or i in kept)]
    phrases = [p.strip() for p in decision.spatial_phrases if p.strip() and text_problem(p) is None]
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


def _provenance(r: StatusRow, placement: ReviewDecision | None, expr_dec: ReviewDecision | None) -> dict[str, Any]:
    return {
        "fg_ref_id": int(r.fg_ref_id), "fg_ann_id": int(r.fg_ann_id),
        "fg_image_id": int(r.fg_image_id), "bg_image_id": int(r.bg_image_id),
        "candidate_rank": int(r.candidate_rank), "seed": int(r.seed), "sample_config": r.config,
        "placement": {"s": r.s, "rx": r.rx, "ry": r.ry, "score": r.plausibility,
                      "box": [r.box_x, r.box_y, r.box_w, r.box_h]},
        "filter_args": {k: getattr(r, k) for k in FILTER_NAMES},
        "other_objects_ann_ids": [int(a) for a in r.object_ann_ids],
        **({"decoy_ann_ids": [int(a) for a in r.decoy_ann_ids]} if r.decoy_ann_ids else {}),
        "review": _review_dict(placement),
        "expressions_review": (None if expr_dec is None else {
            "reviewer": expr_dec.reviewer, "reviewed_at": expr_dec.reviewed_at,
            "dropped_sent_ids": list(expr_dec.dropped_sent_ids)}),
        "build_mask": r.mask,
        **({"effects": {"effect_area": r.effect_area, "light": r.light, "shadow": r.shadow_kind,
                        "shadow_strength": r.shadow_strength, "blur": r.blur, "noise": r.noise,
                        "jpeg_quality": r.jpeg_quality, "matte": r.matte}} if r.effect_mask else {}),
    }


def _reviewed(wd: Workdir, rows: list[StatusRow], source: Any, options: ReleaseOptions,
              excluded: Counter[str], review: Counter[str]) -> list[_Chosen]:
    """The ok samples a review keeps, with their expressions after review (counting what is left out)."""
    decisions = wd.decisions()
    kept: list[_Chosen] = []
    for r in rows:
        if r.status != STATUS_OK:
            excluded[f"status:{r.status}"] += 1
            continue
        placement = decisions.get((r.sample_id, "placement"))
        expr_dec = decisions.get((r.sample_id, "expressions"))
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
            ref = source.ref(int(r.fg_ref_id))
        except KeyError:
            raise ReleaseError(f"{wd.path(STATUS_FILE)}: sample {r.sample_id} names ref {r.fg_ref_id}, "
                               f"which the source {wd.source_spec().root} does not have") from None
        sents, phrases, dropped = _expressions(ref, expr_dec)
        if expr_dec is not None:
            review["expressions_reviewed"] += 1
            review["sentences_dropped"] += dropped
            review["spatial_phrases_added"] += len(phrases)
        if not sents and not phrases:
            excluded["no_expressions"] += 1
            continue
        kept.append(_Chosen(r, sents, phrases, _provenance(r, placement, expr_dec)))
    return kept


def _placed(wd: Workdir, kept: list[_Chosen], excluded: Counter[str]) -> tuple[list[_Chosen], dict[str, tuple[int, int]]]:
    """Composite sizes and placed polygons clamped into them; a polygon that covers no pixel cannot be
    annotated, so its sample is left out before splits and ids are assigned."""
    from pycocotools import mask as mask_utils

    from comcoco.sources.allocation import SharedFloats
    from comcoco.sources.images import annotation_rle, image_size

    sizes: dict[str, tuple[int, int]] = {}
    placed: list[_Chosen] = []
    shared = SharedFloats()
    for c in kept:
        r = c.row
        if r.composite_id not in sizes:
            path = wd.path(r.composite or "")
            if not r.composite or not path.is_file():
                raise ReleaseError(f"{path}: composite of sample {r.sample_id} is missing")
            sizes[r.composite_id] = image_size(path)
        width, height = sizes[r.composite_id]
        polys = clip_polygons(polygons_of(r), width, height, shared)
        rle = annotation_rle(polys, height, width) if polys else None
        if rle is None or not mask_utils.area(rle):
            excluded["empty_polygon"] += 1
            continue
        placed.append(_Chosen(r, c.sentences, c.phrases, c.provenance, polys))
    return placed, sizes


def select_entries(workdir: Workdir | str | os.PathLike[str], options: ReleaseOptions) -> tuple[list[ReleaseEntry], dict[str, Any]]:
    """The release entries of a work directory (ids, splits, expressions, provenance) and a report."""
    wd = as_workdir(workdir)
    try:
        wd.require_plan()
        if wd.stale:  # an interrupted review pull recomposed samples that status.parquet does not show yet
            raise ReleaseError(f"{wd.stale_marker()}: status.parquet is out of date after an interrupted review "
                               "pull; run the review pull again before releasing")
        rows = wd.status()
    except WorkdirError as exc:
        raise ReleaseError(str(exc)) from None
    source = wd.source()
    excluded: Counter[str] = Counter()
    review: Counter[str] = Counter()
    kept = _reviewed(wd, rows, source, options, excluded, review)
    placed, sizes = _placed(wd, kept, excluded)

    # Splits: a sample uses its background and the source image of every object in its composite.
    fg_image_of = {r.sample_id: int(r.fg_image_id) for r in rows}
    items = []
    for c in placed:
        r = c.row
        images = {int(r.bg_image_id), int(r.fg_image_id)}
        images.update(fg_image_of[o] for o in r.objects if o in fg_image_of)
        try:
            preferred = release_split_of(source.ref(int(r.fg_ref_id)).split)
        except ValueError:  # a source split name outside RefCOCO+'s: no preference
            preferred = None
        items.append(SplitItem(r.sample_id, tuple(sorted(images)), cluster_of(int(r.category_id)), preferred))
    splits = assign_splits(items, options.proportions, seed=options.split_seed)

    entries = _entries(placed, sizes, splits.assignment, _background_objects(wd, placed))
    report = {
        "workdir_status": dict(sorted(Counter(r.status for r in rows).items())),
        "candidates": len(kept),
        "selected": len(entries),
        "excluded": dict(sorted(excluded.items())),
        "review": {k: review.get(k, 0) for k in ("accept", "adjust", "reject", "unreviewed",
                                                 "expressions_reviewed", "sentences_dropped",
                                                 "spatial_phrases_added")},
        "unreviewed_policy": options.unreviewed,
        "profile": wd.config().compose.profile,
        **({"decoys": {"decoys": d["pasted"], "composites_with_decoys": d["composites"]}}
           if (d := decoy_counts(c.row for c in placed)).get("pasted") else {}),  # none: the report of earlier releases
        "agreement": agreement_of(wd.root),  # inter-annotator agreement on the samples answered twice
        "splits": splits.report(),
    }
    return entries, report


def _background_objects(wd: Workdir, placed: list[_Chosen]) -> dict[int, tuple[dict[str, Any], ...]]:
    """Each background's own annotated objects (they stay visible in its composites), by image id."""
    index = wd.index()
    out: dict[int, tuple[dict[str, Any], ...]] = {}
    for bg in sorted({int(c.row.bg_image_id) for c in placed}):
        out[bg] = tuple(
            {"source_ann_id": int(a.ann_id), "category_id": int(a.category_id), "bbox": [float(v) for v in a.bbox],
             "area": float(a.area), "iscrowd": int(a.iscrowd), "segmentation": a.segmentation}
            for a in index.anns_by_image.get(bg, ()))
    return out


def _entries(placed: list[_Chosen], sizes: dict[str, tuple[int, int]], split_of: dict[str, str],
             natives: dict[int, tuple[dict[str, Any], ...]]) -> list[ReleaseEntry]:
    """Ids: sequential in sorted composite / sample order (``placed`` is in sample id order)."""
    composite_ids = sorted({c.row.composite_id for c in placed})
    image_id_of = {c: RELEASE_ID_BASE + n for n, c in enumerate(composite_ids)}
    entries: list[ReleaseEntry] = []
    next_sent = 0
    for n, c in enumerate(placed):
        r = c.row
        width, height = sizes[r.composite_id]
        exprs = []
        for src_id, raw in c.sentences:
            exprs.append(Expression(sent_id=next_sent, raw=raw, spatial=False, source_sent_id=src_id))
            next_sent += 1
        for raw in c.phrases:
            exprs.append(Expression(sent_id=next_sent, raw=raw, spatial=True))
            next_sent += 1
        entries.append(ReleaseEntry(
            sample_id=r.sample_id, composite_id=r.composite_id, split=split_of[r.sample_id],
            ref_id=n, ann_id=RELEASE_ID_BASE + n, image_id=image_id_of[r.composite_id],
            category_id=int(r.category_id), cluster=cluster_of(int(r.category_id)),
            width=width, height=height, src_composite=r.composite or "", src_ground_truth=r.ground_truth or "",
            polygons=tuple(tuple(p) for p in c.polygons or ()), expressions=tuple(exprs), provenance=c.provenance,
            src_effect_mask=r.effect_mask, background_objects=natives.get(int(r.bg_image_id), ()),
        ))
    return entries


def polygons_of(row: StatusRow) -> list[list[float]]:
    try:
        polys = loads_json((row.polygon or "[]").encode())
        return [list(p) for p in polys]
    except (ValueError, TypeError, UnicodeError):
        raise ReleaseError(f"status.parquet: sample {row.sample_id} has an unreadable polygon") from None


__all__ = ["polygons_of", "select_entries"]
