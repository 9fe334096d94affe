"""REFER-format sources: a safe reader with REFER's index API, typed records, and a writer.

The layout and semantics follow the REFER toolkit (``refs(<split_by>).p`` + ``instances.json``), so
loaders written for RefCOCO+ keep working, but the reader

* unpickles with a restricted unpickler that can only build plain builtins (no code ever runs),
* accepts ``refs(<split_by>).json`` as an equivalent of the pickle,
* never crashes on dangling references: they are recorded in ``problems`` and left out of
  ``refToAnn`` / ``annToRef``,
* fixes REFER's crash bugs (``getRefIds(image_ids=...)``, numpy ids in ``load*``, ``sys.exit`` on an
  unknown split, RLE annotations in ``getMask``).

The writer emits exactly what the REFER toolkit and its ports (LAVT, CRIS) read.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import pickle
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from comcoco.errors import ComcocoError
from comcoco.io import write_bytes_atomic
from comcoco.records import Annotation, Category, ImageInfo, Problem, Ref, Sentence
from comcoco.sources.images import is_rle, segmentation_rles

DEFAULT_DATASET = "refcoco+"
DEFAULT_SPLIT_BY = "unc"
DEFAULT_IMAGE_SUBDIR = Path("images") / "mscoco" / "images" / "train2014"

REF_KEYS: tuple[str, ...] = (
    "sent_ids",
    "file_name",
    "ann_id",
    "ref_id",
    "image_id",
    "split",
    "sentences",
    "category_id",
)
SENTENCE_KEYS: tuple[str, ...] = ("tokens", "raw", "sent_id", "sent")
INSTANCES_KEYS: tuple[str, ...] = ("info", "images", "licenses", "annotations", "categories")
IMAGE_KEY_ORDER: tuple[str, ...] = (
    "license",
    "file_name",
    "coco_url",
    "height",
    "width",
    "date_captured",
    "flickr_url",
    "id",
)
ANNOTATION_KEY_ORDER: tuple[str, ...] = ("segmentation", "area", "iscrowd", "image_id", "bbox", "category_id", "id")

# Split names REFER's getRefIds understands; anything else raises ValueError instead of sys.exit().
KNOWN_SPLITS: tuple[str, ...] = ("train", "val", "test", "testA", "testB", "testC", "testAB", "testBC", "testAC")


class SourceError(ComcocoError):
    """A source that cannot be used at all; the message names the offending file."""


class UnsafePickleError(SourceError):
    """A refs pickle that would build or call something other than plain builtins."""


# --- COCO categories ---------------------------------------------------------------------------

COCO_CATEGORIES: tuple[Category, ...] = tuple(
    Category(cid, name, sup)
    for cid, name, sup in (
        (1, "person", "person"),
        (2, "bicycle", "vehicle"),
        (3, "car", "vehicle"),
        (4, "motorcycle", "vehicle"),
        (5, "airplane", "vehicle"),
        (6, "bus", "vehicle"),
        (7, "train", "vehicle"),
        (8, "truck", "vehicle"),
        (9, "boat", "vehicle"),
        (10, "traffic light", "outdoor"),
        (11, "fire hydrant", "outdoor"),
        (13, "stop sign", "outdoor"),
        (14, "parking meter", "outdoor"),
        (15, "bench", "outdoor"),
        (16, "bird", "animal"),
        (17, "cat", "animal"),
        (18, "dog", "animal"),
        (19, "horse", "animal"),
        (20, "sheep", "animal"),
        (21, "cow", "animal"),
        (22, "elephant", "animal"),
        (23, "bear", "animal"),
        (24, "zebra", "animal"),
        (25, "giraffe", "animal"),
        (27, "backpack", "accessory"),
        (28, "umbrella", "accessory"),
        (31, "handbag", "accessory"),
        (32, "tie", "accessory"),
        (33, "suitcase", "accessory"),
        (34, "frisbee", "sports"),
        (35, "skis", "sports"),
        (36, "snowboard", "sports"),
        (37, "sports ball", "sports"),
        (38, "kite", "sports"),
        (39, "baseball bat", "sports"),
        (40, "baseball glove", "sports"),
        (41, "skateboard", "sports"),
        (42, "surfboard", "sports"),
        (43, "tennis racket", "sports"),
        (44, "bottle", "kitchen"),
        (46, "wine glass", "kitchen"),
        (47, "cup", "kitchen"),
        (48, "fork", "kitchen"),
        (49, "knife", "kitchen"),
        (50, "spoon", "kitchen"),
        (51, "bowl", "kitchen"),
        (52, "banana", "food"),
        (53, "apple", "food"),
        (54, "sandwich", "food"),
        (55, "orange", "food"),
        (56, "broccoli", "food"),
        (57, "carrot", "food"),
        (58, "hot dog", "food"),
        (59, "pizza", "food"),
        (60, "donut", "food"),
        (61, "cake", "food"),
        (62, "chair", "furniture"),
        (63, "couch", "furniture"),
        (64, "potted plant", "furniture"),
        (65, "bed", "furniture"),
        (67, "dining table", "furniture"),
        (70, "toilet", "furniture"),
        (72, "tv", "electronic"),
        (73, "laptop", "electronic"),
        (74, "mouse", "electronic"),
        (75, "remote", "electronic"),
        (76, "keyboard", "electronic"),
        (77, "cell phone", "electronic"),
        (78, "microwave", "appliance"),
        (79, "oven", "appliance"),
        (80, "toaster", "appliance"),
        (81, "sink", "appliance"),
        (82, "refrigerator", "appliance"),
        (84, "book", "indoor"),
        (85, "clock", "indoor"),
        (86, "vase", "indoor"),
        (87, "scissors", "indoor"),
        (88, "teddy bear", "indoor"),
        (89, "hair drier", "indoor"),
        (90, "toothbrush", "indoor"),
    )
)


# --- expressions -------------------------------------------------------------------------------

_APOSTROPHES = frozenset("'\u2019\u2018`")


def normalize_sentence(raw: str) -> tuple[str, tuple[str, ...]]:
    """REFER's ``sent`` and ``tokens`` for a raw expression: lower-case, punctuation stripped.

    Apostrophes are deleted ("man's" -> "mans", as in RefCOCO); every other punctuation or ASCII
    symbol character separates words. ``tokens`` is ``sent.split()``.
    """
    chars: list[str] = []
    for ch in raw.lower():
        if ch in _APOSTROPHES:
            continue
        if ch in string.punctuation or unicodedata.category(ch).startswith("P"):
            chars.append(" ")
        else:
            chars.append(ch)
    tokens = tuple("".join(chars).split())
    return " ".join(tokens), tokens


# --- safe unpickling ---------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside the unpickler; carries what the pickle asked for."""


class _PlainUnpickler(pickle.Unpickler):
    """Resolves no global and no persistent id: only builtin opcodes can produce objects."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"it asks for the global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it uses a persistent id")


_PLAIN_TYPES = frozenset({dict, list, tuple, str, int, float, bool, type(None)})


def _check_plain(obj: Any, path: Path) -> None:
    """Refuse any object in the tree that is not a plain builtin (e.g. bytes, set, frozenset).

    Containers are visited once each, so shared or self-referencing ones cannot make this loop.
    """
    stack = [obj]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind not in _PLAIN_TYPES:
            raise UnsafePickleError(
                f"{path}: refused: the pickle holds a {kind.__name__}; only dict, list, tuple, str, "
                "int, float, bool and None are allowed"
            )
        if kind is dict or kind is list or kind is tuple:
            if id(item) in seen:
                continue
            seen.add(id(item))
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)


def load_plain_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` admitting only plain builtins; nothing from the file is ever called.

    Python 2 byte strings are decoded as UTF-8, or as Latin-1 when they are not valid UTF-8.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    obj: Any = None
    for encoding in ("utf-8", "latin-1"):
        try:
            obj = _PlainUnpickler(io.BytesIO(data), fix_imports=True, encoding=encoding).load()
            break
        except _Refused as exc:
            raise UnsafePickleError(f"{path}: refused: {exc}; nothing from the pickle was run") from None
        except UnicodeDecodeError:
            continue
        except RecursionError:
            raise SourceError(f"{path}: not a readable pickle (nested too deeply)") from None
        except Exception as exc:  # a malformed stream can raise almost anything; none of it ran code
            raise SourceError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    _check_plain(obj, path)
    return obj


def _load_json(path: Path) -> Any:
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


def _as_int(value: Any) -> int:
    if type(value) is int:  # the common case, without the slower ABC checks below
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not an id")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")


def _as_float(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def _is_map(value: Any) -> bool:
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
    if not _is_map(raw):
        raise SourceError(f"{where}: a sentence must be a dict, got {type(raw).__name__}")
    sent_id = _field(raw, "sent_id", _as_int, where)
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


def _ref_record(raw: Any, index: int, file: Path) -> Ref:
    where = f"{file}: ref #{index}"
    if not _is_map(raw):
        raise SourceError(f"{where}: a ref must be a dict, got {type(raw).__name__}")
    ref_id = _field(raw, "ref_id", _as_int, where)
    where = f"{where} (ref_id {ref_id})"
    sentences = raw.get("sentences")
    if not isinstance(sentences, list | tuple):
        raise SourceError(f"{where}: 'sentences' must be a list")
    return Ref(
        ref_id=ref_id,
        ann_id=_field(raw, "ann_id", _as_int, where),
        image_id=_field(raw, "image_id", _as_int, where),
        category_id=_field(raw, "category_id", _as_int, where),
        split=_field(raw, "split", _as_str, where),
        sentences=tuple(_sentence_record(s, f"{where} sentence #{i}") for i, s in enumerate(sentences)),
        file_name=_field(raw, "file_name", _as_str, where) if "file_name" in raw else "",
    )


def _bbox(value: Any) -> tuple[float, float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise TypeError("expected [x, y, w, h]")
    x, y, w, h = (_as_float(v) for v in value)
    return (x, y, w, h)


def _segmentation(value: Any) -> Any:
    if isinstance(value, list | tuple) or is_rle(value):
        return value
    raise TypeError(f"expected polygons or an RLE dict, got {type(value).__name__}")


def _annotation_record(raw: Any, index: int, file: Path) -> Annotation:
    where = f"{file}: annotations[{index}]"
    if not _is_map(raw):
        raise SourceError(f"{where}: an annotation must be a dict, got {type(raw).__name__}")
    ann_id = _field(raw, "id", _as_int, where)
    where = f"{where} (id {ann_id})"
    return Annotation(
        ann_id=ann_id,
        image_id=_field(raw, "image_id", _as_int, where),
        category_id=_field(raw, "category_id", _as_int, where),
        bbox=_field(raw, "bbox", _bbox, where),
        area=_field(raw, "area", _as_float, where),
        iscrowd=_field(raw, "iscrowd", _as_int, where) if "iscrowd" in raw else 0,
        segmentation=_field(raw, "segmentation", _segmentation, where),
    )


_IMAGE_CORE = frozenset({"id", "file_name", "width", "height"})


def _image_record(raw: Any, index: int, file: Path) -> ImageInfo:
    where = f"{file}: images[{index}]"
    if not _is_map(raw):
        raise SourceError(f"{where}: an image must be a dict, got {type(raw).__name__}")
    image_id = _field(raw, "id", _as_int, where)
    where = f"{where} (id {image_id})"
    return ImageInfo(
        image_id=image_id,
        file_name=_field(raw, "file_name", _as_str, where),
        width=_field(raw, "width", _as_int, where),
        height=_field(raw, "height", _as_int, where),
        extra={k: v for k, v in raw.items() if k not in _IMAGE_CORE},
    )


def _category_record(raw: Any, index: int, file: Path) -> Category:
    where = f"{file}: categories[{index}]"
    if not _is_map(raw):
        raise SourceError(f"{where}: a category must be a dict, got {type(raw).__name__}")
    cid = _field(raw, "id", _as_int, where)
    where = f"{where} (id {cid})"
    sup = _field(raw, "supercategory", _as_str, where) if "supercategory" in raw else ""
    return Category(id=cid, name=_field(raw, "name", _as_str, where), supercategory=sup)


# --- id arguments ------------------------------------------------------------------------------


def _id_list(value: Any) -> list[Any]:
    """REFER's "list or single id" arguments, also accepting numpy ints, tuples, ranges and arrays."""
    if value is None:
        return []
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value)]
    if isinstance(value, str | bytes):
        raise TypeError(f"expected an id or a list of ids, got {type(value).__name__} {value!r}")
    if isinstance(value, np.ndarray):
        return [int(v) for v in value.ravel()]
    if isinstance(value, Iterable):
        return [int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in value]
    raise TypeError(f"expected an id or a list of ids, got {type(value).__name__}")


def _single_id(value: Any) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"expected one integer id, got {type(value).__name__} {value!r}")


def _lookup(table: Mapping[int, Any], key: Any, what: str) -> Any:
    try:
        return table[key]
    except KeyError:
        raise KeyError(f"unknown {what} {key!r}") from None
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(key).__name__}") from None


# --- the source --------------------------------------------------------------------------------


class ReferSource:
    """A loaded REFER-format source: REFER's index and methods plus typed records.

    Built by :func:`load_source`. Raw dicts (``Refs``, ``Anns``, ``Imgs``, ...) are exactly what the
    files hold; the typed records (``refs()``, ``annotations()``, ...) are built once here.
    """

    def __init__(
        self,
        refs: list[Any],
        instances: Mapping[str, Any],
        *,
        root: Path,
        dataset: str,
        split_by: str,
        image_dir: Path,
        refs_file: Path,
        instances_file: Path,
    ):
        self.dataset = dataset
        self.split_by = split_by
        self.refs_file = refs_file
        self.instances_file = instances_file
        self.ROOT_DIR = str(root)
        self.DATA_DIR = str(root / dataset)
        self.IMAGE_DIR = str(image_dir)
        self.data: dict[str, Any] = {
            "dataset": dataset,
            "refs": refs,
            "images": instances["images"],
            "annotations": instances["annotations"],
            "categories": instances["categories"],
        }
        self.info: Any = instances.get("info", {})
        self.licenses: Any = instances.get("licenses", [])
        self.problems: list[Problem] = []
        self._create_index()

    # -- index --------------------------------------------------------------------------------

    def _problem(self, kind: str, file: Path, id_: int | str | None, message: str) -> None:
        self.problems.append(Problem(kind=kind, file=str(file), id=id_, message=message))

    def _create_index(self) -> None:
        inst = self.instances_file
        self._images = [_image_record(r, i, inst) for i, r in enumerate(self.data["images"])]
        self._annotations = [_annotation_record(r, i, inst) for i, r in enumerate(self.data["annotations"])]
        self._categories = [_category_record(r, i, inst) for i, r in enumerate(self.data["categories"])]
        self._refs = [_ref_record(r, i, self.refs_file) for i, r in enumerate(self.data["refs"])]

        self.Imgs: dict[int, dict[str, Any]] = {}
        self._image_by_id: dict[int, ImageInfo] = {}
        for raw, rec in zip(self.data["images"], self._images, strict=True):
            if rec.image_id in self.Imgs:
                self._problem("duplicate_image_id", inst, rec.image_id, f"image id {rec.image_id} appears twice")
            self.Imgs[rec.image_id] = raw
            self._image_by_id[rec.image_id] = rec

        self.Cats: dict[int, str] = {}
        self._category_by_id: dict[int, Category] = {}
        for rec in self._categories:
            if rec.id in self.Cats:
                self._problem("duplicate_category_id", inst, rec.id, f"category id {rec.id} appears twice")
            self.Cats[rec.id] = rec.name
            self._category_by_id[rec.id] = rec

        self.Anns: dict[int, dict[str, Any]] = {}
        self.imgToAnns: dict[int, list[dict[str, Any]]] = {}
        self._annotation_by_id: dict[int, Annotation] = {}
        for raw, rec in zip(self.data["annotations"], self._annotations, strict=True):
            if rec.ann_id in self.Anns:
                self._problem("duplicate_annotation_id", inst, rec.ann_id, f"annotation id {rec.ann_id} appears twice")
            if rec.image_id not in self.Imgs:
                self._problem(
                    "orphan_annotation", inst, rec.ann_id,
                    f"annotation {rec.ann_id} belongs to image {rec.image_id}, which is not in images",
                )
            self.Anns[rec.ann_id] = raw
            self._annotation_by_id[rec.ann_id] = rec
            self.imgToAnns.setdefault(rec.image_id, []).append(raw)

        refs_file = self.refs_file
        self.Refs: dict[int, dict[str, Any]] = {}
        self.imgToRefs: dict[int, list[dict[str, Any]]] = {}
        self.refToAnn: dict[int, dict[str, Any]] = {}
        self.annToRef: dict[int, dict[str, Any]] = {}
        self.catToRefs: dict[int, list[dict[str, Any]]] = {}
        self.Sents: dict[int, dict[str, Any]] = {}
        self.sentToRef: dict[int, dict[str, Any]] = {}
        self.sentToTokens: dict[int, list[str]] = {}
        self._ref_by_id: dict[int, Ref] = {}
        for raw, rec in zip(self.data["refs"], self._refs, strict=True):
            rid = rec.ref_id
            if rid in self.Refs:
                self._problem("duplicate_ref_id", refs_file, rid, f"ref id {rid} appears twice")
            self.Refs[rid] = raw
            self._ref_by_id[rid] = rec
            self.imgToRefs.setdefault(rec.image_id, []).append(raw)
            self.catToRefs.setdefault(rec.category_id, []).append(raw)
            if rec.image_id not in self.Imgs:
                self._problem("missing_image", refs_file, rid, f"ref {rid} points to image {rec.image_id}, not in instances.json")
            if rec.category_id not in self.Cats:
                self._problem("unknown_category", refs_file, rid, f"ref {rid} has category {rec.category_id}, not in instances.json")
            ann = self._annotation_by_id.get(rec.ann_id)
            if ann is None:
                self._problem(
                    "missing_annotation", refs_file, rid,
                    f"ref {rid} points to annotation {rec.ann_id}, not in instances.json",
                )
            else:
                self.refToAnn[rid] = self.Anns[rec.ann_id]
                self.annToRef[rec.ann_id] = raw
                if ann.image_id != rec.image_id:
                    self._problem(
                        "annotation_image_mismatch", refs_file, rid,
                        f"ref {rid} says image {rec.image_id} but annotation {ann.ann_id} is on image {ann.image_id}",
                    )
                if ann.category_id != rec.category_id:
                    self._problem(
                        "category_mismatch", refs_file, rid,
                        f"ref {rid} says category {rec.category_id} but annotation {ann.ann_id} has {ann.category_id}",
                    )
            raw_ids = raw.get("sent_ids")
            if raw_ids is not None and list(raw_ids) != list(rec.sent_ids):
                self._problem("sent_ids_mismatch", refs_file, rid, f"ref {rid}: sent_ids do not match its sentences")
            for raw_sent, sent in zip(raw["sentences"], rec.sentences, strict=True):
                if sent.sent_id in self.Sents:
                    self._problem("duplicate_sent_id", refs_file, sent.sent_id, f"sent id {sent.sent_id} appears twice")
                self.Sents[sent.sent_id] = raw_sent
                self.sentToRef[sent.sent_id] = raw
                self.sentToTokens[sent.sent_id] = raw_sent.get("tokens", list(sent.tokens))

    # -- REFER methods ------------------------------------------------------------------------

    def getRefIds(self, image_ids: Any = (), cat_ids: Any = (), ref_ids: Any = (), split: str = "") -> list[int]:
        """Ref ids filtered like REFER; with ``image_ids`` the refs come image by image, in that order."""
        image_ids, cat_ids, ref_ids = _id_list(image_ids), _id_list(cat_ids), _id_list(ref_ids)
        if split and split not in KNOWN_SPLITS:
            raise ValueError(f"no such split {split!r}; choose one of {', '.join(KNOWN_SPLITS)}")
        if image_ids:
            refs = [ref for image_id in dict.fromkeys(image_ids) for ref in self.imgToRefs.get(image_id, [])]
        else:
            refs = list(self.data["refs"])
        if cat_ids:
            cats = set(cat_ids)
            refs = [ref for ref in refs if ref["category_id"] in cats]
        if ref_ids:
            wanted = set(ref_ids)
            refs = [ref for ref in refs if ref["ref_id"] in wanted]
        if split:
            if split in ("testA", "testB", "testC"):
                refs = [ref for ref in refs if split[-1] in ref["split"]]
            elif split == "test":
                refs = [ref for ref in refs if "test" in ref["split"]]
            else:
                refs = [ref for ref in refs if ref["split"] == split]
        return [ref["ref_id"] for ref in refs]

    def getAnnIds(self, image_ids: Any = (), cat_ids: Any = (), ref_ids: Any = ()) -> list[int]:
        """Annotation ids by image and category; unlike REFER, the ``ref_ids`` filter is applied."""
        image_ids, cat_ids, ref_ids = _id_list(image_ids), _id_list(cat_ids), _id_list(ref_ids)
        if image_ids:
            anns = [ann for image_id in dict.fromkeys(image_ids) for ann in self.imgToAnns.get(image_id, [])]
        else:
            anns = list(self.data["annotations"])
        if cat_ids:
            cats = set(cat_ids)
            anns = [ann for ann in anns if ann["category_id"] in cats]
        if ref_ids:
            wanted = {self.Refs[r]["ann_id"] for r in ref_ids if r in self.Refs}
            anns = [ann for ann in anns if ann["id"] in wanted]
        return [ann["id"] for ann in anns]

    def getImgIds(self, ref_ids: Any = ()) -> list[int]:
        """Image ids of the given refs (sorted, unique), or every image id in instances order."""
        ref_ids = _id_list(ref_ids)
        if ref_ids:
            return sorted({_lookup(self.Refs, r, "ref id")["image_id"] for r in ref_ids})
        return list(self.Imgs.keys())

    def getCatIds(self) -> list[int]:
        return list(self.Cats.keys())

    def loadRefs(self, ref_ids: Any = ()) -> list[dict[str, Any]]:
        return [_lookup(self.Refs, r, "ref id") for r in _id_list(ref_ids)]

    def loadAnns(self, ann_ids: Any = ()) -> list[dict[str, Any]]:
        return [_lookup(self.Anns, a, "annotation id") for a in _id_list(ann_ids)]

    def loadImgs(self, image_ids: Any = ()) -> list[dict[str, Any]]:
        return [_lookup(self.Imgs, i, "image id") for i in _id_list(image_ids)]

    def loadCats(self, cat_ids: Any = ()) -> list[str]:
        return [_lookup(self.Cats, c, "category id") for c in _id_list(cat_ids)]

    def getRefBox(self, ref_id: Any) -> list[float]:
        """The referred annotation's ``[x, y, w, h]``."""
        return self._ref_ann(_single_id(ref_id["ref_id"] if _is_map(ref_id) else ref_id))["bbox"]

    def _ref_ann(self, ref_id: int) -> dict[str, Any]:
        ref = _lookup(self.Refs, ref_id, "ref id")
        ann = self.refToAnn.get(ref_id)
        if ann is None:
            raise KeyError(f"ref {ref_id}: annotation {ref['ann_id']} is not in instances.json")
        return ann

    def getMask(self, ref: Any) -> dict[str, Any]:
        """REFER's ``{'mask', 'area'}``: polygons are summed, so overlapping parts give 2 (as REFER).

        ``ref`` may be a ref dict, a :class:`Ref` or a ref id. RLE annotations are accepted.
        """
        if isinstance(ref, Mapping):
            ref_id = _as_int(ref["ref_id"])
        elif isinstance(ref, Ref):
            ref_id = ref.ref_id
        else:
            ref_id = _single_id(ref)
        ann = self._ref_ann(ref_id)
        raw_ref = self.Refs[ref_id]
        image = _lookup(self.Imgs, raw_ref["image_id"], "image id")
        height, width = int(image["height"]), int(image["width"])
        rles = segmentation_rles(ann["segmentation"], height, width)
        if not rles:
            return {"mask": np.zeros((height, width), dtype=np.uint8), "area": 0}
        decoded = mask_utils.decode(rles)
        m = np.sum(decoded, axis=2).astype(np.uint8)
        area = int(np.sum(mask_utils.area(rles)))
        return {"mask": m, "area": area}

    # -- typed accessors ----------------------------------------------------------------------

    def refs(self) -> list[Ref]:
        """Every ref, in pickle order."""
        return list(self._refs)

    def annotations(self) -> list[Annotation]:
        return list(self._annotations)

    def images(self) -> list[ImageInfo]:
        return list(self._images)

    def categories(self) -> list[Category]:
        return list(self._categories)

    def ref(self, ref_id: int) -> Ref:
        return _lookup(self._ref_by_id, ref_id, "ref id")

    def annotation(self, ann_id: int) -> Annotation:
        return _lookup(self._annotation_by_id, ann_id, "annotation id")

    def image(self, image_id: int) -> ImageInfo:
        return _lookup(self._image_by_id, image_id, "image id")

    def category(self, category_id: int) -> Category:
        return _lookup(self._category_by_id, category_id, "category id")

    def image_path(self, image_id: int) -> Path:
        return Path(self.IMAGE_DIR) / self.image(image_id).file_name

    def __repr__(self) -> str:
        return (
            f"ReferSource({self.DATA_DIR!r}, split_by={self.split_by!r}: {len(self._refs)} refs, "
            f"{len(self._images)} images, {len(self._annotations)} annotations)"
        )


def refs_path(root: str | os.PathLike[str], dataset: str = DEFAULT_DATASET, split_by: str = DEFAULT_SPLIT_BY) -> Path:
    """The refs file REFER would read: ``refs(<split_by>).p``, else its JSON equivalent if only that exists."""
    base = Path(root) / dataset
    pickle_path = base / f"refs({split_by}).p"
    json_path = base / f"refs({split_by}).json"
    if not pickle_path.exists() and json_path.exists():
        return json_path
    return pickle_path


def load_source(
    root: str | os.PathLike[str],
    dataset: str = DEFAULT_DATASET,
    split_by: str = DEFAULT_SPLIT_BY,
    images: str | os.PathLike[str] | None = None,
) -> ReferSource:
    """Read ``ROOT/<dataset>/refs(<split_by>).p`` (or ``.json``) and ``ROOT/<dataset>/instances.json``.

    Raises :class:`SourceError` (or :class:`UnsafePickleError`) naming the file when the source is
    unusable; non-fatal defects end up in ``source.problems``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: no such source directory")
    refs_file = refs_path(root, dataset, split_by)
    instances_file = root / dataset / "instances.json"
    if not refs_file.is_file():
        raise SourceError(f"{refs_file}: refs file not found (nor refs({split_by}).json)")
    if not instances_file.is_file():
        raise SourceError(f"{instances_file}: instances file not found")

    refs = load_plain_pickle(refs_file) if refs_file.suffix == ".p" else _load_json(refs_file)
    if not isinstance(refs, list):
        raise SourceError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    instances = _load_json(instances_file)
    if not isinstance(instances, dict):
        raise SourceError(f"{instances_file}: expected a JSON object, got {type(instances).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(instances.get(key), list):
            raise SourceError(f"{instances_file}: missing or non-list {key!r}")

    image_dir = Path(images) if images is not None else root / DEFAULT_IMAGE_SUBDIR
    return ReferSource(
        refs,
        instances,
        root=root,
        dataset=dataset,
        split_by=split_by,
        image_dir=image_dir,
        refs_file=refs_file,
        instances_file=instances_file,
    )


# --- writer ------------------------------------------------------------------------------------


def _plain_int(value: Any, where: str) -> int:
    try:
        return _as_int(value)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _plain_float(value: Any, where: str) -> float:
    try:
        out = _as_float(value)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not math.isfinite(out):
        raise ValueError(f"{where}: non-finite number {out}")
    return out


def _plain_json(value: Any, where: str) -> Any:
    """Deep copy of ``value`` as plain JSON types (numpy scalars and tuples converted)."""
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
        coords = [float(v) if type(v) is float or type(v) is int else _as_float(v) for v in poly]
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
    extra = {k: _plain_json(v, where) for k, v in image.extra.items() if k not in _IMAGE_CORE}
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
) -> Path:
    """Write ``ROOT/<dataset>/refs(<split_by>).p`` and ``instances.json``; returns ``ROOT/<dataset>``.

    Refs keep their given order and REFER's 8 keys in REFER's order, plain ints and strings only,
    pickled with protocol 2 (readable by Python 2 and 3). An empty ``Ref.file_name`` becomes
    ``<image stem>_<ann_id>.jpg``. ``refs_format="json"`` writes ``refs(<split_by>).json`` instead.
    With ``strict`` (default) every ref must resolve to an annotation on its image. Ids must be
    unique. Both files are written atomically and identical inputs give identical bytes.
    ``ref_extras`` maps a ref id to extra keys appended after REFER's 8 (plain JSON values only);
    REFER readers ignore them.
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
        ann_by_id = {a.ann_id: a for a in annotations}
        for ref in refs:
            ann = ann_by_id.get(ref.ann_id)
            if ann is None:
                raise ValueError(f"ref {ref.ref_id}: annotation {ref.ann_id} is not among the annotations")
            if ref.image_id not in image_by_id:
                raise ValueError(f"ref {ref.ref_id}: image {ref.image_id} is not among the images")
            if ann.image_id != ref.image_id:
                raise ValueError(f"ref {ref.ref_id}: annotation {ann.ann_id} is on image {ann.image_id}, not {ref.image_id}")

    intern: dict[str, str] = {}
    payload = [_ref_dict(r, image_by_id.get(r.image_id), intern) for r in refs]
    if ref_extras:
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
    instances = {
        "info": _plain_json(info if info is not None else {}, "info"),
        "images": [_image_dict(i) for i in images],
        "licenses": _plain_json(licenses if licenses is not None else [], "licenses"),
        "annotations": [_annotation_dict(a) for a in annotations],
        "categories": [
            {"supercategory": c.supercategory, "id": _plain_int(c.id, f"category {c.id}"), "name": c.name}
            for c in categories
        ],
    }

    out = Path(root) / dataset
    out.mkdir(parents=True, exist_ok=True)
    pickle_file, json_file = out / f"refs({split_by}).p", out / f"refs({split_by}).json"
    if refs_format == "pickle":
        write_bytes_atomic(pickle_file, pickle.dumps(payload, protocol=2))
        stale = json_file
    else:
        write_bytes_atomic(json_file, _json_bytes(payload))
        stale = pickle_file
    stale.unlink(missing_ok=True)  # one refs file per split_by, so readers cannot pick a stale one
    write_bytes_atomic(out / "instances.json", _json_bytes(instances))
    return out


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
