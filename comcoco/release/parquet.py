"""``parquet/<variant>/<split>-NNNNN.parquet``: one row per sample, images as Hugging Face ``Image`` structs.

``datasets.load_dataset("parquet", ...)`` decodes the images; every other column is plain Arrow. Each
file is one job (``ParquetPart``: its entries and their boxes, no pixels) that reads the sample's
files from the release folder, so the files of both variants are written side by side in a process
pool (``comcoco.pool``), byte for byte the same as one after the other.

The image columns hold PNG and JPEG bytes that zstd barely shrinks (6 % on fpng composites and
ground truths, for twice the writing time: docs/release.md), so they are stored uncompressed and
every other column zstd-compressed. Dictionary encoding stays on: samples of one composite share its
image bytes, which the dictionary stores once. A ComCOCO+ file with the same rows as ComCOCO's (no
spatial phrase among them) is that file under a second name (``ParquetWriting``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from comcoco.io import atomic_path
from comcoco.pool import INLINE, Jobs, WorkerPool
from comcoco.release.export import (
    DEFAULT_ROWS_PER_PARQUET,
    EFFECTS_DIR,
    GT_DIR,
    IMAGES_DIR,
    MASKS_DIR,
    PARQUET_DIR,
    VARIANTS,
    ExportError,
    ReleaseEntry,
    ref_provenance,
    variant_entries,
)
from comcoco.release.files import ExportedSample, copy_file
from comcoco.sources.refer import COCO_CATEGORIES

_IMAGE_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_PROV_FLOATS = ("s", "rx", "ry", "placement_score")
IMAGE_COLUMNS = ("image", "ground_truth", "mask", "effect_mask")
PARQUET_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("ref_id", pa.int64()),
    pa.field("image_id", pa.int64()),
    pa.field("ann_id", pa.int64()),
    *[pa.field(n, _IMAGE_STRUCT) for n in IMAGE_COLUMNS],
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
_HF_FEATURES = {n: {"_type": "Image"} for n in IMAGE_COLUMNS}
PARQUET_SCHEMA = PARQUET_SCHEMA.with_metadata(
    {b"huggingface": json.dumps({"info": {"features": _HF_FEATURES}}, sort_keys=True).encode()}
)
_CATEGORY_NAME = {c.id: c.name for c in COCO_CATEGORIES}


def _leaf_columns(schema: pa.Schema) -> list[str]:
    """Parquet's dotted path of every leaf column (``image.bytes``, ``bbox.list.element``, ...)."""
    out: list[str] = []

    def walk(path: str, typ: pa.DataType) -> None:
        if pa.types.is_struct(typ):
            for f in typ:
                walk(f"{path}.{f.name}", f.type)
        elif pa.types.is_list(typ):
            walk(f"{path}.list.element", typ.value_type)
        else:
            out.append(path)

    for f in schema:
        walk(f.name, f.type)
    return out


_IMAGE_BYTES = {f"{n}.bytes" for n in IMAGE_COLUMNS}
COMPRESSION = {c: "none" if c in _IMAGE_BYTES else "zstd" for c in _leaf_columns(PARQUET_SCHEMA)}
# No min/max statistics of image bytes: nothing filters on them, and they would copy images into the footer.
_STATISTICS = [c for c in _leaf_columns(PARQUET_SCHEMA) if c not in _IMAGE_BYTES]
# Dictionary-encoded: every plain column, and composites (shared by a composite's samples, stored once);
# never ground truths and masks, each of which belongs to one sample.
_DICTIONARY = [c for c in _leaf_columns(PARQUET_SCHEMA) if c not in _IMAGE_BYTES or c == "image.bytes"]
_PLAIN_SCHEMA = pa.schema([f for f in PARQUET_SCHEMA if f.name not in IMAGE_COLUMNS])
_MAX_CHUNK_BYTES = (1 << 31) - 1
ROW_GROUP_ROWS = 32  # rows per Parquet row group: a writer holds about 5x its images (100 rows: 0.26 GB)


@dataclass(frozen=True)
class ParquetPart:
    """One Parquet file to write: its release-relative path, variant and rows' entries and boxes."""

    rel: str
    variant: str
    entries: tuple[ReleaseEntry, ...]
    bboxes: tuple[tuple[float, float, float, float], ...]


def parquet_parts(entries: Sequence[ReleaseEntry], exported: Mapping[str, ExportedSample], variant: str,
                  rows_per_file: int = DEFAULT_ROWS_PER_PARQUET) -> list[ParquetPart]:
    """The variant's files: per non-empty split, ``rows_per_file`` samples each, in ref id order."""
    if rows_per_file < 1:
        raise ValueError(f"rows per Parquet file must be at least 1, got {rows_per_file}")
    by_split: dict[str, list[ReleaseEntry]] = {}
    for e in variant_entries(entries, variant):
        by_split.setdefault(e.split, []).append(e)
    parts = []
    for split in sorted(by_split):
        chunk_list = by_split[split]
        for i in range(0, len(chunk_list), rows_per_file):
            chosen = tuple(chunk_list[i:i + rows_per_file])
            parts.append(ParquetPart(rel=f"{PARQUET_DIR}/{variant}/{split}-{i // rows_per_file:05d}.parquet",
                                     variant=variant, entries=chosen,
                                     bboxes=tuple(exported[e.sample_id].bbox for e in chosen)))
    return parts


def _row(e: ReleaseEntry, bbox: Sequence[float], variant: str) -> dict[str, Any]:
    """A row's columns but the images."""
    exprs = e.expressions_for(variant)
    prov = ref_provenance(e)
    review = prov.get("review") or {}
    placement = prov.get("placement") or {}
    return {
        "sample_id": e.sample_id, "split": e.split, "ref_id": e.ref_id, "image_id": e.image_id,
        "ann_id": e.ann_id,
        "expressions": [x.raw for x in exprs], "sent_ids": [x.sent_id for x in exprs],
        "spatial": [x.spatial for x in exprs], "bbox": list(bbox),
        "category_id": e.category_id, "category": _CATEGORY_NAME.get(e.category_id, ""),
        "width": e.width, "height": e.height,
        "fg_ref_id": prov.get("fg_ref_id"), "fg_ann_id": prov.get("fg_ann_id"),
        "fg_image_id": prov.get("fg_image_id"), "bg_image_id": prov.get("bg_image_id"),
        "s": placement.get("s"), "rx": placement.get("rx"), "ry": placement.get("ry"),
        "placement_score": placement.get("score"),
        "review_decision": review.get("decision"), "reviewer": review.get("reviewer"),
        "provenance": json.dumps(prov, sort_keys=True),
    }


def _image_files(e: ReleaseEntry) -> dict[str, str]:
    """Each image column's file of a sample, release-relative."""
    return {"image": f"{IMAGES_DIR}/{e.image_file_name}", "ground_truth": f"{GT_DIR}/{e.gt_file_name}",
            "mask": f"{MASKS_DIR}/{e.mask_file_name}", "effect_mask": f"{EFFECTS_DIR}/{e.effect_file_name}"}


def _image_column(release: Path, rels: Sequence[str]) -> pa.ChunkedArray:
    """``{bytes, path}`` structs of the files ``rels``, each read straight into one Arrow buffer (no
    Python ``bytes`` in between, which would copy every image twice more). A chunk holds at most 2 GiB,
    the most a ``binary`` column's 32-bit offsets can address."""
    sizes = [(release / rel).stat().st_size for rel in rels]
    for rel, size in zip(rels, sizes, strict=True):
        if size > _MAX_CHUNK_BYTES:
            raise ExportError(f"{release / rel}: {size} bytes, more than a Parquet binary value can hold")
    chunks, start = [], 0
    while start < len(rels) or not chunks:
        end, total = start, 0
        while end < len(rels) and (end == start or total + sizes[end] <= _MAX_CHUNK_BYTES):
            total += sizes[end]
            end += 1
        offsets = np.zeros(end - start + 1, dtype=np.int32)
        np.cumsum(sizes[start:end], out=offsets[1:])
        data = pa.allocate_buffer(total)
        view, pos = memoryview(data), 0
        for rel, size in zip(rels[start:end], sizes[start:end], strict=True):
            with open(release / rel, "rb", buffering=0) as fh:
                if fh.readinto(view[pos:pos + size]) != size:
                    raise ExportError(f"{release / rel}: changed size while it was read into a Parquet file")
            pos += size
        blobs = pa.Array.from_buffers(pa.binary(), end - start, [None, pa.py_buffer(offsets), data])
        chunks.append(pa.StructArray.from_arrays([blobs, pa.array(rels[start:end], pa.string())],
                                                 fields=list(_IMAGE_STRUCT)))
        start = end
    return pa.chunked_array(chunks, _IMAGE_STRUCT)


def parquet_table(release: str | os.PathLike[str], part: ParquetPart, start: int = 0, stop: int | None = None) -> pa.Table:
    """Rows ``start:stop`` of one Parquet file, the images read from the sample files under ``release``."""
    release = Path(release)
    entries, bboxes = part.entries[start:stop], part.bboxes[start:stop]
    plain = pa.Table.from_pylist([_row(e, bbox, part.variant) for e, bbox in zip(entries, bboxes, strict=True)],
                                 schema=_PLAIN_SCHEMA)
    files = [_image_files(e) for e in entries]
    columns = [_image_column(release, [f[c.name] for f in files]) if c.name in IMAGE_COLUMNS else plain.column(c.name)
               for c in PARQUET_SCHEMA]
    return pa.Table.from_arrays(columns, schema=PARQUET_SCHEMA)


def write_parquet_part(release: str | os.PathLike[str], part: ParquetPart) -> str:
    """Write one Parquet file from the sample files under ``release``; its relative path.

    Row group by row group (``ROW_GROUP_ROWS``), so one group's images are in memory at a time, not the
    file's (a 1,000-row file holds about 600 MB of images, and the writer held them twice). Written
    beside its name and renamed, without an fsync: the release builder flushes the staging folder once
    before publishing it.
    """
    with atomic_path(Path(release) / part.rel, sync=False) as tmp, \
            pq.ParquetWriter(str(tmp), PARQUET_SCHEMA, compression=COMPRESSION, write_statistics=_STATISTICS,
                             use_dictionary=_DICTIONARY) as writer:
        for start in range(0, len(part.entries), ROW_GROUP_ROWS):
            writer.write_table(parquet_table(release, part, start, start + ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
    return part.rel


def same_rows(a: ParquetPart, b: ParquetPart) -> bool:
    """Whether two parts' files are byte for byte the same: the same samples, boxes and expressions (a
    row holds no variant name, and its image paths are the variants' shared files)."""
    return (len(a.entries) == len(b.entries) and a.bboxes == b.bboxes
            and all(x.sample_id == y.sample_id and x.expressions_for(a.variant) == y.expressions_for(b.variant)
                    for x, y in zip(a.entries, b.entries, strict=True)))


@dataclass
class ParquetWriting:
    """Every variant's Parquet files, being written: one pool job per distinct file; a part whose rows
    equal a part of another variant (ComCOCO+ before spatial phrases are added, or where none are) gets
    that file's bytes by a hard link once it is written (a copy where the filesystem has no links).

    Samples carry their images in every variant's file, so this halves the Parquet bytes a release writes
    and stores whenever the variants agree; the files stay separate names, each listed and hashed by
    the manifest, and the dist shards hold each as a regular file.
    """

    release: Path
    parts: list[ParquetPart]
    source: list[int]  # per part: the part whose job writes its bytes (itself, or an equal earlier part)
    writers: list[int]  # the parts written by a job, in job order
    jobs: Jobs

    def results(self, rows_done: Callable[[int], None] = lambda n: None) -> list[str]:
        """Wait for the files; each part's release-relative path, in ``parts`` order."""
        self.jobs.results(lambda k: rows_done(len(self.parts[self.writers[k]].entries)))
        for i, part in enumerate(self.parts):
            j = self.source[i]
            if j != i:
                _link_or_copy(self.release / self.parts[j].rel, self.release / part.rel)
                rows_done(len(part.entries))
        return [p.rel for p in self.parts]


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # no hard links here (or too many): the same bytes as a file of its own
        copy_file(src, dst)


def start_parquet(release: str | os.PathLike[str], entries: Sequence[ReleaseEntry],
                  exported: Mapping[str, ExportedSample], rows_per_file: int = DEFAULT_ROWS_PER_PARQUET,
                  pool: WorkerPool = INLINE) -> ParquetWriting:
    """Every variant's Parquet files, the distinct ones started now as pool jobs (see ``ParquetWriting``)."""
    parts = [p for variant in VARIANTS for p in parquet_parts(entries, exported, variant, rows_per_file)]
    by_name: dict[str, int] = {}  # a split's NNNNN-th file of the first variant, by its name in the variant
    source = []
    for i, part in enumerate(parts):
        name = part.rel.rsplit("/", 1)[1]
        j = by_name.setdefault(name, i)
        source.append(j if j != i and same_rows(parts[j], part) else i)
    # Largest files first: a pool takes jobs in order, and a large file started last would be written
    # alone while the other workers wait (a demo release's one train file holds most of its rows).
    writers = sorted(set(source), key=lambda i: (-len(parts[i].entries), i))

    def lost(k: int) -> Exception:
        return ExportError(f"{Path(release) / parts[writers[k]].rel}: a worker process ended abruptly (killed, "
                           f"or out of memory) while writing it")

    jobs = Jobs(pool, write_parquet_part, [(str(release), parts[i]) for i in writers], lost)
    return ParquetWriting(Path(release), parts, source, writers, jobs)
