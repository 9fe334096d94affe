"""REFER's index over a loaded source: id → raw dict tables, groupings, and the problems found.

The tables are REFER's (``Refs``, ``Anns``, ``Imgs``, ``Cats``, ``Sents``, ``imgToRefs``,
``imgToAnns``, ``refToAnn``, ``annToRef``, ``catToRefs``, ``sentToRef``, ``sentToTokens``). Where
REFER crashes on a dangling reference, the index records a :class:`Problem` and leaves the
reference out; on a duplicated id the later entry wins, as in REFER. Problems come in a fixed
order: images, categories, annotations, then refs, each in file order.

``find_problems`` answers the common case (no problem at all) with set operations over the typed
records and only walks the source entry by entry when something is wrong, so a source can report
its problems at load without building REFER's tables, which only the REFER API needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comcoco.records import Annotation, Category, ImageInfo, Problem, Ref

Raw = dict[str, Any]


@dataclass
class ReferIndex:
    """Every table of REFER's ``createIndex`` and the typed records by id."""

    Imgs: dict[int, Raw] = field(default_factory=dict)
    Cats: dict[int, str] = field(default_factory=dict)
    Anns: dict[int, Raw] = field(default_factory=dict)
    imgToAnns: dict[int, list[Raw]] = field(default_factory=dict)
    Refs: dict[int, Raw] = field(default_factory=dict)
    imgToRefs: dict[int, list[Raw]] = field(default_factory=dict)
    refToAnn: dict[int, Raw] = field(default_factory=dict)
    annToRef: dict[int, Raw] = field(default_factory=dict)
    catToRefs: dict[int, list[Raw]] = field(default_factory=dict)
    Sents: dict[int, Raw] = field(default_factory=dict)
    sentToRef: dict[int, Raw] = field(default_factory=dict)
    sentToTokens: dict[int, list[str]] = field(default_factory=dict)
    image_by_id: dict[int, ImageInfo] = field(default_factory=dict)
    category_by_id: dict[int, Category] = field(default_factory=dict)
    annotation_by_id: dict[int, Annotation] = field(default_factory=dict)
    ref_by_id: dict[int, Ref] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _duplicates(ids: list[int]) -> list[int]:
    """Every id that repeats an earlier one, in order (one entry per repeat)."""
    seen: set[int] = set()
    out = []
    for i in ids:
        if i in seen:
            out.append(i)
        seen.add(i)
    return out


def _index_images(ix: ReferIndex, raws: list[Raw], recs: list[ImageInfo], file: str) -> None:
    ids = [r.image_id for r in recs]
    ix.Imgs = dict(zip(ids, raws, strict=True))
    ix.image_by_id = dict(zip(ids, recs, strict=True))
    if len(ix.Imgs) != len(ids):
        for i in _duplicates(ids):
            ix.problems.append(Problem("duplicate_image_id", file, i, f"image id {i} appears twice"))


def _index_categories(ix: ReferIndex, recs: list[Category], file: str) -> None:
    for rec in recs:
        if rec.id in ix.Cats:
            ix.problems.append(Problem("duplicate_category_id", file, rec.id, f"category id {rec.id} appears twice"))
        ix.Cats[rec.id] = rec.name
        ix.category_by_id[rec.id] = rec


def _index_annotations(ix: ReferIndex, raws: list[Raw], recs: list[Annotation], file: str) -> None:
    ids = [a.ann_id for a in recs]
    ix.Anns = dict(zip(ids, raws, strict=True))
    ix.annotation_by_id = dict(zip(ids, recs, strict=True))
    groups = ix.imgToAnns
    for raw, rec in zip(raws, recs, strict=True):
        group = groups.get(rec.image_id)
        if group is None:
            groups[rec.image_id] = [raw]
        else:
            group.append(raw)
    if len(ix.Anns) == len(ids) and ix.Imgs.keys() >= groups.keys():
        return
    seen: set[int] = set()
    for rec in recs:  # problems in file order, as one pass over the annotations meets them
        if rec.ann_id in seen:
            ix.problems.append(
                Problem("duplicate_annotation_id", file, rec.ann_id, f"annotation id {rec.ann_id} appears twice")
            )
        seen.add(rec.ann_id)
        if rec.image_id not in ix.Imgs:
            ix.problems.append(Problem(
                "orphan_annotation", file, rec.ann_id,
                f"annotation {rec.ann_id} belongs to image {rec.image_id}, which is not in images",
            ))  # fmt: skip


def _ref_problems(ix: ReferIndex, rec: Ref, raw: Raw, file: str, duplicate: bool) -> None:
    """The problems of one ref, in REFER's indexing order (its sentences' duplicates come later)."""
    rid = rec.ref_id
    add = ix.problems.append
    if duplicate:
        add(Problem("duplicate_ref_id", file, rid, f"ref id {rid} appears twice"))
    if rec.image_id not in ix.Imgs:
        add(Problem("missing_image", file, rid, f"ref {rid} points to image {rec.image_id}, not in instances.json"))
    if rec.category_id not in ix.Cats:
        add(Problem("unknown_category", file, rid, f"ref {rid} has category {rec.category_id}, not in instances.json"))
    ann = ix.annotation_by_id.get(rec.ann_id)
    if ann is None:
        add(Problem("missing_annotation", file, rid, f"ref {rid} points to annotation {rec.ann_id}, not in instances.json"))
    else:
        if ann.image_id != rec.image_id:
            add(Problem(
                "annotation_image_mismatch", file, rid,
                f"ref {rid} says image {rec.image_id} but annotation {ann.ann_id} is on image {ann.image_id}",
            ))  # fmt: skip
        if ann.category_id != rec.category_id:
            add(Problem(
                "category_mismatch", file, rid,
                f"ref {rid} says category {rec.category_id} but annotation {ann.ann_id} has {ann.category_id}",
            ))  # fmt: skip


def _sent_ids_agree(raw: Raw, rec: Ref) -> bool:
    raw_ids = raw.get("sent_ids")
    if raw_ids is None:
        return True
    return (raw_ids if type(raw_ids) is list else list(raw_ids)) == [s.sent_id for s in rec.sentences]


def _index_refs(ix: ReferIndex, raws: list[Raw], recs: list[Ref], file: str) -> None:
    """REFER's ref tables in one pass; a ref with any problem is reported where the pass meets it."""
    Refs, ref_by_id, Anns, ann_by_id = ix.Refs, ix.ref_by_id, ix.Anns, ix.annotation_by_id
    Imgs, Cats, imgToRefs, catToRefs = ix.Imgs, ix.Cats, ix.imgToRefs, ix.catToRefs
    refToAnn, annToRef, Sents, sentToRef, sentToTokens = ix.refToAnn, ix.annToRef, ix.Sents, ix.sentToRef, ix.sentToTokens
    for raw, rec in zip(raws, recs, strict=True):
        rid, image_id, category_id, ann_id = rec.ref_id, rec.image_id, rec.category_id, rec.ann_id
        duplicate = rid in Refs
        Refs[rid] = raw
        ref_by_id[rid] = rec
        group = imgToRefs.get(image_id)
        if group is None:
            imgToRefs[image_id] = [raw]
        else:
            group.append(raw)
        group = catToRefs.get(category_id)
        if group is None:
            catToRefs[category_id] = [raw]
        else:
            group.append(raw)
        ann = ann_by_id.get(ann_id)
        if ann is not None:
            refToAnn[rid] = Anns[ann_id]
            annToRef[ann_id] = raw
        if (
            duplicate or ann is None or image_id not in Imgs or category_id not in Cats
            or ann.image_id != image_id or ann.category_id != category_id
        ):  # fmt: skip
            _ref_problems(ix, rec, raw, file, duplicate)
        if not _sent_ids_agree(raw, rec):
            ix.problems.append(Problem("sent_ids_mismatch", file, rid, f"ref {rid}: sent_ids do not match its sentences"))
        for raw_sent, sent in zip(raw["sentences"], rec.sentences, strict=True):
            sid = sent.sent_id
            if sid in Sents:
                ix.problems.append(Problem("duplicate_sent_id", file, sid, f"sent id {sid} appears twice"))
            Sents[sid] = raw_sent
            sentToRef[sid] = raw
            sentToTokens[sid] = raw_sent["tokens"] if "tokens" in raw_sent else list(sent.tokens)


def find_problems(
    data: dict[str, Any],
    images: list[ImageInfo],
    annotations: list[Annotation],
    categories: list[Category],
    refs: list[Ref],
    *,
    refs_file: Path,
    instances_file: Path,
) -> list[Problem]:
    """The problems ``build_index`` would report, in the same order, without building the tables."""
    image_ids = {r.image_id for r in images}
    category_ids = {c.id for c in categories}
    ann_by_id = {a.ann_id: a for a in annotations}
    clean = (
        len(image_ids) == len(images)
        and len(category_ids) == len(categories)
        and len(ann_by_id) == len(annotations)
        and image_ids.issuperset([a.image_id for a in annotations])
        and len({r.ref_id for r in refs}) == len(refs)
        and _refs_resolve(refs, ann_by_id, image_ids, category_ids)
        and all(_sent_ids_agree(raw, rec) for raw, rec in zip(data["refs"], refs, strict=True))
    )
    if clean:
        sent_ids = [s.sent_id for r in refs for s in r.sentences]
        clean = len(set(sent_ids)) == len(sent_ids)
    if clean:
        return []
    return build_index(data, images, annotations, categories, refs,
                       refs_file=refs_file, instances_file=instances_file).problems


def _refs_resolve(refs: list[Ref], ann_by_id: dict[int, Annotation], image_ids: set[int], category_ids: set[int]) -> bool:
    """Whether every ref's image, category and annotation exist and the annotation agrees with it."""
    if not image_ids.issuperset([r.image_id for r in refs]) or not category_ids.issuperset([r.category_id for r in refs]):
        return False
    get = ann_by_id.get
    for r in refs:
        ann = get(r.ann_id)
        if ann is None or ann.image_id != r.image_id or ann.category_id != r.category_id:
            return False
    return True


def build_index(
    data: dict[str, Any],
    images: list[ImageInfo],
    annotations: list[Annotation],
    categories: list[Category],
    refs: list[Ref],
    *,
    refs_file: Path,
    instances_file: Path,
) -> ReferIndex:
    """REFER's index over ``data`` (REFER's ``refs``, ``images``, ``annotations``, ``categories``)
    and the typed records parsed from it, in the same order."""
    ix = ReferIndex()
    inst = str(instances_file)
    _index_images(ix, data["images"], images, inst)
    _index_categories(ix, categories, inst)
    _index_annotations(ix, data["annotations"], annotations, inst)
    _index_refs(ix, data["refs"], refs, str(refs_file))
    return ix
