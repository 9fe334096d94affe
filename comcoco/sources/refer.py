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

This module is the one name to import from; the work is done by

* ``format.py``       the layout, key orders, split names, COCO categories, errors,
* ``safe_pickle.py``  the restricted unpickler and its plain-data check,
* ``parse.py``        raw dicts into typed records, errors naming file and record,
* ``reader.py``       ``load_source`` and ``ReferSource`` (REFER's index and API),
* ``writer.py``       ``write_source``.
"""

from __future__ import annotations

from comcoco.sources.format import (
    ANNOTATION_KEY_ORDER,
    COCO_CATEGORIES,
    DEFAULT_DATASET,
    DEFAULT_IMAGE_SUBDIR,
    DEFAULT_SPLIT_BY,
    IMAGE_KEY_ORDER,
    INSTANCES_KEYS,
    KNOWN_SPLITS,
    REF_KEYS,
    SENTENCE_KEYS,
    SourceError,
    UnsafePickleError,
    normalize_sentence,
)
from comcoco.sources.reader import ReferSource, load_source, refs_path
from comcoco.sources.safe_pickle import load_plain_pickle
from comcoco.sources.writer import write_source

__all__ = [
    "ANNOTATION_KEY_ORDER",
    "COCO_CATEGORIES",
    "DEFAULT_DATASET",
    "DEFAULT_IMAGE_SUBDIR",
    "DEFAULT_SPLIT_BY",
    "IMAGE_KEY_ORDER",
    "INSTANCES_KEYS",
    "KNOWN_SPLITS",
    "REF_KEYS",
    "SENTENCE_KEYS",
    "ReferSource",
    "SourceError",
    "UnsafePickleError",
    "load_plain_pickle",
    "load_source",
    "normalize_sentence",
    "refs_path",
    "write_source",
]
