"""ComCOCO and ComCOCO+ written from one set of release entries: REFER, COCO and edit pairs.

A release entry is one accepted sample with its release ids, split, expressions and provenance.
From the same entries the release writes

* ``images/``, ``gt/``, ``masks/``, ``effects/`` (``comcoco.release.files``): composites, ground truths,
  masks and effect masks renamed by release ids. Masks are the pycocotools rasterisation of the
  released polygon, so ``COCO.annToMask`` and REFER's ``getMask`` give exactly the mask file. The
  effect mask is the object and everything pasting it changed (its shadow, its re-encoded JPEG ring:
  robust profile): the region a removal model must inpaint; outside it the composite equals the
  ground truth byte for byte. For a paper-profile build it equals the mask;
* ``<variant>/refs(unc).p`` + ``<variant>/instances.json`` (here) through the project's REFER writer,
  with provenance under the extra ref key ``comcoco``; every annotation has an extra ``comcoco`` key:
  ``{"role": "target", "effect_segmentation": RLE, "effect_area": N}`` for a pasted object, and the
  background's own objects are there too, ``{"role": "background", "source_ann_id": …}``, referred by
  no ref (the artifact audit compares them with the pasted ones);
* ``parquet/<variant>/<split>-NNNNN.parquet`` (``comcoco.release.parquet``): one row per sample;
* ``instruct/<variant>/<split>.jsonl`` (here): one (input, "remove the ...", output, mask) line per
  expression.

ComCOCO carries appearance expressions and spatial phrases; ComCOCO+ appearance expressions only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

from comcoco.errors import ComcocoError
from comcoco.io import atomic_write, write_text_atomic
from comcoco.records import Annotation, ImageInfo, Ref, Sentence
from comcoco.sources.allocation import SharedFloats, two_decimals
from comcoco.sources.images import annotation_rle, usable_polygons
from comcoco.sources.refer import COCO_CATEGORIES, normalize_sentence, write_source

if TYPE_CHECKING:
    from comcoco.release.files import ExportedSample

VARIANTS: tuple[str, ...] = ("ComCOCO", "ComCOCO+")
SPLIT_BY = "unc"
# Release image and annotation ids start here: COCO image ids stay below 600,000 and COCO
# annotation ids below 2.3 M (crowd ids are ~9e11), so release ids never collide with COCO's.
RELEASE_ID_BASE = 1_000_000_000
IMAGES_DIR, GT_DIR, MASKS_DIR, EFFECTS_DIR = "images", "gt", "masks", "effects"
NATIVE_ID_BASE = 2 * RELEASE_ID_BASE  # annotation ids of the backgrounds' own objects
PARQUET_DIR, INSTRUCT_DIR = "parquet", "instruct"
DEFAULT_ROWS_PER_PARQUET = 1000


class ExportError(ComcocoError):
    """A sample's files or geometry cannot be exported (names the sample and file)."""


def _suffix(rel: str) -> str:
    """``PurePosixPath(rel).suffix`` without building the path (asked for several times per sample by
    every export: a tenth of the REFER writer's time)."""
    name = rel.rstrip("/").rpartition("/")[2]
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


@dataclass(frozen=True)
class Expression:
    """One released expression; ``source_sent_id`` is the RefCOCO+ sentence it came from (None if spatial)."""

    sent_id: int
    raw: str
    spatial: bool = False
    source_sent_id: int | None = None


@dataclass(frozen=True)
class ReleaseEntry:
    """One accepted sample with everything the exports need (paths of ``src_*`` are workdir-relative)."""

    sample_id: str
    composite_id: str
    split: str
    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    cluster: int
    width: int
    height: int
    src_composite: str
    src_ground_truth: str
    polygons: tuple[tuple[float, ...], ...]
    expressions: tuple[Expression, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    src_effect_mask: str | None = None  # the build's effect mask (robust profile), workdir-relative
    # the background's own annotated objects: {"source_ann_id", "category_id", "bbox", "segmentation"}
    background_objects: tuple[dict[str, Any], ...] = ()

    @property
    def image_file_name(self) -> str:
        return f"comcoco_{self.image_id:012d}{_suffix(self.src_composite)}"

    @property
    def gt_file_name(self) -> str:
        return f"comcoco_{self.image_id:012d}_{self.ann_id}{_suffix(self.src_ground_truth)}"

    @property
    def mask_file_name(self) -> str:
        return f"comcoco_{self.image_id:012d}_{self.ann_id}.png"

    @property
    def effect_file_name(self) -> str:
        return self.mask_file_name  # under effects/

    def expressions_for(self, variant: str) -> tuple[Expression, ...]:
        if variant == "ComCOCO":
            return self.expressions
        if variant == "ComCOCO+":
            return tuple(e for e in self.expressions if not e.spatial)
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON, sharing (not copying) the provenance and background objects."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["polygons"] = [list(p) for p in self.polygons]
        d["expressions"] = [asdict(x) for x in self.expressions]
        d["background_objects"] = list(self.background_objects)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], shared: SharedFloats | None = None) -> ReleaseEntry:
        """The entry ``to_dict`` gave; coordinates as ``shared`` floats when given (``read_entries``)."""
        d = dict(d)
        coords = (shared if shared is not None else SharedFloats()).values
        d["polygons"] = tuple(tuple(coords(map(float, p))) for p in d["polygons"])
        d["expressions"] = tuple(Expression(**e) for e in d["expressions"])
        d["background_objects"] = tuple(d.get("background_objects") or ())
        return cls(**d)


def write_entries(path: str | os.PathLike[str], entries: Sequence[ReleaseEntry]) -> None:
    """The entries as JSON Lines: a first line ``{"backgrounds": N}``, then each background's own
    objects (one line each, once), then one line per entry with ``"background": i``. Every sample on a
    background carries the same objects (polygons of all its annotations); written per sample they
    made the file about ten times larger. Lines are read back one at a time: the whole document parsed
    at once cost several times the entries' own memory (a paper-size release: 0.7 GB)."""
    backgrounds: list[str] = []
    by_text: dict[str, int] = {}
    by_id: dict[int, int] = {}  # the same tuple object (select makes one per background): serialised once
    rows = []
    for e in entries:
        k = by_id.get(id(e.background_objects))
        if k is None:
            text = json.dumps(list(e.background_objects), sort_keys=True)
            k = by_text.setdefault(text, len(backgrounds))
            if k == len(backgrounds):
                backgrounds.append(text)
            by_id[id(e.background_objects)] = k
        rows.append(k)
    with atomic_write(path, "w") as fh:  # streamed: the document is never one string in memory
        fh.write(json.dumps({"backgrounds": len(backgrounds)}) + "\n")
        for text in backgrounds:
            fh.write(text + "\n")
        for e, k in zip(entries, rows, strict=True):
            d = e.to_dict()
            del d["background_objects"]
            d["background"] = k
            fh.write(json.dumps(d, sort_keys=True) + "\n")


def read_entries(path: str | os.PathLike[str]) -> list[ReleaseEntry]:
    """The entries ``write_entries`` wrote, a line at a time; the samples of one background share its
    objects, and every entry's coordinates are shared floats."""
    shared = SharedFloats()
    keys: dict[str, str] = {}
    # Equal keys are one string object, as one ``json.loads`` of a whole document makes them: pickle
    # writes a repeated object as a reference, so the REFER pickle's bytes depend on it.
    loads = json.JSONDecoder(object_pairs_hook=lambda pairs: {keys.setdefault(k, k): v for k, v in pairs}).decode
    out = []
    with open(path, encoding="utf-8") as fh:
        n = int(loads(fh.readline())["backgrounds"])
        backgrounds = [tuple(_shared_segmentation(o, shared) for o in loads(fh.readline())) for _ in range(n)]
        for line in fh:
            d = loads(line)
            d["background_objects"] = backgrounds[d.pop("background")]
            out.append(ReleaseEntry.from_dict(d, shared))
    return out


def _shared_segmentation(obj: dict[str, Any], shared: SharedFloats) -> dict[str, Any]:
    """A background object with its polygon coordinates as ``shared`` floats (an RLE stays as it is)."""
    seg = obj.get("segmentation")
    if isinstance(seg, list) and all(isinstance(p, list) for p in seg):
        obj["segmentation"] = [shared.values(p) for p in seg]
    return obj


# --- geometry -------------------------------------------------------------------------------------


def clip_polygons(polygons: Iterable[Sequence[float]], width: int, height: int,
                  shared: SharedFloats | None = None) -> list[list[float]]:
    """Polygons with coordinates clamped into the image and degenerate ones (< 3 points) dropped, as
    ``shared`` floats when given."""
    out = []
    for poly in usable_polygons(list(polygons)):
        xs = np.clip(np.asarray(poly[0::2], dtype=np.float64), 0.0, float(width))
        ys = np.clip(np.asarray(poly[1::2], dtype=np.float64), 0.0, float(height))
        coords = np.empty(len(poly), dtype=np.float64)
        coords[0::2], coords[1::2] = xs, ys
        if not two_decimals(coords)[1].all():  # placed outlines are on quarter pixels: nothing to round
            coords = np.array([round(float(v), 2) for v in coords], dtype=np.float64)
        out.append(coords.tolist() if shared is None else shared.array(coords))
    return out


def placed_rle(entry: ReleaseEntry) -> dict[str, Any]:
    """The released polygon as one pycocotools RLE (its rasterisation, not yet drawn)."""
    rle = annotation_rle([list(p) for p in entry.polygons], entry.height, entry.width)
    if rle is None:
        raise ExportError(f"sample {entry.sample_id}: the placed polygon covers no pixel")
    return rle


def rle_geometry(entry: ReleaseEntry, rle: dict[str, Any]) -> tuple[tuple[float, float, float, float], float]:
    """Box ``(x, y, w, h)`` and area of the released mask, read from its RLE (the mask's pixel count and
    the box of its pixels, as counting the decoded mask gives)."""
    area = int(mask_utils.area(rle))
    if area == 0:
        raise ExportError(f"sample {entry.sample_id}: the placed polygon covers no pixel")
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return (x, y, w, h), float(area)


def entry_annotation(entry: ReleaseEntry,
                     geometry: tuple[tuple[float, float, float, float], float] | None = None) -> Annotation:
    """The pasted object's COCO annotation, box and area those of its rasterisation (``geometry``
    when already measured, as ``rle_geometry`` gives it); its segmentation is the entry's own polygons,
    not a copy (a release's REFER holds every target's annotation at once)."""
    bbox, area = geometry or rle_geometry(entry, placed_rle(entry))
    return Annotation(ann_id=entry.ann_id, image_id=entry.image_id, category_id=entry.category_id,
                      bbox=bbox, area=area, iscrowd=0, segmentation=entry.polygons)


# --- REFER / COCO ------------------------------------------------------------------------------------


def ref_provenance(entry: ReleaseEntry) -> dict[str, Any]:
    """The extra ``comcoco`` key of a ref: ids of the inputs, placement, filters, review, files."""
    prov = {k: v for k, v in entry.provenance.items() if k != "build_mask"}
    return {
        "sample_id": entry.sample_id,
        "composite_id": entry.composite_id,
        **prov,
        "gt_file_name": entry.gt_file_name,
        "mask_file_name": entry.mask_file_name,
        "effect_mask_file_name": entry.effect_file_name,
        "spatial_sent_ids": [x.sent_id for x in entry.expressions if x.spatial],
        "source_sent_ids": [x.source_sent_id for x in entry.expressions if not x.spatial],
    }


def variant_entries(entries: Sequence[ReleaseEntry], variant: str) -> list[ReleaseEntry]:
    """The entries a variant holds: those with at least one expression of that variant, by ref id."""
    return sorted((e for e in entries if e.expressions_for(variant)), key=lambda e: e.ref_id)


def _sentence(expr: Expression) -> Sentence:
    sent, tokens = normalize_sentence(expr.raw)
    return Sentence(sent_id=expr.sent_id, raw=expr.raw, sent=sent, tokens=tokens)


def write_refer(release: str | os.PathLike[str], entries: Sequence[ReleaseEntry], variant: str,
                exported: Mapping[str, ExportedSample], info: dict[str, Any] | None = None) -> Path:
    """``<variant>/refs(unc).p`` and ``<variant>/instances.json`` for the variant's entries.

    ``exported`` holds each sample's box, area and effect mask as its files were written
    (``comcoco.release.files.export_files``).
    """
    chosen = variant_entries(entries, variant)
    refs, anns, extras, ann_extras = [], [], {}, {}
    images: dict[int, ImageInfo] = {}
    by_image: dict[int, list[ReleaseEntry]] = {}
    for e in chosen:
        by_image.setdefault(e.image_id, []).append(e)
    for e in chosen:
        x = exported[e.sample_id]
        ann = entry_annotation(e, (x.bbox, x.area))
        anns.append(ann)
        ann_extras[ann.ann_id] = {"comcoco": {"role": "target", "effect_segmentation": x.effect_rle,
                                              "effect_area": x.effect_area}}
        refs.append(Ref(ref_id=e.ref_id, ann_id=e.ann_id, image_id=e.image_id, category_id=e.category_id,
                        split=e.split, sentences=tuple(_sentence(x) for x in e.expressions_for(variant)),
                        file_name=f"comcoco_{e.image_id:012d}_{e.ann_id}.jpg"))
        extras[e.ref_id] = {"comcoco": ref_provenance(e)}
        if e.image_id not in images:
            group = sorted(by_image[e.image_id], key=lambda x: x.ann_id)
            extra: dict[str, Any] = {"license": 0, "coco_url": "", "flickr_url": "", "date_captured": "",
                                     "gt_file_name": group[0].gt_file_name,
                                     "bg_image_id": int(e.provenance.get("bg_image_id", -1))}
            if len(group) > 1:  # one ground truth per pasted object: see the refs' comcoco key
                extra["gt_file_names"] = {str(x.ann_id): x.gt_file_name for x in group}
            images[e.image_id] = ImageInfo(image_id=e.image_id, file_name=e.image_file_name,
                                           width=e.width, height=e.height, extra=extra)
    for ann, role in _background_annotations(entries, set(images)):
        anns.append(ann)
        ann_extras[ann.ann_id] = {"comcoco": role}
    categories = list(COCO_CATEGORIES)
    licenses = [{"id": 0, "name": "see README.md (COCO images: Flickr terms; annotations CC BY 4.0)", "url": ""}]
    return write_source(release, refs, [images[i] for i in sorted(images)],
                        sorted(anns, key=lambda a: a.ann_id), categories, dataset=variant,
                        split_by=SPLIT_BY, info=info or {"description": variant}, licenses=licenses,
                        ref_extras=extras, ann_extras=ann_extras)


def _background_annotations(entries: Sequence[ReleaseEntry], image_ids: set[int]) -> list[tuple[Annotation, dict]]:
    """The backgrounds' own objects on the released composites, ids numbered in (image, source ann) order
    over the whole release so both variants give every object the same id."""
    seen: dict[int, tuple[dict[str, Any], ...]] = {}
    for e in sorted(entries, key=lambda x: x.image_id):
        seen.setdefault(e.image_id, e.background_objects)
    out = []
    n = 0
    for image_id in sorted(seen):
        for obj in sorted(seen[image_id], key=lambda o: o["source_ann_id"]):
            if image_id in image_ids:
                x, y, w, h = (float(v) for v in obj["bbox"])
                out.append((Annotation(ann_id=NATIVE_ID_BASE + n, image_id=image_id, category_id=int(obj["category_id"]),
                                       bbox=(x, y, w, h), area=float(obj["area"]), iscrowd=int(obj["iscrowd"]),
                                       segmentation=obj["segmentation"]),
                            {"role": "background", "source_ann_id": int(obj["source_ann_id"])}))
            n += 1
    return out


# --- instruction editing -----------------------------------------------------------------------------


def instruction(expression: str) -> str:
    """"remove the <expression>" (a leading article of the expression is not doubled)."""
    sent, _ = normalize_sentence(expression)
    for article in ("the ", "a ", "an "):
        if sent.startswith(article):
            sent = sent[len(article):]
            break
    return f"remove the {sent}"


def write_instruct(release: str | os.PathLike[str], entries: Sequence[ReleaseEntry], variant: str) -> list[str]:
    """``instruct/<variant>/<split>.jsonl``: one editing pair per expression, paths release-relative."""
    release = Path(release)
    by_split: dict[str, list[str]] = {}
    for e in variant_entries(entries, variant):
        for x in e.expressions_for(variant):
            line = {
                "input_image": f"{IMAGES_DIR}/{e.image_file_name}",
                "instruction": instruction(x.raw),
                "output_image": f"{GT_DIR}/{e.gt_file_name}",
                "mask": f"{MASKS_DIR}/{e.mask_file_name}",
                "effect_mask": f"{EFFECTS_DIR}/{e.effect_file_name}",
                "expression": x.raw, "sent_id": x.sent_id, "spatial": x.spatial,
                "ref_id": e.ref_id, "sample_id": e.sample_id, "split": e.split,
            }
            by_split.setdefault(e.split, []).append(json.dumps(line, sort_keys=True, ensure_ascii=False))
    written = []
    for split in sorted(by_split):
        rel = f"{INSTRUCT_DIR}/{variant}/{split}.jsonl"
        write_text_atomic(release / rel, "\n".join(by_split[split]) + "\n")
        written.append(rel)
    return written


def variant_counts(entries: Sequence[ReleaseEntry], variant: str) -> dict[str, dict[str, int]]:
    """Samples (refs), expressions and composites per split for one variant."""
    out: dict[str, dict[str, int]] = {}
    images: dict[str, set[int]] = {}
    for e in variant_entries(entries, variant):
        c = out.setdefault(e.split, {"samples": 0, "expressions": 0, "images": 0})
        c["samples"] += 1
        c["expressions"] += len(e.expressions_for(variant))
        images.setdefault(e.split, set()).add(e.image_id)
    for split, ids in images.items():
        out[split]["images"] = len(ids)
    order = {name: i for i, name in enumerate(("train", "val", "test"))}
    return {s: out[s] for s in sorted(out, key=lambda k: (order.get(k, len(order)), k))}
