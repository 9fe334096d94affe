"""The REFER writer: ``refs(<split_by>).p`` (or ``.json``) and ``instances.json`` from typed records.

It emits exactly what the REFER toolkit and its ports (LAVT, CRIS) read: REFER's keys in REFER's
order, plain ints, floats and strings only, a protocol-2 pickle. Identical inputs give identical
bytes, and both files are written atomically.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comcoco.io import atomic_write, write_bytes_atomic
from comcoco.records import Annotation, Category, ImageInfo, Ref
from comcoco.sources.format import DEFAULT_DATASET, DEFAULT_SPLIT_BY, IMAGE_KEY_ORDER
from comcoco.sources.images import is_rle
from comcoco.sources.parse import IMAGE_CORE_KEYS, as_float, as_int


def _plain_int(value: Any, where: str) -> int:
    try:
        return as_int(value)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _plain_float(value: Any, where: str) -> float:
    try:
        out = as_float(value)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not math.isfinite(out):
        raise ValueError(f"{where}: non-finite number {out}")
    return out


def _plain_json(value: Any, where: str) -> Any:
    """Deep copy of ``value`` as plain JSON types (numpy scalars and tuples converted)."""
    kind = type(value)  # the plain types first, without the slower ABC checks below (a release's provenance)
    if kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite number {value}")
        return value
    if kind is dict:
        return {str(k): _plain_json(v, where) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_plain_json(v, where) for v in value]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _plain_float(value, where)
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, np.ndarray):
        return _plain_json(value.tolist(), where)
    if isinstance(value, Mapping):
        return {str(k): _plain_json(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v, where) for v in value]
    raise ValueError(f"{where}: cannot write a {type(value).__name__} to JSON")


def _polygon_json(poly: Any, where: str) -> list[float]:
    if isinstance(poly, np.ndarray):
        poly = poly.tolist()
    if not isinstance(poly, list | tuple):
        raise ValueError(f"{where}: a polygon must be a list of numbers, got {type(poly).__name__}")
    try:
        coords = [float(v) if type(v) is float or type(v) is int else as_float(v) for v in poly]
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not all(map(math.isfinite, coords)):
        raise ValueError(f"{where}: non-finite polygon coordinate")
    return coords


def _segmentation_json(seg: Any, where: str) -> Any:
    if is_rle(seg):
        counts = seg["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        elif not isinstance(counts, str):
            counts = [_plain_int(c, where) for c in counts]
        return {"counts": counts, "size": [_plain_int(v, where) for v in seg["size"]]}
    if isinstance(seg, list | tuple):
        if seg and all(is_rle(part) for part in seg):
            return [_segmentation_json(part, where) for part in seg]
        return [_polygon_json(poly, where) for poly in seg]
    raise ValueError(f"{where}: segmentation must be polygons or an RLE dict")


def _ref_file_name(ref: Ref, image: ImageInfo | None) -> str:
    if ref.file_name:
        return ref.file_name
    stem = Path(image.file_name).stem if image is not None else f"COCO_train2014_{ref.image_id:012d}"
    return f"{stem}_{ref.ann_id}.jpg"


def _ref_dict(ref: Ref, image: ImageInfo | None, intern: dict[str, str]) -> dict[str, Any]:
    where = f"ref {ref.ref_id}"

    def s(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
        return intern.setdefault(value, value)

    sentences = [
        {
            "tokens": [s(t) for t in sent.tokens],
            "raw": s(sent.raw),
            "sent_id": _plain_int(sent.sent_id, where),
            "sent": s(sent.sent),
        }
        for sent in ref.sentences
    ]
    return {
        "sent_ids": [d["sent_id"] for d in sentences],
        "file_name": s(_ref_file_name(ref, image)),
        "ann_id": _plain_int(ref.ann_id, where),
        "ref_id": _plain_int(ref.ref_id, where),
        "image_id": _plain_int(ref.image_id, where),
        "split": s(ref.split),
        "sentences": sentences,
        "category_id": _plain_int(ref.category_id, where),
    }


def _image_dict(image: ImageInfo) -> dict[str, Any]:
    where = f"image {image.image_id}"
    core = {
        "file_name": image.file_name,
        "height": _plain_int(image.height, where),
        "width": _plain_int(image.width, where),
        "id": _plain_int(image.image_id, where),
    }
    extra = {k: _plain_json(v, where) for k, v in image.extra.items() if k not in IMAGE_CORE_KEYS}
    out: dict[str, Any] = {}
    for key in IMAGE_KEY_ORDER:
        if key in core:
            out[key] = core[key]
        elif key in extra:
            out[key] = extra.pop(key)
    out.update(extra)
    return out


def _annotation_dict(ann: Annotation) -> dict[str, Any]:
    where = f"annotation {ann.ann_id}"
    return {
        "segmentation": _segmentation_json(ann.segmentation, where),
        "area": _plain_float(ann.area, where),
        "iscrowd": _plain_int(ann.iscrowd, where),
        "image_id": _plain_int(ann.image_id, where),
        "bbox": [_plain_float(v, where) for v in ann.bbox],
        "category_id": _plain_int(ann.category_id, where),
        "id": _plain_int(ann.ann_id, where),
    }


def _require_unique(ids: Iterable[int], what: str) -> None:
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"duplicate {what} {i}")
        seen.add(i)


def _require_resolved(refs: Sequence[Ref], image_by_id: Mapping[int, ImageInfo],
                      annotations: Sequence[Annotation]) -> None:
    """Every ref resolves to an annotation that lies on the ref's image."""
    ann_by_id = {a.ann_id: a for a in annotations}
    for ref in refs:
        ann = ann_by_id.get(ref.ann_id)
        if ann is None:
            raise ValueError(f"ref {ref.ref_id}: annotation {ref.ann_id} is not among the annotations")
        if ref.image_id not in image_by_id:
            raise ValueError(f"ref {ref.ref_id}: image {ref.image_id} is not among the images")
        if ann.image_id != ref.image_id:
            raise ValueError(f"ref {ref.ref_id}: annotation {ann.ann_id} is on image {ann.image_id}, not {ref.image_id}")


def _add_extras(payload: list[dict[str, Any]], refs: Sequence[Ref],
                ref_extras: Mapping[int, Mapping[str, Any]]) -> None:
    """Append each ref's extra keys after REFER's 8 (in place); none may replace a REFER key."""
    known = {r.ref_id for r in refs}
    for ref_id in ref_extras:
        if ref_id not in known:
            raise ValueError(f"ref_extras: ref {ref_id} is not among the refs")
    for d in payload:
        extra = ref_extras.get(d["ref_id"])
        if not extra:
            continue
        clash = sorted(set(extra) & set(d))
        if clash:
            raise ValueError(f"ref {d['ref_id']}: extra keys {clash} would replace REFER keys")
        for key in extra:
            d[str(key)] = _plain_json(extra[key], f"ref {d['ref_id']} extra {key!r}")


def _with_extras(d: dict[str, Any], extra: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``d`` with ``extra``'s keys appended; none may replace one of ``d``'s."""
    if not extra:
        return d
    clash = sorted(set(extra) & set(d))
    if clash:
        raise ValueError(f"{what} {d['id']}: extra keys {clash} would replace COCO keys")
    for key in extra:
        d[str(key)] = _plain_json(extra[key], f"{what} {d['id']} extra {key!r}")
    return d


def write_source(
    root: str | os.PathLike[str],
    refs: Sequence[Ref],
    images: Sequence[ImageInfo],
    annotations: Sequence[Annotation],
    categories: Sequence[Category],
    dataset: str = DEFAULT_DATASET,
    split_by: str = DEFAULT_SPLIT_BY,
    info: dict[str, Any] | None = None,
    licenses: list[Any] | None = None,
    *,
    refs_format: str = "pickle",
    strict: bool = True,
    ref_extras: Mapping[int, Mapping[str, Any]] | None = None,
    ann_extras: Mapping[int, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``ROOT/<dataset>/refs(<split_by>).p`` and ``instances.json``; returns ``ROOT/<dataset>``.

    Refs keep their given order and REFER's 8 keys in REFER's order, plain ints and strings only,
    pickled with protocol 2 (readable by Python 2 and 3). An empty ``Ref.file_name`` becomes
    ``<image stem>_<ann_id>.jpg``. ``refs_format="json"`` writes ``refs(<split_by>).json`` instead.
    With ``strict`` (default) every ref must resolve to an annotation on its image. Ids must be
    unique. Both files are written atomically and identical inputs give identical bytes.
    ``ref_extras`` maps a ref id to extra keys appended after REFER's 8 (plain JSON values only);
    REFER readers ignore them. ``ann_extras`` does the same for annotations, after COCO's 7 keys.
    """
    if refs_format not in ("pickle", "json"):
        raise ValueError(f"refs_format must be 'pickle' or 'json', got {refs_format!r}")
    _require_unique((r.ref_id for r in refs), "ref id")
    _require_unique((s.sent_id for r in refs for s in r.sentences), "sent id")
    _require_unique((i.image_id for i in images), "image id")
    _require_unique((a.ann_id for a in annotations), "annotation id")
    _require_unique((c.id for c in categories), "category id")
    image_by_id = {i.image_id: i for i in images}
    if strict:
        _require_resolved(refs, image_by_id, annotations)

    intern: dict[str, str] = {}
    payload = [_ref_dict(r, image_by_id.get(r.image_id), intern) for r in refs]
    if ref_extras:
        _add_extras(payload, refs, ref_extras)
    parts = {
        "info": _plain_json(info if info is not None else {}, "info"),
        "images": [_image_dict(i) for i in images],
        "licenses": _plain_json(licenses if licenses is not None else [], "licenses"),
        "annotations": None,  # streamed: one annotation's dict at a time, never the whole file in memory
        "categories": [
            {"supercategory": c.supercategory, "id": _plain_int(c.id, f"category {c.id}"), "name": c.name}
            for c in categories
        ],
    }

    out = Path(root) / dataset
    out.mkdir(parents=True, exist_ok=True)
    extras = ann_extras or {}
    # instances.json first: a bad annotation then stops the write before either file is replaced
    with atomic_write(out / "instances.json") as fh:
        for i, (key, value) in enumerate(parts.items()):
            fh.write(("{" if i == 0 else ",").encode("utf-8") + _json_bytes(key, end=b":"))
            if value is not None:
                fh.write(_json_bytes(value, end=b""))
                continue
            fh.write(b"[")
            for j, a in enumerate(annotations):
                fh.write((b"," if j else b"") + _json_bytes(
                    _with_extras(_annotation_dict(a), extras.get(a.ann_id), "annotation"), end=b""))
            fh.write(b"]")
        fh.write(b"}\n")
    pickle_file, json_file = out / f"refs({split_by}).p", out / f"refs({split_by}).json"
    if refs_format == "pickle":
        write_bytes_atomic(pickle_file, pickle.dumps(payload, protocol=2))
        stale = json_file
    else:
        write_bytes_atomic(json_file, _json_bytes(payload))
        stale = pickle_file
    stale.unlink(missing_ok=True)  # one refs file per split_by, so readers cannot pick a stale one
    return out


def _json_bytes(obj: Any, end: bytes = b"\n") -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8") + end
