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
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from comcoco.records import Annotation, Category, ImageInfo, Problem, Ref
from comcoco.sources.allocation import long_lived, paused_gc
from comcoco.sources.format import (
    DEFAULT_DATASET,
    DEFAULT_IMAGE_SUBDIR,
    DEFAULT_SPLIT_BY,
    KNOWN_SPLITS,
    SourceError,
    short,
)
from comcoco.sources.images import segmentation_rles
from comcoco.sources.index import build_index, find_problems
from comcoco.sources.index_cache import (
    MIN_SOURCE_BYTES,
    CachedSource,
    CacheMiss,
    Fingerprint,
    NotCacheable,
    cache_location,
    fingerprint,
    read_cache,
    write_cache,
)
from comcoco.sources.parse import (
    annotation_records,
    as_int,
    category_records,
    image_records,
    is_map,
)
from comcoco.sources.parse import ref_records as parse_ref_records
from comcoco.sources.paths import trusted_image_file
from comcoco.sources.raw import read_instances, read_refs

# --- id arguments ------------------------------------------------------------------------------


def _id_list(value: Any) -> list[Any]:
    """REFER's "list or single id" arguments, also accepting numpy ints, tuples, ranges and arrays."""
    if value is None:
        return []
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value)]
    if isinstance(value, str | bytes):
        raise TypeError(f"expected an id or a list of ids, got {type(value).__name__} {short(value)}")
    if isinstance(value, np.ndarray):
        return [int(v) for v in value.ravel()]
    if isinstance(value, Iterable):
        return [int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in value]
    raise TypeError(f"expected an id or a list of ids, got {type(value).__name__}")


def _single_id(value: Any) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"expected one integer id, got {type(value).__name__} {short(value)}")


def _lookup(table: Mapping[int, Any], key: Any, what: str) -> Any:
    try:
        return table[key]
    except KeyError:
        raise KeyError(f"unknown {what} {short(key)}") from None
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(key).__name__}") from None


# --- the source --------------------------------------------------------------------------------

_TABLES = ("Imgs", "Cats", "Anns", "imgToAnns", "Refs", "imgToRefs", "refToAnn", "annToRef", "catToRefs",
           "Sents", "sentToRef", "sentToTokens")


class _Table:
    """One of REFER's index tables, built with all the others the first time any is read.

    Only the REFER API needs them (the build stages use the typed records), so a source that is
    only matched or inspected never pays for them. Once built they are plain instance attributes.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        obj._build_tables()
        return obj.__dict__[self.name]


class _RawData:
    """``ReferSource.data`` of a source built from its index cache: the files, read on first use.

    The typed records come from the cache; REFER's raw dicts are only needed by the REFER API.
    """

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        obj._load_data()
        return obj.__dict__["data"]


class ReferSource:
    """A loaded REFER-format source: REFER's index and methods plus typed records.

    Built by :func:`load_source`. Raw dicts (``Refs``, ``Anns``, ``Imgs``, ...) are exactly what the
    files hold; the typed records (``refs()``, ``annotations()``, ...) and ``problems`` are built
    once, at load (or taken from the index cache). REFER's tables are built when first read, and a
    source from the cache reads its raw dicts (``data``) from the files then.
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
        ref_records: list[Ref | None] | None = None,
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
        with paused_gc():
            self._create_index(ref_records)

    # -- index --------------------------------------------------------------------------------

    def _create_index(self, ref_records: list[Ref | None] | None) -> None:
        """Typed records (instances first, then refs, so errors come in that order) and the problems.

        ``ref_records`` are refs already built by :func:`prepare_ref_records` (None where a ref
        needs the per-record path). REFER's tables are built on first use (see ``_Table``).
        """
        inst, data = self.instances_file, self.data
        self._images = image_records(data["images"], inst)
        self._annotations = annotation_records(data["annotations"], inst)
        self._categories = category_records(data["categories"], inst)
        self._refs = parse_ref_records(data["refs"], self.refs_file, ref_records)
        self._image_by_id = {r.image_id: r for r in self._images}
        self._category_by_id = {r.id: r for r in self._categories}
        self._annotation_by_id = {r.ann_id: r for r in self._annotations}
        self._ref_by_id = {r.ref_id: r for r in self._refs}
        self.problems: list[Problem] = find_problems(
            data, self._images, self._annotations, self._categories, self._refs,
            refs_file=self.refs_file, instances_file=inst,
        )
        self._tables_lock = threading.RLock()

    def _build_tables(self) -> None:
        """REFER's tables, all at once, the first time one of them is read."""
        with self._tables_lock:
            if "Refs" in self.__dict__:
                return
            with long_lived(freeze=self._large):
                ix = build_index(self.data, self._images, self._annotations, self._categories, self._refs,
                                 refs_file=self.refs_file, instances_file=self.instances_file)
            for name in _TABLES:
                self.__dict__[name] = getattr(ix, name)

    data = _RawData()
    IMAGE_ROOT: str | None = None  # set by load_source: where symlinks in the image folder may lead
    _large = False  # set by load_source: whatever it builds later is frozen as the source was

    @classmethod
    def _from_cache(
        cls, cached: CachedSource, fp: Fingerprint, *, root: Path, dataset: str, split_by: str, image_dir: Path,
        refs_file: Path, instances_file: Path,
    ) -> ReferSource:
        """A source whose records and problems come from its index cache (``data`` is read on first use)."""
        self = cls.__new__(cls)
        self.dataset, self.split_by = dataset, split_by
        self.refs_file, self.instances_file = refs_file, instances_file
        self.ROOT_DIR, self.DATA_DIR, self.IMAGE_DIR = str(root), str(root / dataset), str(image_dir)
        self.info, self.licenses = cached.info, cached.licenses
        self._images, self._annotations = cached.images, cached.annotations
        self._categories, self._refs = cached.categories, cached.refs
        self._image_by_id = {r.image_id: r for r in self._images}
        self._category_by_id = {r.id: r for r in self._categories}
        self._annotation_by_id = {r.ann_id: r for r in self._annotations}
        self._ref_by_id = {r.ref_id: r for r in self._refs}
        self.problems = cached.problems
        self._tables_lock = threading.RLock()
        self._fingerprint = fp
        return self

    def _load_data(self) -> None:
        """Read REFER's raw dicts from the files this source was built from (they must be unchanged)."""
        with self._tables_lock:
            if "data" in self.__dict__:
                return
            with long_lived(freeze=self._large):
                fp, refs_bytes, inst_bytes = _fingerprint(self.refs_file, self.instances_file, keep=True)
                if not fp.same_content(self._fingerprint):
                    raise SourceError(f"{self.refs_file.parent}: the source files changed after it was loaded; load it again")
                refs, _ = read_refs(self.refs_file, refs_bytes)
                instances = read_instances(self.instances_file, inst_bytes)
            self.__dict__["data"] = {
                "dataset": self.dataset,
                "refs": refs,
                "images": instances["images"],
                "annotations": instances["annotations"],
                "categories": instances["categories"],
            }

    Imgs = _Table()
    Cats = _Table()
    Anns = _Table()
    imgToAnns = _Table()
    Refs = _Table()
    imgToRefs = _Table()
    refToAnn = _Table()
    annToRef = _Table()
    catToRefs = _Table()
    Sents = _Table()
    sentToRef = _Table()
    sentToTokens = _Table()

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
        """The image's file inside ``IMAGE_DIR``; ``UnsafeImagePath`` (an ``ImageReadError``) when its
        ``file_name`` leads elsewhere (``comcoco.sources.paths``; symlinks may end below ``IMAGE_ROOT``)."""
        return trusted_image_file(self.IMAGE_DIR, self.image(image_id).file_name, self.IMAGE_ROOT)

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
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> ReferSource:
    """Read ``ROOT/<dataset>/refs(<split_by>).p`` (or ``.json``) and ``ROOT/<dataset>/instances.json``.

    Raises :class:`SourceError` (or :class:`UnsafePickleError`) naming the file when the source is
    unusable; non-fatal defects end up in ``source.problems``. A source that loads is remembered in
    the index cache (``cache_dir``; see :mod:`comcoco.sources.index_cache`), and a later load of the
    same, unchanged files builds the same records and problems from there. ``image_root`` admits
    images that are symlinks into that folder (a symlink farm); without it every image must resolve
    inside the image folder.
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
    image_dir = Path(images) if images is not None else root / DEFAULT_IMAGE_SUBDIR
    where = {"root": root, "dataset": dataset, "split_by": split_by, "image_dir": image_dir,
             "refs_file": refs_file, "instances_file": instances_file}  # fmt: skip

    large = refs_file.stat().st_size + instances_file.stat().st_size >= MIN_SOURCE_BYTES
    directory, explicit = cache_location(cache_dir)
    use_cache = directory is not None and (explicit or large)
    fp = refs_bytes = inst_bytes = None
    with long_lived(freeze=large):
        if use_cache:
            try:
                fp = _fingerprint(refs_file, instances_file)[0]
                source = ReferSource._from_cache(read_cache(directory, fp, refs_file, instances_file), fp, **where)
                source._large = large
                source.IMAGE_ROOT = str(image_root) if image_root is not None else None
                return source
            except CacheMiss:  # read the files once more, and cache what those very bytes give
                fp, refs_bytes, inst_bytes = _fingerprint(refs_file, instances_file, keep=True)
        refs, prepared = read_refs(refs_file, refs_bytes)
        instances = read_instances(instances_file, inst_bytes)
        del refs_bytes, inst_bytes
        source = ReferSource(refs, instances, ref_records=prepared, **where)
        source._large = large
        source.IMAGE_ROOT = str(image_root) if image_root is not None else None
    if fp is not None:
        with paused_gc():
            try:
                write_cache(directory, fp, source)
            except (OSError, NotCacheable, RecursionError, ValueError, TypeError):
                pass  # the cache only saves time; a source that cannot be cached (a value nested too deep
                # for its JSON, say) still loads
    return source


def _fingerprint(refs_file: Path, instances_file: Path, keep: bool = False) -> tuple[Fingerprint, bytes | None, bytes | None]:
    try:
        return fingerprint(refs_file, instances_file, keep)
    except OSError as exc:
        raise SourceError(f"{exc.filename}: cannot read ({exc.strerror or exc})") from None
