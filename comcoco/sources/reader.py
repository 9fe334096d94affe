"""The REFER reader: ``load_source`` and :class:`ReferSource`, REFER's index and API on typed records.

The index follows the REFER toolkit (``Refs``, ``Anns``, ``Imgs``, ``Cats``, ``Sents``, ``refToAnn``,
...) so loaders written for RefCOCO+ keep working, but dangling references never crash it: they
are recorded in ``problems`` and left out of ``refToAnn`` / ``annToRef``. REFER's crash bugs are
fixed (``getRefIds(image_ids=...)``, numpy ids in ``load*``, ``sys.exit`` on an unknown split, RLE
annotations in ``getMask``).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from comcoco.records import Annotation, Category, ImageInfo, Problem, Ref
from comcoco.sources.format import (
    DEFAULT_DATASET,
    DEFAULT_IMAGE_SUBDIR,
    DEFAULT_SPLIT_BY,
    KNOWN_SPLITS,
    SourceError,
)
from comcoco.sources.images import segmentation_rles
from comcoco.sources.parse import (
    annotation_record,
    as_int,
    category_record,
    image_record,
    is_map,
    load_json,
    ref_record,
)
from comcoco.sources.safe_pickle import load_plain_pickle

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
        self._images = [image_record(r, i, inst) for i, r in enumerate(self.data["images"])]
        self._annotations = [annotation_record(r, i, inst) for i, r in enumerate(self.data["annotations"])]
        self._categories = [category_record(r, i, inst) for i, r in enumerate(self.data["categories"])]
        self._refs = [ref_record(r, i, self.refs_file) for i, r in enumerate(self.data["refs"])]
        self._index_instances()
        self._index_refs()

    def _index_instances(self) -> None:
        inst = self.instances_file
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

    def _index_refs(self) -> None:
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
        return self._ref_ann(_single_id(ref_id["ref_id"] if is_map(ref_id) else ref_id))["bbox"]

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
            ref_id = as_int(ref["ref_id"])
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

    refs = load_plain_pickle(refs_file) if refs_file.suffix == ".p" else load_json(refs_file)
    if not isinstance(refs, list):
        raise SourceError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    instances = load_json(instances_file)
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

