"""ComCOCO and ComCOCO+ written from one set of release entries: REFER, COCO, Parquet and edit pairs.

A release entry is one accepted sample with its release ids, split, expressions and provenance.
From the same entries this module writes

* ``images/``, ``gt/``, ``masks/``, ``effects/``: composites, ground truths, masks and effect masks
  renamed by release ids. Masks are the pycocotools rasterisation of the released polygon, so
  ``COCO.annToMask`` and REFER's ``getMask`` give exactly the mask file. The effect mask is the object
  and everything pasting it changed (its shadow, its re-encoded JPEG ring: robust profile): the region
  a removal model must inpaint; outside it the composite equals the ground truth byte for byte. For a
  paper-profile build it equals the mask;
* ``<variant>/refs(unc).p`` + ``<variant>/instances.json`` through the project's REFER writer, with
  provenance under the extra ref key ``comcoco``; every annotation has an extra ``comcoco`` key:
  ``{"role": "target", "effect_segmentation": RLE, "effect_area": N}`` for a pasted object, and the
  background's own objects are there too, ``{"role": "background", "source_ann_id": …}``, referred by
  no ref (the artifact audit compares them with the pasted ones);
* ``parquet/<variant>/<split>-NNNNN.parquet``: one row per sample, images as Hugging Face ``Image``
  structs so ``datasets.load_dataset("parquet", ...)`` decodes them;
* ``instruct/<variant>/<split>.jsonl``: one (input, "remove the ...", output, mask) line per expression.

ComCOCO carries appearance expressions and spatial phrases; ComCOCO+ appearance expressions only.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from comcoco.errors import ComcocoError
from comcoco.io import write_bytes_atomic, write_text_atomic
from comcoco.progress import track
from comcoco.records import Annotation, ImageInfo, Ref, Sentence
from comcoco.sources.images import annotation_mask, usable_polygons
from comcoco.sources.refer import COCO_CATEGORIES, normalize_sentence, write_source

VARIANTS: tuple[str, ...] = ("ComCOCO", "ComCOCO+")
SPLIT_BY = "unc"
# Release image and annotation ids start here: COCO image ids stay below 600,000 and COCO
# annotation ids below 2.3 M (crowd ids are ~9e11), so release ids never collide with COCO's.
RELEASE_ID_BASE = 1_000_000_000
IMAGES_DIR, GT_DIR, MASKS_DIR, EFFECTS_DIR = "images", "gt", "masks", "effects"
NATIVE_ID_BASE = 2 * RELEASE_ID_BASE  # annotation ids of the backgrounds' own objects
PARQUET_DIR, INSTRUCT_DIR = "parquet", "instruct"
DEFAULT_ROWS_PER_PARQUET = 1000
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 6]


class ExportError(ComcocoError):
    """A sample's files or geometry cannot be exported (names the sample and file)."""


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
        return f"comcoco_{self.image_id:012d}{Path(self.src_composite).suffix}"

    @property
    def gt_file_name(self) -> str:
        return f"comcoco_{self.image_id:012d}_{self.ann_id}{Path(self.src_ground_truth).suffix}"

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
        d = asdict(self)
        d["polygons"] = [list(p) for p in self.polygons]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReleaseEntry:
        d = dict(d)
        d["polygons"] = tuple(tuple(float(v) for v in p) for p in d["polygons"])
        d["expressions"] = tuple(Expression(**e) for e in d["expressions"])
        d["background_objects"] = tuple(d.get("background_objects") or ())
        return cls(**d)


def write_entries(path: str | os.PathLike[str], entries: Sequence[ReleaseEntry]) -> None:
    write_text_atomic(path, json.dumps([e.to_dict() for e in entries], sort_keys=True) + "\n")


def read_entries(path: str | os.PathLike[str]) -> list[ReleaseEntry]:
    return [ReleaseEntry.from_dict(d) for d in json.loads(Path(path).read_text())]


# --- geometry -------------------------------------------------------------------------------------


def clip_polygons(polygons: Iterable[Sequence[float]], width: int, height: int) -> list[list[float]]:
    """Polygons with coordinates clamped into the image and degenerate ones (< 3 points) dropped."""
    out = []
    for poly in usable_polygons(list(polygons)):
        xs = np.clip(np.asarray(poly[0::2], dtype=np.float64), 0.0, float(width))
        ys = np.clip(np.asarray(poly[1::2], dtype=np.float64), 0.0, float(height))
        coords = np.empty(len(poly), dtype=np.float64)
        coords[0::2], coords[1::2] = xs, ys
        out.append([round(float(v), 2) for v in coords])
    return out


def entry_annotation(entry: ReleaseEntry) -> tuple[Annotation, np.ndarray]:
    """The pasted object's COCO annotation (area and bbox recomputed) and its 0/1 mask."""
    polys = [list(p) for p in entry.polygons]
    mask = annotation_mask(polys, entry.height, entry.width)
    if not mask.any():
        raise ExportError(f"sample {entry.sample_id}: the placed polygon covers no pixel")
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = (float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1))
    ann = Annotation(ann_id=entry.ann_id, image_id=entry.image_id, category_id=entry.category_id,
                     bbox=bbox, area=float(mask.sum()), iscrowd=0, segmentation=polys)
    return ann, mask


def encode_mask(mask01: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", (mask01 > 0).astype(np.uint8) * 255, _PNG_PARAMS)
    if not ok:
        raise ExportError("could not encode a mask as PNG")
    return buf.tobytes()


# --- files ----------------------------------------------------------------------------------------


_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs)


def copy_file(src: Path, dst: Path) -> None:
    """A copy that shares no inode with ``src``: a reflink where the filesystem has them (instant, and
    copy-on-write, so editing either side never changes the other), else a plain copy (``sendfile``).
    Never a hard link, which would let an edit in the work directory change a published release."""
    import fcntl

    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass  # no reflinks here (ext4, tmpfs, another filesystem): copy the bytes
    shutil.copyfile(src, dst)


def export_files(workdir: str | os.PathLike[str], release: str | os.PathLike[str],
                 entries: Sequence[ReleaseEntry], progress: bool = False) -> dict[str, Any]:
    """Place composites, ground truths and masks under their release names; returns mask agreement stats.

    The agreement is the IoU between the build's mask and the released (polygon) mask per sample.
    """
    workdir, release = Path(workdir), Path(release)
    ious: list[float] = []
    done_images: set[int] = set()
    for e in track(entries, "exporting files", progress, unit="sample"):
        for rel in (e.src_composite, e.src_ground_truth):
            if not (workdir / rel).is_file():
                raise ExportError(f"sample {e.sample_id}: {workdir / rel} is missing")
        if e.image_id not in done_images:
            copy_file(workdir / e.src_composite, release / IMAGES_DIR / e.image_file_name)
            done_images.add(e.image_id)
        copy_file(workdir / e.src_ground_truth, release / GT_DIR / e.gt_file_name)
        _, mask = entry_annotation(e)
        write_bytes_atomic(release / MASKS_DIR / e.mask_file_name, encode_mask(mask))
        write_bytes_atomic(release / EFFECTS_DIR / e.effect_file_name, encode_mask(_effect(workdir, e, mask)))
        build_mask_rel = e.provenance.get("build_mask")
        if build_mask_rel and (workdir / build_mask_rel).is_file():
            built = cv2.imread(str(workdir / build_mask_rel), cv2.IMREAD_GRAYSCALE)
            if built is not None and built.shape == mask.shape:
                b = built > 127
                union = np.logical_or(b, mask > 0).sum()
                ious.append(float(np.logical_and(b, mask > 0).sum() / union) if union else 1.0)
    return {
        "samples": len(entries),
        "composites": len(done_images),
        "mask_iou_min": round(min(ious), 4) if ious else None,
        "mask_iou_mean": round(float(np.mean(ious)), 4) if ious else None,
    }


def _effect(workdir: Path, e: ReleaseEntry, mask: np.ndarray) -> np.ndarray:
    """The released effect mask: the build's effect mask ∪ the released mask (the mask alone for a
    paper-profile build), so it always covers the object as released."""
    effect = mask > 0
    if e.src_effect_mask:
        built = cv2.imread(str(workdir / e.src_effect_mask), cv2.IMREAD_GRAYSCALE)
        if built is None or built.shape != mask.shape:
            raise ExportError(f"sample {e.sample_id}: effect mask {workdir / e.src_effect_mask} is missing or "
                              f"not {mask.shape[1]}x{mask.shape[0]}")
        effect |= built > 127
    return effect.astype(np.uint8)


def _rle(mask01: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask01.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


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
                info: dict[str, Any] | None = None) -> Path:
    """``<variant>/refs(unc).p`` and ``<variant>/instances.json`` for the variant's entries."""
    chosen = variant_entries(entries, variant)
    refs, anns, extras, ann_extras = [], [], {}, {}
    images: dict[int, ImageInfo] = {}
    by_image: dict[int, list[ReleaseEntry]] = {}
    for e in chosen:
        by_image.setdefault(e.image_id, []).append(e)
    for e in chosen:
        ann, _ = entry_annotation(e)
        anns.append(ann)
        effect = cv2.imread(str(Path(release) / EFFECTS_DIR / e.effect_file_name), cv2.IMREAD_GRAYSCALE) > 127
        ann_extras[ann.ann_id] = {"comcoco": {"role": "target", "effect_segmentation": _rle(effect),
                                              "effect_area": int(effect.sum())}}
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


# --- Parquet ---------------------------------------------------------------------------------------

_IMAGE_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_PROV_FLOATS = ("s", "rx", "ry", "placement_score")
PARQUET_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("ref_id", pa.int64()),
    pa.field("image_id", pa.int64()),
    pa.field("ann_id", pa.int64()),
    pa.field("image", _IMAGE_STRUCT),
    pa.field("ground_truth", _IMAGE_STRUCT),
    pa.field("mask", _IMAGE_STRUCT),
    pa.field("effect_mask", _IMAGE_STRUCT),
    pa.field("expressions", pa.list_(pa.string())),
    pa.field("sent_ids", pa.list_(pa.int64())),
    pa.field("spatial", pa.list_(pa.bool_())),
    pa.field("bbox", pa.list_(pa.float64())),
    pa.field("category_id", pa.int64()),
    pa.field("category", pa.string()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("fg_ref_id", pa.int64()),
    pa.field("fg_ann_id", pa.int64()),
    pa.field("fg_image_id", pa.int64()),
    pa.field("bg_image_id", pa.int64()),
    *[pa.field(n, pa.float64()) for n in _PROV_FLOATS],
    pa.field("review_decision", pa.string()),
    pa.field("reviewer", pa.string()),
    pa.field("provenance", pa.string()),
])
_HF_FEATURES = {"image": {"_type": "Image"}, "ground_truth": {"_type": "Image"}, "mask": {"_type": "Image"},
                "effect_mask": {"_type": "Image"}}
PARQUET_SCHEMA = PARQUET_SCHEMA.with_metadata(
    {b"huggingface": json.dumps({"info": {"features": _HF_FEATURES}}, sort_keys=True).encode()}
)
_CATEGORY_NAME = {c.id: c.name for c in COCO_CATEGORIES}


def _parquet_row(release: Path, e: ReleaseEntry, variant: str) -> dict[str, Any]:
    ann, _ = entry_annotation(e)
    exprs = e.expressions_for(variant)
    prov = ref_provenance(e)
    review = prov.get("review") or {}
    placement = prov.get("placement") or {}

    def img(folder: str, name: str) -> dict[str, Any]:
        return {"bytes": (release / folder / name).read_bytes(), "path": f"{folder}/{name}"}

    return {
        "sample_id": e.sample_id, "split": e.split, "ref_id": e.ref_id, "image_id": e.image_id,
        "ann_id": e.ann_id,
        "image": img(IMAGES_DIR, e.image_file_name),
        "ground_truth": img(GT_DIR, e.gt_file_name),
        "mask": img(MASKS_DIR, e.mask_file_name),
        "effect_mask": img(EFFECTS_DIR, e.effect_file_name),
        "expressions": [x.raw for x in exprs], "sent_ids": [x.sent_id for x in exprs],
        "spatial": [x.spatial for x in exprs], "bbox": list(ann.bbox),
        "category_id": e.category_id, "category": _CATEGORY_NAME.get(e.category_id, ""),
        "width": e.width, "height": e.height,
        "fg_ref_id": prov.get("fg_ref_id"), "fg_ann_id": prov.get("fg_ann_id"),
        "fg_image_id": prov.get("fg_image_id"), "bg_image_id": prov.get("bg_image_id"),
        "s": placement.get("s"), "rx": placement.get("rx"), "ry": placement.get("ry"),
        "placement_score": placement.get("score"),
        "review_decision": review.get("decision"), "reviewer": review.get("reviewer"),
        "provenance": json.dumps(prov, sort_keys=True),
    }


def write_parquet(release: str | os.PathLike[str], entries: Sequence[ReleaseEntry], variant: str,
                  rows_per_file: int = DEFAULT_ROWS_PER_PARQUET) -> list[str]:
    """``parquet/<variant>/<split>-NNNNN.parquet`` (only non-empty splits); returns relative paths."""
    if rows_per_file < 1:
        raise ValueError(f"rows per Parquet file must be at least 1, got {rows_per_file}")
    release = Path(release)
    written = []
    by_split: dict[str, list[ReleaseEntry]] = {}
    for e in variant_entries(entries, variant):
        by_split.setdefault(e.split, []).append(e)
    for split in sorted(by_split):
        chunk_list = by_split[split]
        for i in range(0, len(chunk_list), rows_per_file):
            rows = [_parquet_row(release, e, variant) for e in chunk_list[i:i + rows_per_file]]
            table = pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            rel = f"{PARQUET_DIR}/{variant}/{split}-{i // rows_per_file:05d}.parquet"
            write_bytes_atomic(release / rel, buf.getvalue())
            written.append(rel)
    return written


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
