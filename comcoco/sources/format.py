"""What a REFER-format source is: its file layout, key orders, split names, COCO's categories,
REFER's expression normalisation, and the errors a source that cannot be used raises.

Shared by the reader, the writer and the demo generator, so each spells the format the same way.
"""

from __future__ import annotations

import re
import reprlib
import string
import unicodedata
from pathlib import Path

from comcoco.errors import ComcocoError
from comcoco.records import Category

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


_SHORT = reprlib.Repr()
_SHORT.maxstring = 80
_SHORT.maxother = 80
_SHORT.maxlevel = 3


def short(value: object) -> str:
    """A source's value quoted in a message: its repr, shortened and bounded in depth (``reprlib``), so a
    hostile value (a megabyte string, a list nested thousands deep) cannot flood or crash the message;
    control characters and lone surrogates stay escaped."""
    return _SHORT.repr(value)


# Characters no expression may carry into a release: control characters (C0, DEL, C1), which a
# terminal, a CSV or an annotation tool may act on, and lone surrogates, which UTF-8 cannot encode
# (Parquet, orjson and Label Studio's database refuse them).
_UNUSABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be shipped as an expression (a lone surrogate, a control character), or None."""
    m = _UNUSABLE.search(text)
    if m is None:
        return None
    c = m.group()
    what = "a lone surrogate" if "\ud800" <= c <= "\udfff" else "a control character"
    return f"{what} (U+{ord(c):04X}) at position {m.start()}"


def sentence_problem(sentence: object) -> str | None:
    """Why a sentence (its ``raw``, ``sent`` or a token) cannot be shipped, or None."""
    for field in ("raw", "sent"):
        value = getattr(sentence, field, "")
        found = text_problem(value) if isinstance(value, str) else None
        if found:
            return f"its {field} has {found}"
    for token in getattr(sentence, "tokens", ()):
        found = text_problem(token) if isinstance(token, str) else None
        if found:
            return f"a token has {found}"
    return None


def usable_sentences(sentences: tuple) -> tuple:
    """The sentences whose text can be shipped (``sentence_problem`` is None), in order."""
    return tuple(s for s in sentences if sentence_problem(s) is None)


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

