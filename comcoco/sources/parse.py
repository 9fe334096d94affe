"""Raw REFER and COCO dicts into typed records, with errors that name the file and the record.

A malformed field is a :class:`SourceError` naming the file, the record's position and its id;
missing optional keys get REFER's defaults (``iscrowd`` 0, ``sent`` from ``raw``, ``tokens`` from
``sent``).
"""

from __future__ import annotations

import io
import json
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from comcoco.records import Annotation, Category, ImageInfo, Ref, Sentence
from comcoco.sources.format import SourceError, normalize_sentence, short
from comcoco.sources.images import is_rle_like

# orjson returns a float for an integer literal beyond 64 bits, where the standard library keeps
# the exact int. Such a literal has at least 19 digits, so a file holding a run of 19 or more
# digits is read by the standard library instead.
_LONG_RUN = 19
_ALL_DIGITS = np.uint64(0x0101010101010101)  # eight True bytes read as one uint64
_CHUNK = 1 << 22  # a multiple of 8, so blocks stay aligned across chunks


def _leading_true(rows: np.ndarray) -> np.ndarray:
    """Per row, how many True values come before the first False."""
    return np.where(rows.all(axis=1), rows.shape[1], rows.argmin(axis=1))


def _has_long_digit_run(data: bytes) -> bool:
    """Whether ``data`` holds 19 or more consecutive ASCII digits.

    Such a run covers a whole aligned 8-byte block, so numpy first finds the all-digit blocks (a
    few per image entry, from file names and URLs), then measures the run around each block from
    the 11 bytes on either side.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    size = len(buf)
    side = _LONG_RUN - 8
    shifted = np.empty(_CHUNK, np.uint8)  # reused: fresh temporaries would page-fault every chunk
    digits = np.empty(_CHUNK, np.bool_)
    for start in range(0, size, _CHUNK):
        chunk = buf[start:start + _CHUNK]
        n = len(chunk) - len(chunk) % 8
        np.subtract(chunk[:n], np.uint8(48), out=shifted[:n])
        np.less(shifted[:n], np.uint8(10), out=digits[:n])
        blocks = np.flatnonzero(digits[:n].view(np.uint64) == _ALL_DIGITS)
        if not len(blocks):
            continue
        pos = (start + blocks * 8)[:, None]
        before, after = pos + np.arange(-side, 0), pos + np.arange(8, 8 + side)
        digit_before = ((buf[np.clip(before, 0, size - 1)] - np.uint8(48)) < np.uint8(10)) & (before >= 0)
        digit_after = ((buf[np.clip(after, 0, size - 1)] - np.uint8(48)) < np.uint8(10)) & (after < size)
        if np.any(_leading_true(digit_before[:, ::-1]) + 8 + _leading_true(digit_after) >= _LONG_RUN):
            return True
    return False


def loads_json(data: bytes) -> Any:
    """Parse JSON bytes as the standard library does, with orjson where the result is the same.

    orjson is several times faster on a COCO ``instances.json``, but stricter (no NaN, Infinity or
    lone surrogates) and it turns integers beyond 64 bits into floats; bytes it refuses, or that
    hold a run of 19 digits, go to the standard library. Raises ``json.JSONDecodeError`` or
    ``UnicodeDecodeError`` as the standard library does.
    """
    if not _has_long_digit_run(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8") as fh:  # as open(path, encoding="utf-8")
        return json.load(fh)


def load_json(path: Path, data: bytes | None = None) -> Any:
    """Parse a JSON file (or its bytes, already read); errors name the file (and the line and
    column of malformed JSON)."""
    try:
        if data is None:
            data = path.read_bytes()
        return loads_json(data)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except RecursionError:
        raise SourceError(f"{path}: refused: values nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise SourceError(f"{path}: not readable JSON ({short(str(exc))})") from None


# --- parsing raw dicts into records ------------------------------------------------------------


_ID_BITS = 256  # ids are database keys; one of thousands of digits can only be hostile


def as_int(value: Any) -> int:
    if type(value) is int:  # the common case, without the slower ABC checks below
        if value.bit_length() > _ID_BITS:
            raise TypeError(f"an integer of {value.bit_length()} bits")
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not an id")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__} {short(value)}")


def as_float(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number, got {type(value).__name__} {short(value)}")
    return float(value)


def is_map(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def _field(raw: Mapping[str, Any], key: str, conv: Any, where: str) -> Any:
    if key not in raw:
        raise SourceError(f"{where}: missing key {short(key)}")
    try:
        return conv(raw[key])
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{where}: bad {short(key)}: {exc}") from None


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
    if isinstance(value, list | tuple) or is_rle_like(value):
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



# --- whole files at once -------------------------------------------------------------------------
#
# A RefCOCO+-size source holds about 200,000 annotations and 190,000 refs and sentences. The
# functions below take a fast path for entries of the usual shape (exact builtin types, every
# key present) and hand anything else to the per-record functions above, which build the same
# record or raise the error naming the entry; so the fast path changes speed, never results.
# Records are frozen dataclasses; the fast path fills the instance dict directly instead of
# calling the generated ``__init__`` (one ``object.__setattr__`` per field), which is most of
# the cost of building them.

_NUMBER = frozenset({int, float})
_SENTENCE_KEYS = frozenset({"tokens", "raw", "sent_id", "sent"})
_REF_KEYS = frozenset({"sent_ids", "file_name", "ann_id", "ref_id", "image_id", "split", "sentences", "category_id"})
_new = object.__new__


def annotation_records(raws: list[Any], file: Path) -> list[Annotation]:
    """Every entry of ``annotations``, in file order (see :func:`annotation_record`)."""
    out: list[Annotation] = []
    append = out.append
    for index, raw in enumerate(raws):
        if type(raw) is dict:
            get = raw.get
            ann_id, image_id, category_id = get("id"), get("image_id"), get("category_id")
            bbox, area, seg, crowd = get("bbox"), get("area"), get("segmentation"), get("iscrowd", 0)
            if (
                type(ann_id) is int and type(image_id) is int and type(category_id) is int and type(crowd) is int
                and type(area) in _NUMBER and type(seg) is list and type(bbox) is list and len(bbox) == 4
            ):  # fmt: skip
                x, y, w, h = bbox
                if type(x) in _NUMBER and type(y) in _NUMBER and type(w) in _NUMBER and type(h) in _NUMBER:
                    rec = _new(Annotation)
                    d = rec.__dict__
                    d["ann_id"] = ann_id
                    d["image_id"] = image_id
                    d["category_id"] = category_id
                    d["bbox"] = (float(x), float(y), float(w), float(h))
                    d["area"] = float(area)
                    d["iscrowd"] = crowd
                    d["segmentation"] = seg
                    append(rec)
                    continue
        append(annotation_record(raw, index, file))
    return out


def image_records(raws: list[Any], file: Path) -> list[ImageInfo]:
    """Every entry of ``images``, in file order (see :func:`image_record`)."""
    out: list[ImageInfo] = []
    append = out.append
    core = IMAGE_CORE_KEYS
    for index, raw in enumerate(raws):
        if type(raw) is dict:
            image_id, file_name, width, height = raw.get("id"), raw.get("file_name"), raw.get("width"), raw.get("height")
            if type(image_id) is int and type(file_name) is str and type(width) is int and type(height) is int:
                rec = _new(ImageInfo)
                d = rec.__dict__
                d["image_id"] = image_id
                d["file_name"] = file_name
                d["width"] = width
                d["height"] = height
                d["extra"] = {k: v for k, v in raw.items() if k not in core}
                append(rec)
                continue
        append(image_record(raw, index, file))
    return out


def category_records(raws: list[Any], file: Path) -> list[Category]:
    """Every entry of ``categories``, in file order (a few dozen: no fast path needed)."""
    return [category_record(raw, index, file) for index, raw in enumerate(raws)]


class SharedValues(Exception):
    """Raised by the fast path when a container is reached twice (the caller then bounds the tree)."""


class _Seen(set):
    pass


class _Anything(_Seen):
    """Admits every container again (once the tree was found within bounds)."""

    def __contains__(self, item: object) -> bool:
        return False

    def add(self, item: object) -> None:
        pass


def _once(seen: set[int], container: object) -> None:
    if id(container) in seen:
        raise SharedValues("a container is referenced more than once")
    seen.add(id(container))


def _fast_sentence(raw: Any, loose: list[Any], seen: _Seen) -> Sentence | None:
    """The sentence of a usual-shape entry, else None; values outside its known keys go to ``loose``."""
    if type(raw) is not dict:
        return None
    sent_id, sent, text, tokens = raw.get("sent_id"), raw.get("sent"), raw.get("raw"), raw.get("tokens")
    if type(sent_id) is not int or type(sent) is not str or type(text) is not str or type(tokens) is not list:
        return None
    _once(seen, raw)
    _once(seen, tokens)
    try:
        "".join(tokens)  # raises TypeError unless every token is a string
    except TypeError:
        return None
    if len(raw) != 4:
        loose.extend(item for item in raw.items() if item[0] not in _SENTENCE_KEYS)
    rec = _new(Sentence)
    d = rec.__dict__
    d["sent_id"] = sent_id
    d["raw"] = text
    d["sent"] = sent
    d["tokens"] = tuple(tokens)
    return rec


def prepare_ref_records(raws: list[Any], allow_shared: bool = False) -> tuple[list[Ref | None], list[Any]]:
    """Records of the refs of the usual shape (None for the others) and the values the fast path
    did not look at (extra keys and their values, ``sent_ids`` that differ from the sentences).

    Everything else in a record-built ref is a plain builtin (int, str, a list of strings), so a
    caller that must check a pickle for plain builtins only needs to check the loose values, and
    the whole tree only when some ref is None.
    """
    out: list[Ref | None] = []
    append = out.append
    loose: list[Any] = []
    # Containers already met: a pickle may reference one from many places, and a few kB could then make
    # this loop run for hours. The first shared one stops it (SharedValues); the caller bounds the whole
    # tree (comcoco.sources.safe_pickle.check_tree) and calls again with ``allow_shared``.
    seen: _Seen = _Seen() if not allow_shared else _Anything()
    for raw in raws:
        if type(raw) is not dict:
            append(None)
            continue
        _once(seen, raw)
        get = raw.get
        ref_id, ann_id, image_id, category_id = get("ref_id"), get("ann_id"), get("image_id"), get("category_id")
        split, sentences, file_name = get("split"), get("sentences"), get("file_name", "")
        if not (
            type(ref_id) is int and type(ann_id) is int and type(image_id) is int and type(category_id) is int
            and type(split) is str and type(file_name) is str and type(sentences) is list
        ):  # fmt: skip
            append(None)
            continue
        mark = len(loose)
        _once(seen, sentences)
        sents = [_fast_sentence(s, loose, seen) for s in sentences]
        if None in sents:
            del loose[mark:]
            append(None)
            continue
        if "sent_ids" in raw:
            sent_ids = raw["sent_ids"]
            if type(sent_ids) is not list or sent_ids != [s.sent_id for s in sents]:
                loose.append(sent_ids)
        if len(raw) != 8 or "sent_ids" not in raw or "file_name" not in raw:
            loose.extend(item for item in raw.items() if item[0] not in _REF_KEYS)
        rec = _new(Ref)
        d = rec.__dict__
        d["ref_id"] = ref_id
        d["ann_id"] = ann_id
        d["image_id"] = image_id
        d["category_id"] = category_id
        d["split"] = split
        d["sentences"] = tuple(sents)
        d["file_name"] = file_name
        append(rec)
    return out, loose


def ref_records(raws: list[Any], file: Path, prepared: list[Ref | None] | None = None) -> list[Ref]:
    """Every ref, in file order: the prepared records, and :func:`ref_record` for the rest."""
    if prepared is None:  # values built in Python: sharing is theirs to bound (read_refs bounds a file's)
        prepared, _ = prepare_ref_records(raws, allow_shared=True)
    return [rec if rec is not None else ref_record(raw, index, file)
            for index, (raw, rec) in enumerate(zip(raws, prepared, strict=True))]
