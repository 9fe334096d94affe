"""Raw REFER and COCO dicts into typed records, with errors that name the file and the record.

A malformed field is a :class:`SourceError` naming the file, the record's position and its id;
missing optional keys get REFER's defaults (``iscrowd`` 0, ``sent`` from ``raw``, ``tokens`` from
``sent``).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comcoco.records import Annotation, Category, ImageInfo, Ref, Sentence
from comcoco.sources.format import SourceError, normalize_sentence
from comcoco.sources.images import is_rle


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


# --- parsing raw dicts into records ------------------------------------------------------------


def as_int(value: Any) -> int:
    if type(value) is int:  # the common case, without the slower ABC checks below
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not an id")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")


def as_float(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def is_map(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def _field(raw: Mapping[str, Any], key: str, conv: Any, where: str) -> Any:
    if key not in raw:
        raise SourceError(f"{where}: missing key {key!r}")
    try:
        return conv(raw[key])
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{where}: bad {key!r}: {exc}") from None


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _sentence_record(raw: Any, where: str) -> Sentence:
    if not is_map(raw):
        raise SourceError(f"{where}: a sentence must be a dict, got {type(raw).__name__}")
    sent_id = _field(raw, "sent_id", as_int, where)
    where = f"{where} (sent_id {sent_id})"
    if "sent" in raw:
        sent = _field(raw, "sent", _as_str, where)
    elif "raw" in raw:
        sent = normalize_sentence(_field(raw, "raw", _as_str, where))[0]
    else:
        raise SourceError(f"{where}: missing key 'sent'")
    raw_text = _field(raw, "raw", _as_str, where) if "raw" in raw else sent
    if "tokens" in raw:
        tokens = raw["tokens"]
        if not isinstance(tokens, list | tuple) or not all(isinstance(t, str) for t in tokens):
            raise SourceError(f"{where}: bad 'tokens': expected a list of strings")
        tokens = tuple(tokens)
    else:
        tokens = tuple(sent.split())
    return Sentence(sent_id=sent_id, raw=raw_text, sent=sent, tokens=tokens)


def ref_record(raw: Any, index: int, file: Path) -> Ref:
    where = f"{file}: ref #{index}"
    if not is_map(raw):
        raise SourceError(f"{where}: a ref must be a dict, got {type(raw).__name__}")
    ref_id = _field(raw, "ref_id", as_int, where)
    where = f"{where} (ref_id {ref_id})"
    sentences = raw.get("sentences")
    if not isinstance(sentences, list | tuple):
        raise SourceError(f"{where}: 'sentences' must be a list")
    return Ref(
        ref_id=ref_id,
        ann_id=_field(raw, "ann_id", as_int, where),
        image_id=_field(raw, "image_id", as_int, where),
        category_id=_field(raw, "category_id", as_int, where),
        split=_field(raw, "split", _as_str, where),
        sentences=tuple(_sentence_record(s, f"{where} sentence #{i}") for i, s in enumerate(sentences)),
        file_name=_field(raw, "file_name", _as_str, where) if "file_name" in raw else "",
    )


def _bbox(value: Any) -> tuple[float, float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise TypeError("expected [x, y, w, h]")
    x, y, w, h = (as_float(v) for v in value)
    return (x, y, w, h)


def _segmentation(value: Any) -> Any:
    if isinstance(value, list | tuple) or is_rle(value):
        return value
    raise TypeError(f"expected polygons or an RLE dict, got {type(value).__name__}")


def annotation_record(raw: Any, index: int, file: Path) -> Annotation:
    where = f"{file}: annotations[{index}]"
    if not is_map(raw):
        raise SourceError(f"{where}: an annotation must be a dict, got {type(raw).__name__}")
    ann_id = _field(raw, "id", as_int, where)
    where = f"{where} (id {ann_id})"
    return Annotation(
        ann_id=ann_id,
        image_id=_field(raw, "image_id", as_int, where),
        category_id=_field(raw, "category_id", as_int, where),
        bbox=_field(raw, "bbox", _bbox, where),
        area=_field(raw, "area", as_float, where),
        iscrowd=_field(raw, "iscrowd", as_int, where) if "iscrowd" in raw else 0,
        segmentation=_field(raw, "segmentation", _segmentation, where),
    )


IMAGE_CORE_KEYS = frozenset({"id", "file_name", "width", "height"})


def image_record(raw: Any, index: int, file: Path) -> ImageInfo:
    where = f"{file}: images[{index}]"
    if not is_map(raw):
        raise SourceError(f"{where}: an image must be a dict, got {type(raw).__name__}")
    image_id = _field(raw, "id", as_int, where)
    where = f"{where} (id {image_id})"
    return ImageInfo(
        image_id=image_id,
        file_name=_field(raw, "file_name", _as_str, where),
        width=_field(raw, "width", as_int, where),
        height=_field(raw, "height", as_int, where),
        extra={k: v for k, v in raw.items() if k not in IMAGE_CORE_KEYS},
    )


def category_record(raw: Any, index: int, file: Path) -> Category:
    where = f"{file}: categories[{index}]"
    if not is_map(raw):
        raise SourceError(f"{where}: a category must be a dict, got {type(raw).__name__}")
    cid = _field(raw, "id", as_int, where)
    where = f"{where} (id {cid})"
    sup = _field(raw, "supercategory", _as_str, where) if "supercategory" in raw else ""
    return Category(id=cid, name=_field(raw, "name", _as_str, where), supercategory=sup)

