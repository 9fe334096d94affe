"""A validated cache of a loaded source's typed records and problems, keyed by its fingerprint.

Loading RefCOCO+ means unpickling about 3 million objects and parsing about 10 million polygon
coordinates out of ``instances.json``; most of that is rebuilt identically on every ``inspect``,
``match`` and ``build`` (and in every build worker). Once a source has loaded, its typed records
and problems are written to one file whose name is the source's fingerprint (sizes, modification
times and SHA-256 of the refs file and ``instances.json``). A later load that finds that file reads
polygon coordinates as one float64 array and everything else as JSON, and builds the same records.

The file holds plain data only (a JSON header, JSON sections and little-endian numpy arrays; no
pickle, nothing that could run). It is used only when its header names this exact fingerprint and
format, the SHA-256 of its payload matches, and every array length agrees with the counts it
claims; otherwise it is ignored and the source is loaded from its files (and the cache rewritten).

Where: ``load_source(..., cache_dir=DIR)``, else ``$COMCOCO_SOURCE_CACHE`` (``off`` disables it),
else ``$XDG_CACHE_HOME/comcoco/source-index`` (``~/.cache/...``). Without an explicit directory only
sources of at least ``MIN_SOURCE_BYTES`` are cached; the newest ``KEEP`` files are kept.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from comcoco.io import atomic_write
from comcoco.records import Annotation, Category, ImageInfo, Problem, Ref, Sentence
from comcoco.sources.allocation import shared_lists
from comcoco.sources.parse import loads_json

FORMAT = 1
MAGIC = b"comcoco source index\n"
ENV = "COMCOCO_SOURCE_CACHE"
MIN_SOURCE_BYTES = 16 << 20
KEEP = 4
SUFFIX = ".source-index"
_OFF = frozenset({"", "0", "off", "no", "false", "none"})
_new = object.__new__


class CacheMiss(Exception):
    """The cache file is absent, for another fingerprint or format, or damaged."""


class NotCacheable(Exception):
    """The source holds a value the cache layout cannot give back exactly (e.g. an id beyond int64)."""


@dataclass(frozen=True)
class FileStamp:
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a source's files: size, modification time and content hash of each."""

    refs: FileStamp
    instances: FileStamp
    refs_format: str  # "pickle" or "json"

    def key(self) -> str:
        text = json.dumps([FORMAT, asdict(self)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def same_content(self, other: Fingerprint) -> bool:
        return (self.refs.sha256, self.instances.sha256) == (other.refs.sha256, other.instances.sha256)


def _read_stamped(path: Path, keep: bool) -> tuple[FileStamp, bytes | None]:
    """Stamp of one file; with ``keep`` also its bytes (read whole), else hashed a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if keep:
            data: bytes | None = fh.read()
            digest.update(data)
            return FileStamp(len(data), st.st_mtime_ns, digest.hexdigest()), data
        size = 0
        while block := fh.read(1 << 24):
            digest.update(block)
            size += len(block)
    return FileStamp(size, st.st_mtime_ns, digest.hexdigest()), None


def fingerprint(refs_file: Path, instances_file: Path, keep: bool = False) -> tuple[Fingerprint, bytes | None, bytes | None]:
    """The source's fingerprint, and with ``keep`` the bytes it was computed from (to be parsed)."""
    refs_stamp, refs_bytes = _read_stamped(refs_file, keep)
    inst_stamp, inst_bytes = _read_stamped(instances_file, keep)
    kind = "pickle" if refs_file.suffix == ".p" else "json"
    return Fingerprint(refs_stamp, inst_stamp, kind), refs_bytes, inst_bytes


def cache_location(explicit: str | os.PathLike[str] | None) -> tuple[Path | None, bool]:
    """The cache directory (None: caching off) and whether it was asked for explicitly."""
    if explicit is not None:
        return Path(explicit), True
    env = os.environ.get(ENV)
    if env is not None:
        return (None if env.strip().lower() in _OFF else Path(env)), False
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comcoco" / "source-index", False


@dataclass
class CachedSource:
    """What a cache file gives back: the typed records, problems, ``info`` and ``licenses``."""

    images: list[ImageInfo]
    annotations: list[Annotation]
    categories: list[Category]
    refs: list[Ref]
    problems: list[Problem]
    info: Any
    licenses: Any


# --- writing ---------------------------------------------------------------------------------------


def _json_bytes(obj: Any) -> bytes:
    # The standard library writes every value back exactly (big ints, NaN, lone surrogates escaped);
    # loads_json reads it as json would.
    return json.dumps(obj, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode("ascii")


def _int64(values: Iterator[int], count: int) -> np.ndarray:
    try:
        return np.fromiter(values, dtype="<i8", count=count)
    except OverflowError:
        raise NotCacheable("an id or flag does not fit 64 bits") from None


def _columnar(segmentations: list[Any]) -> list[bool]:
    """Which segmentations are lists of polygons whose coordinates are all exactly ``float``.

    Checked for all at once (the common COCO case), and one by one only when that fails.
    """
    shaped = [type(seg) is list and all(type(poly) is list for poly in seg) for seg in segmentations]
    polygons = chain.from_iterable(seg for seg, ok in zip(segmentations, shaped, strict=True) if ok)
    if {float}.issuperset(map(type, chain.from_iterable(polygons))):
        return shaped
    return [ok and {float}.issuperset(map(type, chain.from_iterable(seg)))
            for seg, ok in zip(segmentations, shaped, strict=True)]


def _annotation_sections(annotations: list[Annotation]) -> dict[str, bytes]:
    n = len(annotations)
    ints = np.stack([_int64((getattr(a, f) for a in annotations), n)
                     for f in ("ann_id", "image_id", "category_id", "iscrowd")], axis=1)
    floats = np.empty((n, 5), dtype="<f8")
    floats[:, :4] = np.fromiter(chain.from_iterable(a.bbox for a in annotations), dtype="<f8", count=4 * n).reshape(n, 4)
    floats[:, 4] = np.fromiter((a.area for a in annotations), dtype="<f8", count=n)
    segmentations = [a.segmentation for a in annotations]
    columnar = _columnar(segmentations)
    n_polys = [len(seg) if ok else -1 for seg, ok in zip(segmentations, columnar, strict=True)]
    polys = list(chain.from_iterable(seg for seg, ok in zip(segmentations, columnar, strict=True) if ok))
    lengths = np.fromiter(map(len, polys), dtype="<i8", count=len(polys))
    coords = np.fromiter(chain.from_iterable(polys), dtype="<f8", count=int(lengths.sum()))
    other = [seg for seg, ok in zip(segmentations, columnar, strict=True) if not ok]
    return {
        "ann_int": ints.astype("<i8").tobytes(),
        "ann_float": floats.tobytes(),
        "seg_polygons": np.array(n_polys, dtype="<i8").tobytes(),
        "poly_lengths": lengths.tobytes(),
        "coords": coords.tobytes(),
        "seg_other": _json_bytes(other),
    }


def _role(file: str, refs_file: Path, instances_file: Path) -> str:
    if file == str(refs_file):
        return "refs"
    if file == str(instances_file):
        return "instances"
    raise NotCacheable(f"a problem names {file}, neither source file")


def _sections(source: Any) -> dict[str, bytes]:
    refs_file, instances_file = source.refs_file, source.instances_file
    meta = {
        "info": source.info,
        "licenses": source.licenses,
        "problems": [[p.kind, _role(p.file, refs_file, instances_file), p.id, p.message] for p in source.problems],
        "categories": [[c.id, c.name, c.supercategory] for c in source.categories()],
        "images": [[i.image_id, i.file_name, i.width, i.height, i.extra] for i in source.images()],
    }
    refs = [
        [r.ref_id, r.ann_id, r.image_id, r.category_id, r.split, r.file_name,
         [[s.sent_id, s.raw, s.sent, s.tokens] for s in r.sentences]]
        for r in source.refs()
    ]  # fmt: skip
    try:  # ints and strings only: orjson writes them exactly, or refuses (big ints, lone surrogates)
        refs_json = orjson.dumps(refs)
    except TypeError:
        refs_json = _json_bytes(refs)
    return {"meta": _json_bytes(meta), "refs": refs_json, **_annotation_sections(source.annotations())}


def write_cache(directory: Path, fp: Fingerprint, source: Any) -> Path:
    """Write ``source`` (a loaded ReferSource) as ``directory/<key>.source-index``, atomically.

    Raises NotCacheable when the layout cannot give a value back exactly, OSError when the
    directory cannot be written. Keeps the newest ``KEEP`` cache files of the directory.
    """
    sections = _sections(source)
    offsets: dict[str, list[int]] = {}
    digest = hashlib.sha256()
    at = 0
    for name, blob in sections.items():
        offsets[name] = [at, len(blob)]
        digest.update(blob)
        at += len(blob)
    header = _json_bytes({
        "format": FORMAT,
        "fingerprint": asdict(fp),
        "sections": offsets,
        "payload_sha256": digest.hexdigest(),
        "counts": {"annotations": len(source.annotations()), "refs": len(source.refs())},
    })  # fmt: skip
    path = directory / f"{fp.key()}{SUFFIX}"
    with atomic_write(path) as fh:
        fh.write(MAGIC)
        fh.write(len(header).to_bytes(8, "little"))
        fh.write(header)
        for blob in sections.values():
            fh.write(blob)
    _prune(directory, keep=path)
    return path


def _prune(directory: Path, keep: Path) -> None:
    others = sorted(
        (p for p in directory.glob(f"*{SUFFIX}") if p != keep), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    for stale in others[KEEP - 1:]:
        stale.unlink(missing_ok=True)


# --- reading ---------------------------------------------------------------------------------------


def _payload(blob: bytes | mmap.mmap, fp: Fingerprint) -> tuple[dict[str, Any], memoryview]:
    """The verified header and payload of a cache file, or CacheMiss."""
    if blob[:len(MAGIC)] != MAGIC or len(blob) < len(MAGIC) + 8:
        raise CacheMiss("not a source index")
    at = len(MAGIC) + 8
    size = int.from_bytes(blob[len(MAGIC):at], "little")
    header = json.loads(blob[at:at + size])
    if header.get("format") != FORMAT or header.get("fingerprint") != asdict(fp):
        raise CacheMiss("another format or fingerprint")
    payload = memoryview(blob)[at + size:]
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CacheMiss("payload checksum mismatch")
    for start, length in header["sections"].values():
        if not (0 <= start and 0 <= length and start + length <= len(payload)):
            raise CacheMiss("section outside the payload")
    return header, payload


def _section(header: dict[str, Any], payload: memoryview, name: str) -> memoryview:
    start, length = header["sections"][name]
    return payload[start:start + length]


def _array(header: dict[str, Any], payload: memoryview, name: str, dtype: str, width: int = 1) -> np.ndarray:
    raw = _section(header, payload, name)
    item = np.dtype(dtype).itemsize * width
    if len(raw) % item:
        raise CacheMiss(f"section {name} has a partial row")
    arr = np.frombuffer(raw, dtype=dtype)
    return arr.reshape(-1, width) if width > 1 else arr


def _segmentations(header: dict[str, Any], payload: memoryview, n: int) -> list[Any]:
    n_polys = _array(header, payload, "seg_polygons", "<i8")
    lengths = _array(header, payload, "poly_lengths", "<i8")
    coords = _array(header, payload, "coords", "<f8")
    other = loads_json(bytes(_section(header, payload, "seg_other")))
    columnar = n_polys >= 0
    if (
        len(n_polys) != n or (n_polys < -1).any() or int(n_polys[columnar].sum()) != len(lengths)
        or (lengths < 0).any() or int(lengths.sum()) != len(coords) or int((~columnar).sum()) != len(other)
    ):  # fmt: skip
        raise CacheMiss("segmentation sections disagree")
    polys = shared_lists(coords, np.cumsum(lengths).tolist())  # one float object per distinct value
    seg_ends = np.cumsum(np.maximum(n_polys, 0)).tolist()
    segs = [polys[a:b] for a, b in zip([0, *seg_ends[:-1]], seg_ends, strict=True)]
    if other:
        for index, seg in zip(np.flatnonzero(~columnar).tolist(), other, strict=True):
            segs[index] = seg
    return segs


def _annotations(header: dict[str, Any], payload: memoryview) -> list[Annotation]:
    ints = _array(header, payload, "ann_int", "<i8", 4)
    floats = _array(header, payload, "ann_float", "<f8", 5)
    n = len(ints)
    if len(floats) != n or n != header["counts"]["annotations"]:
        raise CacheMiss("annotation sections disagree")
    columns = [ints[:, k].tolist() for k in range(4)] + [floats[:, k].tolist() for k in range(5)]
    out: list[Annotation] = []
    append = out.append
    for ann_id, image_id, category_id, crowd, x, y, w, h, area, seg in zip(
        *columns, _segmentations(header, payload, n), strict=True
    ):
        rec = _new(Annotation)  # as parse.annotation_records: the instance dict filled directly
        d = rec.__dict__
        d["ann_id"] = ann_id
        d["image_id"] = image_id
        d["category_id"] = category_id
        d["bbox"] = (x, y, w, h)
        d["area"] = area
        d["iscrowd"] = crowd
        d["segmentation"] = seg
        append(rec)
    return out


def _refs(rows: list[Any]) -> list[Ref]:
    out: list[Ref] = []
    append = out.append
    for ref_id, ann_id, image_id, category_id, split, file_name, sentences in rows:
        sents = []
        for sent_id, raw, sent, tokens in sentences:
            s = _new(Sentence)
            d = s.__dict__
            d["sent_id"] = sent_id
            d["raw"] = raw
            d["sent"] = sent
            d["tokens"] = tuple(tokens)
            sents.append(s)
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
    return out


def decode(blob: bytes | mmap.mmap, fp: Fingerprint, refs_file: Path, instances_file: Path) -> CachedSource:
    """The records of a cache file for ``fp``; CacheMiss unless the file is whole and consistent."""
    try:
        header, payload = _payload(blob, fp)
        meta = loads_json(bytes(_section(header, payload, "meta")))
        annotations = _annotations(header, payload)
        refs = _refs(loads_json(bytes(_section(header, payload, "refs"))))
        if len(refs) != header["counts"]["refs"]:
            raise CacheMiss("ref count disagrees")
        files = {"refs": str(refs_file), "instances": str(instances_file)}
        return CachedSource(
            images=[ImageInfo(i, f, w, h, extra) for i, f, w, h, extra in meta["images"]],
            annotations=annotations,
            categories=[Category(c, name, sup) for c, name, sup in meta["categories"]],
            refs=refs,
            problems=[Problem(kind, files[role], id_, message) for kind, role, id_, message in meta["problems"]],
            info=meta["info"],
            licenses=meta["licenses"],
        )
    except CacheMiss:
        raise
    except Exception as exc:  # a damaged file can fail anywhere in decoding; it is then not used
        raise CacheMiss(f"unreadable ({type(exc).__name__}: {exc})") from None


def read_cache(directory: Path, fp: Fingerprint, refs_file: Path, instances_file: Path) -> CachedSource:
    """The records cached for ``fp`` in ``directory``; CacheMiss when there are none usable.

    The file is memory-mapped: only the decoded records are copied onto the heap.
    """
    path = directory / f"{fp.key()}{SUFFIX}"
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            return decode(blob, fp, refs_file, instances_file)
    except (OSError, ValueError, BufferError):  # BufferError: a failed decode still holds a view
        raise CacheMiss("no readable cache file") from None
