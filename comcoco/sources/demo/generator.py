"""The demo source as files: every image drawn, encoded and written (``drawing.py``), then the REFER files.

``generate_demo`` writes a complete REFER-format RefCOCO+ source (``refs(unc).p``,
``instances.json``, ``images/mscoco/images/train2014``) plus a marker recording its arguments, so a
later run may replace it but never overwrites a source it did not make.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from comcoco.errors import ComcocoError
from comcoco.io import write_text_atomic
from comcoco.progress import Progress
from comcoco.records import Annotation, Category, ImageInfo, Ref, Sentence
from comcoco.sources.demo.catalogue import STYLES, THEME_BY_NAME
from comcoco.sources.demo.drawing import ImageJob, draw_images
from comcoco.sources.demo.expressions import normalize_expression
from comcoco.sources.demo.planning import plan_splits, plan_themes
from comcoco.sources.format import COCO_CATEGORIES
from comcoco.sources.writer import write_source

DATASET = "refcoco+"
SPLIT_BY = "unc"
IMAGE_SUBDIR = Path("images/mscoco/images/train2014")
MIN_IMAGES = 4


@dataclass(frozen=True)
class DemoReport:
    """What ``generate_demo`` wrote, for the command line to report."""

    root: Path
    images: int
    annotations: int
    refs: int
    expressions: int
    splits: dict[str, int]  # refs per split
    clusters: dict[int, int]  # images per Table 10 cluster



def _coco_categories() -> tuple[Category, ...]:
    return tuple(COCO_CATEGORIES)


class DemoSourceError(ComcocoError):
    """The demo source cannot be written here (bad size, or OUT holds a source it did not make)."""


MARKER = "demo-source.json"
PARTIAL_MARKER = "demo-source.partial.json"  # a run is writing (or died writing) the source here
_IMAGE_NAME = re.compile(r"COCO_train2014_\d{12}\.jpg")


def _prepare_out(out: Path) -> set[str]:
    """Check OUT may be (re)written and return the demo image names a previous run left there.

    A previous demo source (it has the marker file, or the partial marker of a run that did not
    finish) is replaced; any other REFER source is refused, so a mistyped path can never overwrite
    real RefCOCO+ files.
    """
    if out.exists() and not out.is_dir():
        raise DemoSourceError(f"{out}: exists and is not a directory")
    data_dir = out / DATASET
    existing = [p for p in (data_dir / f"refs({SPLIT_BY}).p", data_dir / "instances.json") if p.exists()]
    ours = (out / MARKER).is_file() or (out / PARTIAL_MARKER).is_file()
    if existing and not ours:
        raise DemoSourceError(f"{existing[0]}: {out} already holds a source not written by demo-source; "
                              "choose another directory")
    image_dir = out / IMAGE_SUBDIR
    if not ours or not image_dir.is_dir():
        return set()
    return {p.name for p in image_dir.iterdir() if _IMAGE_NAME.fullmatch(p.name)}


def _begin(out: Path, arguments: dict) -> None:
    """Mark OUT as being written before any of its files changes, so a run that fails or is killed
    never leaves something that looks like a complete source.

    The partial marker is written first, so OUT is always recognisably ours (a rerun may replace
    it); then the marker of a finished source and the REFER files go, so nothing loads or reuses a
    mix of old records and new images.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / PARTIAL_MARKER, json.dumps(arguments, indent=2, sort_keys=True) + "\n")
    (out / MARKER).unlink(missing_ok=True)
    for name in (f"refs({SPLIT_BY}).p", "instances.json"):
        (out / DATASET / name).unlink(missing_ok=True)


def generate_demo(out: str | Path, n_images: int = 200, seed: int = 0, workers: int = 1,
                  progress: bool = False) -> DemoReport:
    """Write a complete REFER-format RefCOCO+ source at ``out`` and report what it holds.

    Layout: ``out/refcoco+/refs(unc).p``, ``out/refcoco+/instances.json`` and
    ``out/images/mscoco/images/train2014/COCO_train2014_<id>.jpg`` (the defaults of ``load_source``),
    plus ``out/demo-source.json`` recording the generator's arguments, written last. Rerunning over
    an earlier demo source replaces it (stale images removed); any other existing source is refused.
    ``workers`` processes draw the images (1: this process); the files are the same bytes for any
    number, so ``workers`` is not recorded.
    """
    if int(n_images) < MIN_IMAGES:
        raise DemoSourceError(f"the demo source needs at least {MIN_IMAGES} images (one per split), got {n_images}")
    if int(workers) < 1:
        raise DemoSourceError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    stale = _prepare_out(out)
    categories = _coco_categories()
    category_ids = {c.name: int(c.id) for c in categories}
    missing = sorted(name for name in STYLES if name not in category_ids)
    if missing:
        raise ValueError(f"COCO category table lacks demo categories: {', '.join(missing)}")

    marker = {"generator": "comcoco.sources.demo", "images": int(n_images), "seed": int(seed),
              "dataset": DATASET, "split_by": SPLIT_BY}
    _begin(out, marker)
    themes = plan_themes(int(n_images), int(seed))
    splits = plan_splits(themes, int(seed))
    image_dir = out / IMAGE_SUBDIR
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [ImageJob(index, theme, split) for index, (theme, split) in enumerate(zip(themes, splits, strict=True))]
    with Progress("demo images", len(jobs), unit="image", enabled=progress) as bar:
        drawn = draw_images(image_dir, int(seed), category_ids, jobs, workers=int(workers), progress=bar)

    images: list[ImageInfo] = []
    annotations: list[Annotation] = []
    refs: list[Ref] = []
    sent_id = 0
    clusters: dict[int, int] = {}
    split_counts = {"train": 0, "val": 0, "testA": 0, "testB": 0}
    for job, image in zip(jobs, drawn, strict=True):  # ref and sentence ids count in image order
        stale.discard(image.info.file_name)
        images.append(image.info)
        cluster = THEME_BY_NAME[job.theme].cluster
        clusters[cluster] = clusters.get(cluster, 0) + 1
        stem = image.info.file_name.rsplit(".", 1)[0]
        for obj in image.objects:
            annotations.append(obj.annotation)
            if not obj.referred:
                continue
            sentences = []
            for raw in obj.expressions:
                sent, tokens = normalize_expression(raw)
                sentences.append(Sentence(sent_id=sent_id, raw=raw, sent=sent, tokens=tokens))
                sent_id += 1
            ann = obj.annotation
            refs.append(Ref(ref_id=len(refs), ann_id=ann.ann_id, image_id=ann.image_id, category_id=ann.category_id,
                            split=job.split, sentences=tuple(sentences), file_name=f"{stem}_{ann.ann_id}.jpg"))
            split_counts[job.split] += 1

    info = {"description": "comcoco demo source: synthetic RefCOCO+-style scenes drawn by comcoco.sources.demo",
            "version": "1.0", "year": 2014, "contributor": "comcoco", "date_created": "2014-01-01",
            "demo_seed": int(seed), "demo_images": int(n_images)}
    licenses = [{"id": 1, "name": "CC0 1.0 (synthetic images)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    write_source(out, refs, images, annotations, categories, dataset=DATASET, split_by=SPLIT_BY,
                 info=info, licenses=licenses)
    for name in sorted(stale):
        (image_dir / name).unlink(missing_ok=True)
    write_text_atomic(out / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    (out / PARTIAL_MARKER).unlink(missing_ok=True)
    return DemoReport(root=out, images=len(images), annotations=len(annotations), refs=len(refs),
                      expressions=sent_id, splits=split_counts, clusters=dict(sorted(clusters.items())))


def generate_demo_source(out: str | Path, n_images: int = 200, seed: int = 0, workers: int = 1) -> Path:
    """Write the demo source at ``out`` (see ``generate_demo``) and return ``out``."""
    return generate_demo(out, n_images=n_images, seed=seed, workers=workers).root
