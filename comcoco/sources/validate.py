"""Validation of a loaded REFER-format source: counts per split and a list of problems.

Problems are listed, never raised: a source that loads is usable, and the build stages skip the
records a problem names. Without ``deep`` only file headers are read (cheap); with ``deep`` every
image is fully decoded, which also finds truncated files.
"""

from __future__ import annotations

import math
import numbers
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from comcoco.records import Annotation, ImageInfo, Problem, release_split_or_none
from comcoco.sources.format import sentence_problem, short
from comcoco.sources.images import (
    ImageReadError,
    ImageTooLarge,
    UnsafeImagePath,
    image_size,
    is_rle_like,
    polygon_area,
    read_image,
)
from comcoco.sources.refer import KNOWN_SPLITS, ReferSource

# How far (pixels) a bbox may reach past the image border before it counts as outside: COCO boxes
# are float and computed from polygons, so tiny overshoots are rounding, not defects.
BBOX_TOLERANCE = 1.0

PROBLEM_KINDS: tuple[str, ...] = (
    "missing_annotation",
    "missing_image",
    "missing_image_dir",
    "missing_image_file",
    "unsafe_image_path",
    "image_too_large",
    "unreadable_image",
    "image_size_mismatch",
    "empty_polygon",
    "degenerate_polygon",
    "invalid_segmentation",
    "rle_size_mismatch",
    "referred_rle",
    "degenerate_bbox",
    "bbox_outside_image",
    "duplicate_ref_id",
    "duplicate_sent_id",
    "duplicate_annotation_id",
    "duplicate_image_id",
    "duplicate_category_id",
    "orphan_annotation",
    "unknown_category",
    "annotation_image_mismatch",
    "category_mismatch",
    "sent_ids_mismatch",
    "unusable_text",
    "unknown_split",
)


@dataclass(frozen=True)
class SplitCounts:
    refs: int
    expressions: int
    images: int

    def to_dict(self) -> dict[str, int]:
        return {"refs": self.refs, "expressions": self.expressions, "images": self.images}


@dataclass
class InspectReport:
    """What ``comcoco inspect`` prints: totals, per-split counts and every problem found."""

    source: str
    dataset: str
    split_by: str
    refs_file: str
    image_dir: str
    deep: bool
    refs: int
    expressions: int
    images: int
    annotations: int
    referred_images: int
    splits: dict[str, SplitCounts]
    problems: list[Problem] = field(default_factory=list)

    def problem_counts(self) -> dict[str, int]:
        counts = Counter(p.kind for p in self.problems)
        return {kind: counts[kind] for kind in sorted(counts)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dataset": self.dataset,
            "split_by": self.split_by,
            "refs_file": self.refs_file,
            "image_dir": self.image_dir,
            "deep": self.deep,
            "refs": self.refs,
            "expressions": self.expressions,
            "images": self.images,
            "annotations": self.annotations,
            "referred_images": self.referred_images,
            "splits": {name: counts.to_dict() for name, counts in self.splits.items()},
            "problem_counts": self.problem_counts(),
            "problems": [p.to_dict() for p in self.problems],
        }


def _split_order(name: str) -> tuple[int, str]:
    return (KNOWN_SPLITS.index(name), "") if name in KNOWN_SPLITS else (len(KNOWN_SPLITS), name)


def split_counts(source: ReferSource) -> dict[str, SplitCounts]:
    """Refs, expressions and distinct images per split, in REFER's split order then by name."""
    refs: Counter[str] = Counter()
    expressions: Counter[str] = Counter()
    images: dict[str, set[int]] = {}
    for ref in source.refs():
        refs[ref.split] += 1
        expressions[ref.split] += len(ref.sentences)
        images.setdefault(ref.split, set()).add(ref.image_id)
    return {
        name: SplitCounts(refs[name], expressions[name], len(images[name]))
        for name in sorted(refs, key=_split_order)
    }


# --- geometry ----------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    if type(v) is float:
        return math.isfinite(v)
    if type(v) is int:
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _polygon_problems(ann: Annotation, file: str) -> Iterator[Problem]:
    seg = ann.segmentation
    aid = ann.ann_id
    if len(seg) == 0:
        yield Problem("empty_polygon", file, aid, f"annotation {aid} has no polygons")
        return
    for k, poly in enumerate(seg):
        if not isinstance(poly, list | tuple) or not all(_is_number(v) for v in poly):
            yield Problem("invalid_segmentation", file, aid, f"annotation {aid}: polygon {k} is not a list of finite numbers")
        elif len(poly) == 0:
            yield Problem("empty_polygon", file, aid, f"annotation {aid}: polygon {k} is empty")
        elif len(poly) < 6 or len(poly) % 2:
            yield Problem(
                "degenerate_polygon", file, aid,
                f"annotation {aid}: polygon {k} has {len(poly)} coordinates (needs an even count, at least 3 points)",
            )
        elif polygon_area(poly) <= 0.0:
            yield Problem("degenerate_polygon", file, aid, f"annotation {aid}: polygon {k} has zero area")


_PLAIN_NUMBERS = frozenset({float, int})


def _simple_polygons(segmentations: list[Any]) -> list[bool]:
    """Which segmentations are non-empty lists of lists of plain ints and floats (checked in bulk)."""
    shaped = [type(seg) is list and len(seg) > 0 and all(type(p) is list for p in seg) for seg in segmentations]
    coords = chain.from_iterable(chain.from_iterable(s for s, ok in zip(segmentations, shaped, strict=True) if ok))
    if _PLAIN_NUMBERS.issuperset(map(type, coords)):
        return shaped
    return [ok and _PLAIN_NUMBERS.issuperset(map(type, chain.from_iterable(s)))
            for s, ok in zip(segmentations, shaped, strict=True)]


_BATCH = 8192  # annotations per numpy batch: keeps temporaries to a few MB


def _flag_polygons(polys: list[list[float | int]]) -> list[bool] | None:
    """For each simple polygon, whether ``_polygon_problems`` could report it (None: an int beyond
    float range, left to the one-by-one check)."""
    lengths = np.fromiter(map(len, polys), dtype=np.int64, count=len(polys))
    try:
        coords = np.fromiter(chain.from_iterable(polys), dtype=np.float64, count=int(lengths.sum()))
    except OverflowError:
        return None
    ends = np.cumsum(lengths)
    starts = ends - lengths
    nonfinite = np.concatenate([[0], np.cumsum(~np.isfinite(coords))])
    invalid = (nonfinite[ends] - nonfinite[starts]) > 0
    shaped = ~invalid & (lengths >= 6) & (lengths % 2 == 0)
    zero = np.zeros(len(polys), dtype=bool)
    if shaped.any():
        npts = lengths[shaped] // 2
        first = np.cumsum(npts) - npts
        k = np.arange(int(npts.sum())) - np.repeat(first, npts)  # point number within its polygon
        xi = np.repeat(starts[shaped], npts) + 2 * k
        xn = np.repeat(starts[shaped], npts) + 2 * ((k + 1) % np.repeat(npts, npts))
        with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN sums are verdicts too
            cross = coords[xi] * coords[xn + 1] - coords[xn] * coords[xi + 1]
            twice = np.add.reduceat(cross, first)
            scale = np.add.reduceat(np.abs(cross), first)
        unsure = np.flatnonzero(~(np.abs(twice) > 1e-9 * scale))  # near zero (or NaN): decide exactly
        verdict = np.zeros(len(twice), dtype=bool)
        shaped_index = np.flatnonzero(shaped)
        for j in unsure.tolist():
            verdict[j] = polygon_area(polys[shaped_index[j]]) <= 0.0
        zero[shaped_index] = verdict
    return (invalid | (lengths == 0) | ~shaped | zero).tolist()


def _bulk_polygon_problems(annotations: Sequence[Annotation], file: str) -> list[list[Problem] | None]:
    """``_polygon_problems`` of every annotation with simple polygons, computed in bulk (None for
    the other annotations, which are checked one by one).

    A RefCOCO+-size source has about 10 million polygon coordinates. numpy checks them for
    finiteness and sums the shoelace terms; where a sum lies within rounding of zero, the area is
    recomputed by ``polygon_area`` itself, so every verdict is the one-by-one verdict.
    """
    out: list[list[Problem] | None] = []
    for lo in range(0, len(annotations), _BATCH):
        batch = annotations[lo:lo + _BATCH]
        segs = [a.segmentation for a in batch]
        simple = _simple_polygons(segs)
        flagged = _flag_polygons(list(chain.from_iterable(s for s, ok in zip(segs, simple, strict=True) if ok)))
        if flagged is None:
            out += [None] * len(batch)
            continue
        at = 0
        for ann, seg, ok in zip(batch, segs, simple, strict=True):
            if not ok:
                out.append(None)
                continue
            n = len(seg)
            out.append(list(_polygon_problems(ann, file)) if any(flagged[at:at + n]) else [])
            at += n
    return out


def _rle_problems(seg: dict[str, Any], ann: Annotation, image: ImageInfo | None, file: str) -> Iterator[Problem]:
    size = seg.get("size")
    counts = seg.get("counts")
    if not (isinstance(counts, str) and counts.isascii()) and not (
            isinstance(counts, list) and all(type(c) is int and c >= 0 for c in counts)):
        yield Problem("invalid_segmentation", file, ann.ann_id,
                      f"annotation {ann.ann_id}: RLE counts {short(counts)} are neither a compressed string nor "
                      "a list of counts")
    if not isinstance(size, list | tuple) or len(size) != 2:
        yield Problem("invalid_segmentation", file, ann.ann_id, f"annotation {ann.ann_id}: RLE without a [height, width] size")
    elif image is not None and [size[0], size[1]] != [image.height, image.width]:
        yield Problem(
            "rle_size_mismatch", file, ann.ann_id,
            f"annotation {ann.ann_id}: RLE size {list(size)} but image {image.image_id} is "
            f"{image.height}x{image.width} (height x width)",
        )


def _bbox_suspects(annotations: Sequence[Annotation], image_by_id: dict[int, ImageInfo]) -> np.ndarray:
    """Annotations whose bbox ``annotation_problems`` might report (same float arithmetic, in bulk)."""
    n = len(annotations)
    box = np.fromiter(chain.from_iterable(a.bbox for a in annotations), dtype=np.float64, count=4 * n).reshape(n, 4)
    images = [image_by_id.get(a.image_id) for a in annotations]
    try:
        size = np.array([(i.width, i.height) if i is not None else (np.inf, np.inf) for i in images],
                        dtype=np.float64).reshape(n, 2)
    except OverflowError:
        return np.ones(n, dtype=bool)
    x, y, w, h = box.T
    with np.errstate(invalid="ignore", over="ignore"):
        good = np.isfinite(box).all(axis=1) & (w > 0) & (h > 0)
        inside = ~((x < -BBOX_TOLERANCE) | (y < -BBOX_TOLERANCE)
                   | (x + w > size[:, 0] + BBOX_TOLERANCE) | (y + h > size[:, 1] + BBOX_TOLERANCE))
    return ~(good & inside)


def annotation_problems(
    ann: Annotation, image: ImageInfo | None, file: str, referred: bool = False,
    polygon_problems: list[Problem] | None = None,
) -> list[Problem]:
    """Geometry defects of one annotation: polygons, RLE size, bbox against its image.

    ``polygon_problems`` are its polygon defects when already found (by the bulk check).
    """
    out: list[Problem] = []
    seg = ann.segmentation
    aid = ann.ann_id
    if is_rle_like(seg):
        out.extend(_rle_problems(seg, ann, image, file))
        if referred:
            out.append(Problem("referred_rle", file, aid, f"annotation {aid} is referred but stored as RLE; original REFER getMask needs polygons"))
    elif isinstance(seg, list | tuple) and seg and all(is_rle_like(part) for part in seg):
        for part in seg:
            out.extend(_rle_problems(part, ann, image, file))
    else:
        out.extend(_polygon_problems(ann, file) if polygon_problems is None else polygon_problems)

    x, y, w, h = ann.bbox
    if not all(math.isfinite(v) for v in ann.bbox) or w <= 0 or h <= 0:
        out.append(Problem("degenerate_bbox", file, aid, f"annotation {aid}: bbox {list(ann.bbox)} has no extent"))
    elif image is not None and (
        x < -BBOX_TOLERANCE
        or y < -BBOX_TOLERANCE
        or x + w > image.width + BBOX_TOLERANCE
        or y + h > image.height + BBOX_TOLERANCE
    ):
        out.append(
            Problem(
                "bbox_outside_image", file, aid,
                f"annotation {aid}: bbox {list(ann.bbox)} reaches outside image {image.image_id} "
                f"({image.width}x{image.height})",
            )
        )
    return out


# --- image files -------------------------------------------------------------------------------


def _check_image_file(source: ReferSource, image: ImageInfo, deep: bool) -> list[Problem]:
    iid = image.image_id
    try:
        path = source.image_path(iid)
    except UnsafeImagePath as exc:
        return [Problem("unsafe_image_path", str(exc.path), iid, f"image {iid}: {exc.reason}")]
    if not path.exists():
        return [Problem("missing_image_file", str(path), iid, f"image {iid}: file not found")]
    try:
        if deep:
            h, w = read_image(path).shape[:2]
        else:
            w, h = image_size(path)
    except ImageTooLarge as exc:
        return [Problem("image_too_large", str(path), iid, f"image {iid}: {exc.reason}")]
    except ImageReadError as exc:
        return [Problem("unreadable_image", str(path), iid, f"image {iid}: {exc.reason}")]
    if (w, h) != (image.width, image.height):
        return [
            Problem(
                "image_size_mismatch", str(path), iid,
                f"image {iid}: file is {w}x{h} but instances.json says {image.width}x{image.height}",
            )
        ]
    return []


def image_file_problems(
    source: ReferSource, images: Sequence[ImageInfo], deep: bool = False, workers: int | None = None
) -> list[Problem]:
    """Where each image file is (inside the image folder), whether it is there, readable, within the
    size and pixel limits and of its recorded size, in the given order.

    Decoding releases the GIL, so a thread pool spreads ``deep`` checks over the cores.
    """
    image_dir = Path(source.IMAGE_DIR)
    if not image_dir.is_dir():
        return [Problem("missing_image_dir", str(image_dir), None, f"image directory {image_dir} does not exist")]
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n_workers <= 1 or len(images) < 2:
        results = [_check_image_file(source, i, deep) for i in images]
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            results = list(pool.map(lambda image: _check_image_file(source, image, deep), images))
    return [p for found in results for p in found]


def text_problems(refs: Sequence[Any], file: str) -> list[Problem]:
    """Sentences whose text cannot be shipped (lone surrogates, control characters), by ref id.

    The build reports them (``source-report.json``); review tasks and releases leave those sentences
    out (``comcoco.sources.format.usable_sentences``), so they are never first met by a release.
    """
    out = []
    for ref in refs:
        for sent in ref.sentences:
            why = sentence_problem(sent)
            if why is not None:
                out.append(Problem("unusable_text", file, ref.ref_id,
                                   f"ref {ref.ref_id} sentence {sent.sent_id}: {why}: {short(sent.raw)}; "
                                   "the sentence is left out of review tasks and releases"))
    return out


def split_problems(refs: Sequence[Any], file: str) -> list[Problem]:
    """Refs whose split maps to no release split (train, val, test*): the build leaves them out."""
    return [Problem("unknown_split", file, ref.ref_id,
                    f"ref {ref.ref_id}: split {short(ref.split)} is none of train, val, test*; the ref is left "
                    "out of matching, the build and releases")
            for ref in refs if release_split_or_none(ref.split) is None]


def inspect_source(source: ReferSource, deep: bool = False, workers: int | None = None) -> InspectReport:
    """Count refs, expressions, images and annotations per split and list every problem found.

    Problems come in a fixed order: those found while indexing, then annotation geometry (file
    order), then image files (file order).
    """
    images = source.images()
    annotations = source.annotations()
    refs = source.refs()
    inst = str(source.instances_file)
    image_by_id = {image.image_id: image for image in images}
    referred = {ref.ann_id for ref in refs}

    problems = list(source.problems)
    polygons = _bulk_polygon_problems(annotations, inst)
    suspects = np.flatnonzero(_bbox_suspects(annotations, image_by_id)
                              | np.fromiter((found is None or bool(found) for found in polygons), bool, len(polygons)))
    for i in suspects.tolist():  # the others have good polygons and a good bbox: nothing to report
        ann = annotations[i]
        problems.extend(annotation_problems(ann, image_by_id.get(ann.image_id), inst, ann.ann_id in referred, polygons[i]))
    problems.extend(split_problems(refs, str(source.refs_file)))
    problems.extend(text_problems(refs, str(source.refs_file)))
    problems.extend(image_file_problems(source, images, deep=deep, workers=workers))

    return InspectReport(
        source=source.DATA_DIR,
        dataset=source.dataset,
        split_by=source.split_by,
        refs_file=str(source.refs_file),
        image_dir=source.IMAGE_DIR,
        deep=deep,
        refs=len(refs),
        expressions=sum(len(ref.sentences) for ref in refs),
        images=len(images),
        annotations=len(annotations),
        referred_images=len({ref.image_id for ref in refs}),
        splits=split_counts(source),
        problems=problems,
    )
