"""The embedded demo source: a RefCOCO+-style REFER source drawn entirely by this module.

Real RefCOCO+ needs the COCO train2014 images and the REFER pickles, which cannot ship with the
tool. The demo source stands in for them with scenes that give every stage real work: a sky or wall
above a textured ground region seen in perspective, lighting gradients, vignetting and colour casts
that differ from image to image, objects with irregular polygon outlines resting on the ground,
filled with colour, patterns and grain, shaded from the scene's light and casting a shadow.
Each image belongs to one scene theme (one of the paper's Table 10 clusters), so scene matching
finds several same-cluster backgrounds. Expressions are appearance-only (colour, size, pattern,
category or synonym), like RefCOCO+.

Everything is derived from ``seed`` and the image index through ``comcoco.ids.rng_for``: the same
``n_images`` and ``seed`` give byte-identical files. Textures come from images bundled in the
installed scikit-image package; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from comcoco.ids import rng_for, seeded_keys
from comcoco.io import write_bytes_atomic, write_text_atomic
from comcoco.records import Annotation, Category, ImageInfo, Ref, Sentence
from comcoco.sources.refer import COCO_CATEGORIES, normalize_sentence, write_source

DATASET = "refcoco+"
SPLIT_BY = "unc"
IMAGE_SUBDIR = Path("images/mscoco/images/train2014")
JPEG_QUALITY = 90
MIN_IMAGES = 4
# Category area ranges below are typical shares of a COCO frame; the boost shifts the mix towards
# medium and large objects (as ComCOCO does), which give placement and harmonization more to do.
AREA_BOOST = 2.5
AREA_CAP = 0.3

# RefCOCO+ (unc) image shares per split: 16,992 / 1,500 / 750 / 750 of 19,992 images.
VAL_SHARE = 1500 / 19992
TEST_SHARE = 750 / 19992

# COCO-like image sizes (width, height); most COCO images are 640 px on the long side.
IMAGE_SIZES: tuple[tuple[int, int], ...] = (
    (640, 480), (640, 480), (640, 427), (640, 426), (640, 360), (640, 512),
    (500, 375), (612, 612), (480, 640), (427, 640),
)

# Words RefCOCO+ forbids (appearance-only expressions): tests check none is ever produced.
SPATIAL_WORDS = frozenset(
    "left right top bottom middle center centre front back behind near nearest far farther closest "
    "above below under beside next leftmost rightmost upper lower side corner first second third last "
    "between".split()
)


# --- vocabulary -----------------------------------------------------------------------------------

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.10),
    "orange": (0.95, 0.52, 0.10),
    "yellow": (0.96, 0.84, 0.16),
    "green": (0.20, 0.58, 0.20),
    "blue": (0.14, 0.30, 0.80),
    "purple": (0.50, 0.20, 0.62),
    "pink": (0.96, 0.56, 0.72),
    "brown": (0.50, 0.30, 0.14),
    "black": (0.07, 0.07, 0.08),
    "white": (0.94, 0.94, 0.92),
    "gray": (0.52, 0.52, 0.54),
}
COLOUR_SPELLINGS: dict[str, tuple[str, ...]] = {"gray": ("gray", "grey")}
SKIN_TONES: tuple[tuple[float, float, float], ...] = (
    (0.96, 0.80, 0.69), (0.88, 0.67, 0.52), (0.72, 0.50, 0.36), (0.45, 0.30, 0.20),
)
TROUSER_COLOURS: dict[str, tuple[float, float, float]] = {
    "blue": (0.16, 0.22, 0.42), "black": (0.08, 0.08, 0.09), "gray": (0.42, 0.42, 0.44), "brown": (0.40, 0.28, 0.16),
}
GARMENTS = ("shirt", "jacket", "sweater", "coat", "hoodie", "tshirt")

# pattern -> (adjectives, nouns used as "with <noun>")
PATTERNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "plain": ((), ()),
    "striped": (("striped", "stripy"), ("stripes",)),
    "spotted": (("spotted", "dotted", "polka dot"), ("spots", "dots")),
    "checkered": (("checkered", "plaid"), ("checks",)),
}

ALL_COLOURS = tuple(COLOURS)
VIVID = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black")
FABRIC = ("plain", "plain", "striped", "spotted", "checkered")


# --- shapes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """An outline family: a template polygon in the unit box, or a noisy superellipse."""

    kind: str  # "template" | "blob"
    points: tuple[tuple[float, float], ...] = ()
    exponent: float = 2.0  # superellipse exponent (2 = ellipse, larger = boxier)
    noise: float = 0.05  # relative outline irregularity


def _tpl(*pts: float) -> Shape:
    it = iter(pts)
    return Shape("template", tuple(zip(it, it, strict=True)))


PERSON = _tpl(0.50, 0.00, 0.60, 0.02, 0.64, 0.08, 0.60, 0.14, 0.56, 0.16, 0.57, 0.18, 0.80, 0.21, 0.88, 0.30,
              0.95, 0.55, 0.86, 0.56, 0.80, 0.36, 0.77, 0.58, 0.74, 1.00, 0.58, 1.00, 0.52, 0.63, 0.48, 0.63,
              0.42, 1.00, 0.26, 1.00, 0.23, 0.58, 0.20, 0.36, 0.14, 0.56, 0.05, 0.55, 0.12, 0.30, 0.20, 0.21,
              0.43, 0.18, 0.44, 0.16, 0.40, 0.14, 0.36, 0.08, 0.40, 0.02)
QUADRUPED = _tpl(0.02, 0.34, 0.18, 0.26, 0.68, 0.26, 0.77, 0.10, 0.85, 0.00, 0.96, 0.04, 1.00, 0.15, 0.93, 0.22,
                 0.87, 0.30, 0.85, 0.60, 0.83, 1.00, 0.74, 1.00, 0.72, 0.66, 0.36, 0.66, 0.33, 1.00, 0.24, 1.00,
                 0.20, 0.62, 0.12, 0.55, 0.04, 0.48, 0.00, 0.40)
GIRAFFE = _tpl(0.02, 0.52, 0.18, 0.46, 0.62, 0.46, 0.72, 0.12, 0.78, 0.00, 0.92, 0.02, 1.00, 0.08, 0.88, 0.12,
               0.82, 0.20, 0.76, 0.50, 0.74, 1.00, 0.66, 1.00, 0.64, 0.72, 0.34, 0.72, 0.32, 1.00, 0.24, 1.00,
               0.20, 0.70, 0.10, 0.62, 0.00, 0.58)
BIRD = _tpl(0.00, 0.42, 0.18, 0.38, 0.40, 0.30, 0.62, 0.26, 0.72, 0.08, 0.84, 0.02, 0.94, 0.08, 1.00, 0.16,
            0.92, 0.18, 0.86, 0.34, 0.84, 0.56, 0.70, 0.74, 0.62, 0.76, 0.60, 1.00, 0.54, 1.00, 0.52, 0.78,
            0.40, 0.74, 0.24, 0.60, 0.04, 0.52)
CAR = _tpl(0.00, 0.46, 0.05, 0.40, 0.22, 0.37, 0.33, 0.06, 0.70, 0.05, 0.81, 0.37, 0.97, 0.42, 1.00, 0.60,
           1.00, 0.84, 0.90, 0.85, 0.87, 1.00, 0.72, 1.00, 0.69, 0.85, 0.31, 0.85, 0.28, 1.00, 0.13, 1.00,
           0.10, 0.85, 0.00, 0.84)
BOXCAR = _tpl(0.00, 0.04, 0.96, 0.00, 1.00, 0.20, 1.00, 0.88, 0.90, 0.88, 0.87, 1.00, 0.72, 1.00, 0.69, 0.88,
              0.31, 0.88, 0.28, 1.00, 0.13, 1.00, 0.10, 0.88, 0.00, 0.88)
TRUCK = _tpl(0.00, 0.00, 0.68, 0.00, 0.68, 0.25, 0.88, 0.27, 1.00, 0.50, 1.00, 0.86, 0.92, 0.86, 0.89, 1.00,
             0.74, 1.00, 0.71, 0.86, 0.31, 0.86, 0.28, 1.00, 0.13, 1.00, 0.10, 0.86, 0.00, 0.86)
TWO_WHEELER = _tpl(0.00, 0.62, 0.08, 0.46, 0.22, 0.42, 0.34, 0.30, 0.58, 0.28, 0.70, 0.10, 0.80, 0.06, 0.82, 0.16,
                   0.76, 0.30, 0.86, 0.44, 0.98, 0.52, 1.00, 0.74, 0.90, 1.00, 0.74, 0.98, 0.68, 0.74, 0.34, 0.76,
                   0.26, 0.98, 0.10, 1.00)
BOAT = _tpl(0.00, 0.45, 0.30, 0.45, 0.34, 0.10, 0.62, 0.08, 0.66, 0.45, 1.00, 0.40, 0.88, 0.86, 0.78, 1.00,
            0.20, 1.00, 0.08, 0.82)
BOTTLE = _tpl(0.36, 0.00, 0.64, 0.00, 0.64, 0.22, 0.86, 0.36, 0.88, 0.96, 0.80, 1.00, 0.20, 1.00, 0.12, 0.96,
              0.14, 0.36, 0.36, 0.22)
WINE_GLASS = _tpl(0.05, 0.00, 0.95, 0.00, 0.98, 0.22, 0.86, 0.42, 0.56, 0.56, 0.56, 0.90, 0.92, 0.95, 0.92, 1.00,
                  0.08, 1.00, 0.08, 0.95, 0.44, 0.90, 0.44, 0.56, 0.14, 0.42, 0.02, 0.22)
CUP = _tpl(0.00, 0.00, 0.78, 0.00, 0.80, 0.22, 1.00, 0.24, 1.00, 0.64, 0.78, 0.70, 0.74, 1.00, 0.06, 1.00)
BOWL = _tpl(0.00, 0.00, 1.00, 0.00, 0.94, 0.40, 0.78, 0.74, 0.66, 0.80, 0.68, 1.00, 0.32, 1.00, 0.34, 0.80,
            0.22, 0.74, 0.06, 0.40)
UTENSIL = _tpl(0.00, 0.40, 0.28, 0.30, 0.34, 0.00, 0.40, 0.30, 0.46, 0.00, 0.52, 0.30, 0.58, 0.00, 0.64, 0.30,
               1.00, 0.40, 1.00, 0.60, 0.62, 0.70, 0.40, 1.00, 0.32, 1.00, 0.28, 0.70, 0.00, 0.60)
KNIFE = _tpl(0.00, 0.30, 0.56, 0.00, 0.64, 0.00, 0.64, 0.30, 1.00, 0.30, 1.00, 0.70, 0.64, 0.70, 0.60, 1.00,
             0.50, 1.00, 0.00, 0.64)
CHAIR = _tpl(0.00, 0.00, 0.22, 0.00, 0.22, 0.52, 0.98, 0.52, 1.00, 0.62, 0.92, 0.62, 0.92, 1.00, 0.82, 1.00,
             0.82, 0.64, 0.18, 0.64, 0.18, 1.00, 0.06, 1.00)
COUCH = _tpl(0.00, 0.30, 0.10, 0.00, 0.90, 0.00, 1.00, 0.30, 1.00, 0.86, 0.94, 0.86, 0.92, 1.00, 0.84, 1.00,
             0.84, 0.86, 0.16, 0.86, 0.16, 1.00, 0.08, 1.00, 0.06, 0.86, 0.00, 0.86)
BED = _tpl(0.00, 0.00, 0.08, 0.00, 0.08, 0.40, 1.00, 0.42, 1.00, 1.00, 0.92, 1.00, 0.92, 0.86, 0.08, 0.86,
           0.08, 1.00, 0.00, 1.00)
TOILET = _tpl(0.00, 0.00, 0.42, 0.00, 0.42, 0.38, 1.00, 0.40, 0.94, 0.62, 0.70, 0.74, 0.72, 1.00, 0.24, 1.00,
              0.26, 0.74, 0.04, 0.50)
TABLE_ITEM = _tpl(0.00, 0.00, 1.00, 0.00, 1.00, 0.90, 0.90, 0.90, 0.90, 1.00, 0.10, 1.00, 0.10, 0.90, 0.00, 0.90)
SINK = _tpl(0.00, 0.00, 1.00, 0.00, 0.96, 0.22, 0.66, 0.28, 0.62, 1.00, 0.38, 1.00, 0.34, 0.28, 0.04, 0.22)
LAPTOP = _tpl(0.10, 0.00, 0.90, 0.00, 0.92, 0.80, 1.00, 0.90, 1.00, 1.00, 0.00, 1.00, 0.00, 0.90, 0.08, 0.80)
PLANT = _tpl(0.30, 0.10, 0.42, 0.00, 0.52, 0.12, 0.66, 0.02, 0.74, 0.16, 0.92, 0.12, 0.88, 0.30, 1.00, 0.42,
             0.82, 0.52, 0.74, 0.56, 0.70, 1.00, 0.30, 1.00, 0.26, 0.56, 0.10, 0.50, 0.00, 0.36, 0.12, 0.26,
             0.08, 0.08)
TEDDY = _tpl(0.20, 0.06, 0.30, 0.00, 0.38, 0.06, 0.62, 0.06, 0.70, 0.00, 0.80, 0.06, 0.76, 0.18, 0.72, 0.36,
             0.96, 0.48, 0.90, 0.60, 0.78, 0.58, 0.86, 1.00, 0.56, 1.00, 0.50, 0.88, 0.44, 1.00, 0.14, 1.00,
             0.22, 0.58, 0.10, 0.60, 0.04, 0.48, 0.28, 0.36, 0.24, 0.18)
VASE = _tpl(0.30, 0.00, 0.70, 0.00, 0.66, 0.16, 0.94, 0.50, 0.84, 0.86, 0.74, 1.00, 0.26, 1.00, 0.16, 0.86,
            0.06, 0.50, 0.34, 0.16)
UMBRELLA = _tpl(0.00, 0.42, 0.10, 0.18, 0.30, 0.04, 0.50, 0.00, 0.70, 0.04, 0.90, 0.18, 1.00, 0.42, 0.54, 0.42,
                0.54, 0.96, 0.42, 1.00, 0.36, 0.92, 0.42, 0.90, 0.46, 0.42)
HANDBAG = _tpl(0.24, 0.30, 0.30, 0.06, 0.50, 0.00, 0.70, 0.06, 0.76, 0.30, 0.96, 0.34, 1.00, 1.00, 0.00, 1.00,
               0.04, 0.34)
BACKPACK = _tpl(0.20, 0.08, 0.40, 0.00, 0.60, 0.00, 0.80, 0.08, 0.92, 0.30, 0.96, 0.96, 0.86, 1.00, 0.14, 1.00,
                0.04, 0.96, 0.08, 0.30)
HYDRANT = _tpl(0.30, 0.08, 0.50, 0.00, 0.70, 0.08, 0.72, 0.22, 0.98, 0.30, 0.98, 0.46, 0.76, 0.50, 0.80, 0.92,
               0.92, 0.94, 0.92, 1.00, 0.08, 1.00, 0.08, 0.94, 0.20, 0.92, 0.24, 0.50, 0.02, 0.46, 0.02, 0.30,
               0.28, 0.22)
SIGN_POST = _tpl(0.00, 0.00, 1.00, 0.00, 1.00, 0.42, 0.56, 0.42, 0.56, 1.00, 0.44, 1.00, 0.44, 0.42, 0.00, 0.42)
BENCH = _tpl(0.00, 0.00, 1.00, 0.00, 1.00, 0.40, 0.96, 0.56, 0.92, 0.56, 0.92, 1.00, 0.84, 1.00, 0.84, 0.60,
             0.16, 0.60, 0.16, 1.00, 0.08, 1.00, 0.08, 0.56, 0.04, 0.56, 0.00, 0.40)
BANANA = _tpl(0.00, 0.10, 0.08, 0.00, 0.16, 0.30, 0.36, 0.56, 0.62, 0.64, 0.88, 0.54, 1.00, 0.44, 0.96, 0.64,
              0.72, 0.92, 0.40, 1.00, 0.16, 0.82, 0.04, 0.50)
CARROT = _tpl(0.00, 0.30, 0.10, 0.00, 0.22, 0.22, 0.30, 0.06, 0.36, 0.26, 1.00, 0.48, 1.00, 0.56, 0.30, 1.00,
              0.04, 0.70)
SLICE = _tpl(0.00, 0.00, 1.00, 0.10, 0.54, 1.00, 0.46, 1.00)
SKIS = _tpl(0.00, 0.60, 0.04, 0.30, 0.10, 0.40, 1.00, 0.40, 1.00, 1.00, 0.08, 1.00, 0.02, 0.86)
LONG_BOARD = Shape("blob", exponent=3.5, noise=0.015)
BOXY = Shape("blob", exponent=6.0, noise=0.02)
ROUNDED = Shape("blob", exponent=3.0, noise=0.04)
ROUND = Shape("blob", exponent=2.0, noise=0.05)
LUMPY = Shape("blob", exponent=2.2, noise=0.14)


def _stop_sign() -> Shape:
    """A regular octagon on a post (octagon in the top half of the box)."""
    pts: list[float] = []
    for k in range(8):
        a = math.radians(22.5 + 45.0 * k)  # screen coordinates, y down: clockwise on screen
        pts += [0.5 + 0.5 * math.cos(a), 0.25 + 0.25 * math.sin(a)]
        if k == 1:  # between the two bottom corners: the post
            bottom = 0.25 + 0.25 * math.sin(a)
            pts += [0.55, bottom, 0.55, 1.0, 0.45, 1.0, 0.45, bottom]
    return _tpl(*pts)


STOP_SIGN = _stop_sign()


# --- categories and scene themes ------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryStyle:
    """How the demo draws and names one COCO category."""

    name: str  # COCO category name
    nouns: tuple[str, ...]
    shape: Shape
    aspect: tuple[float, float]  # height / width
    area: tuple[float, float]  # fraction of the image area (log-uniform)
    colours: tuple[str, ...] = ALL_COLOURS
    patterns: tuple[str, ...] = ("plain",)
    secondary: tuple[str, ...] = ()  # pattern colour (default: any other colour)
    parts: tuple[tuple[float, float, str], ...] = ()  # (v0, v1, kind) bands in the unit box
    flip: bool = True  # may be mirrored


def _c(name, nouns, shape, aspect, area, colours=ALL_COLOURS, patterns=("plain",), **kw) -> CategoryStyle:
    return CategoryStyle(name, tuple(nouns), shape, aspect, area, tuple(colours), tuple(patterns), **kw)


_WHEELS = ((0.86, 1.0, "dark"),)
STYLES: dict[str, CategoryStyle] = {s.name: s for s in (
    _c("person", ("person",), PERSON, (2.2, 2.9), (0.004, 0.12), VIVID + ("gray", "brown"), FABRIC,
       parts=((0.0, 0.17, "skin"), (0.61, 1.0, "trousers"))),
    _c("bicycle", ("bike", "bicycle"), TWO_WHEELER, (0.55, 0.7), (0.004, 0.05), ("red", "blue", "black", "green", "yellow", "white")),
    _c("car", ("car", "vehicle", "auto"), CAR, (0.42, 0.55), (0.004, 0.12), ("red", "blue", "white", "black", "gray", "yellow", "green"),
       parts=_WHEELS),
    _c("motorcycle", ("motorcycle", "motorbike", "bike"), TWO_WHEELER, (0.6, 0.75), (0.004, 0.06),
       ("red", "black", "blue", "orange", "white")),
    _c("bus", ("bus",), BOXCAR, (0.4, 0.55), (0.03, 0.22), ("yellow", "red", "blue", "white", "green"), ("plain", "plain", "striped"),
       parts=_WHEELS),
    _c("truck", ("truck", "lorry"), TRUCK, (0.5, 0.65), (0.02, 0.2), ("white", "red", "blue", "gray", "orange", "black"), parts=_WHEELS),
    _c("boat", ("boat", "ship", "vessel"), BOAT, (0.45, 0.7), (0.003, 0.12), ("white", "red", "blue", "yellow", "orange"), ("plain", "plain", "striped")),
    _c("traffic light", ("traffic light", "light", "signal"), BOXY, (2.2, 3.0), (0.001, 0.01), ("black", "yellow", "gray")),
    _c("fire hydrant", ("fire hydrant", "hydrant"), HYDRANT, (1.3, 1.7), (0.002, 0.04), ("red", "yellow", "green", "blue")),
    _c("stop sign", ("stop sign", "sign"), STOP_SIGN, (1.8, 2.4), (0.002, 0.03), ("red",), flip=False),
    _c("parking meter", ("parking meter", "meter"), SIGN_POST, (2.4, 3.2), (0.001, 0.02), ("gray", "black", "blue")),
    _c("bench", ("bench",), BENCH, (0.38, 0.55), (0.01, 0.12), ("brown", "green", "black", "gray", "red")),
    _c("bird", ("bird",), BIRD, (0.6, 0.9), (0.0008, 0.02), ("black", "white", "brown", "blue", "red", "gray", "yellow")),
    _c("cat", ("cat", "kitty", "kitten"), QUADRUPED, (0.7, 0.9), (0.003, 0.06), ("black", "white", "gray", "orange", "brown"),
       ("plain", "plain", "striped", "spotted")),
    _c("dog", ("dog", "puppy", "pup"), QUADRUPED, (0.65, 0.9), (0.003, 0.08), ("brown", "black", "white", "gray", "yellow"),
       ("plain", "plain", "spotted")),
    _c("horse", ("horse", "pony"), QUADRUPED, (0.85, 1.05), (0.01, 0.15), ("brown", "black", "white", "gray"), ("plain", "plain", "spotted")),
    _c("sheep", ("sheep", "lamb"), LUMPY, (0.7, 0.85), (0.004, 0.08), ("white", "gray", "black", "brown")),
    _c("cow", ("cow", "cattle", "bull"), QUADRUPED, (0.7, 0.85), (0.01, 0.15), ("black", "brown", "white"), ("plain", "spotted"),
       secondary=("white", "black")),
    _c("elephant", ("elephant",), QUADRUPED, (0.8, 0.95), (0.03, 0.22), ("gray", "brown")),
    _c("bear", ("bear",), QUADRUPED, (0.7, 0.85), (0.01, 0.15), ("brown", "black", "white")),
    _c("zebra", ("zebra",), QUADRUPED, (0.75, 0.9), (0.01, 0.15), ("white",), ("striped",), secondary=("black",)),
    _c("giraffe", ("giraffe",), GIRAFFE, (1.5, 1.9), (0.01, 0.18), ("yellow", "orange"), ("spotted",), secondary=("brown",)),
    _c("backpack", ("backpack", "bag", "rucksack"), BACKPACK, (1.1, 1.35), (0.002, 0.04), VIVID, FABRIC),
    _c("umbrella", ("umbrella", "parasol"), UMBRELLA, (0.85, 1.05), (0.005, 0.1), VIVID, FABRIC),
    _c("handbag", ("handbag", "purse", "bag"), HANDBAG, (0.8, 1.0), (0.002, 0.03), ("black", "brown", "red", "pink", "white", "blue"), FABRIC),
    _c("suitcase", ("suitcase", "luggage"), BOXY, (0.7, 1.2), (0.004, 0.06), ("black", "gray", "blue", "red", "green", "brown"), ("plain", "plain", "striped")),
    _c("skis", ("skis", "ski"), SKIS, (0.08, 0.14), (0.002, 0.03), ("red", "blue", "yellow", "black", "white", "orange", "green")),
    _c("snowboard", ("snowboard", "board"), LONG_BOARD, (0.22, 0.3), (0.002, 0.04), VIVID, ("plain", "plain", "striped")),
    _c("bottle", ("bottle",), BOTTLE, (2.2, 3.0), (0.001, 0.03), ("green", "brown", "blue", "white", "red")),
    _c("wine glass", ("wine glass", "glass"), WINE_GLASS, (1.8, 2.3), (0.001, 0.02), ("white", "red", "yellow")),
    _c("cup", ("cup", "mug"), CUP, (0.9, 1.1), (0.001, 0.03), ("white", "red", "blue", "yellow", "black", "green"), FABRIC),
    _c("fork", ("fork",), UTENSIL, (0.16, 0.22), (0.0008, 0.01), ("gray", "white", "black")),
    _c("knife", ("knife",), KNIFE, (0.12, 0.18), (0.0008, 0.01), ("gray", "white", "black")),
    _c("spoon", ("spoon",), ROUNDED, (0.16, 0.24), (0.0008, 0.01), ("gray", "white", "black")),
    _c("bowl", ("bowl", "dish"), BOWL, (0.45, 0.6), (0.002, 0.06), ("white", "blue", "red", "green", "brown", "yellow"), ("plain", "plain", "striped", "spotted")),
    _c("banana", ("banana", "bananas"), BANANA, (0.45, 0.6), (0.001, 0.03), ("yellow", "green", "brown")),
    _c("apple", ("apple",), ROUND, (0.9, 1.05), (0.0008, 0.015), ("red", "green", "yellow")),
    _c("sandwich", ("sandwich", "sub"), ROUNDED, (0.45, 0.7), (0.002, 0.05), ("brown", "yellow", "white")),
    _c("orange", ("orange", "tangerine", "fruit"), ROUND, (0.9, 1.05), (0.0008, 0.015), ("orange",)),
    _c("broccoli", ("broccoli",), LUMPY, (0.8, 1.1), (0.001, 0.03), ("green",)),
    _c("carrot", ("carrot", "carrots"), CARROT, (0.25, 0.35), (0.001, 0.015), ("orange",)),
    _c("hot dog", ("hot dog", "hotdog"), LONG_BOARD, (0.3, 0.42), (0.001, 0.03), ("brown", "red")),
    _c("pizza", ("pizza", "slice"), SLICE, (0.8, 1.1), (0.002, 0.06), ("yellow", "orange", "red"), ("plain", "spotted"), secondary=("red", "green", "brown")),
    _c("donut", ("donut", "doughnut"), ROUND, (0.9, 1.05), (0.001, 0.03), ("brown", "pink", "white", "yellow"), ("plain", "spotted")),
    _c("cake", ("cake",), ROUNDED, (0.6, 0.9), (0.003, 0.08), ("white", "brown", "pink", "yellow"), ("plain", "plain", "striped")),
    _c("chair", ("chair", "seat"), CHAIR, (1.3, 1.7), (0.005, 0.08), ("brown", "black", "white", "red", "blue", "green")),
    _c("couch", ("couch", "sofa"), COUCH, (0.42, 0.55), (0.03, 0.2), ("red", "blue", "brown", "gray", "green", "black", "white"), FABRIC),
    _c("bed", ("bed",), BED, (0.42, 0.6), (0.05, 0.25), ("white", "blue", "red", "pink", "gray"), FABRIC),
    _c("toilet", ("toilet",), TOILET, (1.1, 1.4), (0.005, 0.08), ("white", "gray", "black")),
    _c("refrigerator", ("refrigerator", "fridge"), BOXY, (1.7, 2.2), (0.03, 0.18), ("white", "gray", "black", "red"), flip=False),
    _c("tv", ("tv", "television", "screen", "monitor"), TABLE_ITEM, (0.6, 0.75), (0.005, 0.1), ("black", "gray", "white")),
    _c("microwave", ("microwave",), BOXY, (0.55, 0.7), (0.004, 0.06), ("white", "black", "gray")),
    _c("oven", ("oven", "stove"), BOXY, (0.95, 1.15), (0.01, 0.12), ("white", "black", "gray")),
    _c("toaster", ("toaster",), ROUNDED, (0.65, 0.8), (0.002, 0.03), ("gray", "red", "white", "black")),
    _c("sink", ("sink", "basin"), SINK, (0.7, 0.9), (0.005, 0.06), ("white", "gray")),
    _c("laptop", ("laptop", "computer", "notebook"), LAPTOP, (0.6, 0.75), (0.003, 0.06), ("gray", "black", "white")),
    _c("book", ("book",), BOXY, (1.2, 1.5), (0.001, 0.03), VIVID, ("plain", "plain", "striped")),
    _c("clock", ("clock",), ROUND, (0.95, 1.05), (0.001, 0.03), ("white", "black", "brown", "red")),
    _c("vase", ("vase", "pot"), VASE, (1.2, 1.6), (0.002, 0.04), ("blue", "white", "red", "green", "yellow"), FABRIC),
    _c("teddy bear", ("teddy bear", "teddy", "stuffed animal", "bear"), TEDDY, (1.0, 1.2), (0.002, 0.06), ("brown", "white", "pink", "yellow")),
    _c("potted plant", ("plant", "potted plant", "flower pot"), PLANT, (1.0, 1.4), (0.002, 0.06), ("green",), parts=((0.58, 1.0, "pot"),)),
    _c("cell phone", ("phone", "cell phone", "cellphone"), BOXY, (1.7, 2.1), (0.0006, 0.008), ("black", "white", "pink", "blue"), flip=False),
    _c("remote", ("remote", "controller"), BOXY, (2.8, 3.6), (0.0006, 0.006), ("black", "gray", "white")),
    _c("mouse", ("mouse",), ROUNDED, (0.55, 0.7), (0.0006, 0.006), ("black", "white", "gray")),
    _c("keyboard", ("keyboard",), BOXY, (0.22, 0.32), (0.003, 0.04), ("black", "white", "gray")),
)}


@dataclass(frozen=True)
class Theme:
    """A scene type: one Table 10 cluster, its backdrop and the categories it shows."""

    name: str
    cluster: int  # index in the paper's Table 10
    upper: str  # "sky" | "wall"
    grounds: tuple[str, ...]  # ground textures to choose from
    categories: tuple[str, ...]
    objects: tuple[int, int]  # min, max objects per image
    weight: int = 1  # share of images


THEMES: tuple[Theme, ...] = (
    Theme("people", 0, "sky", ("pavement", "grass", "road"), ("person",), (2, 5), weight=4),
    Theme("street", 1, "sky", ("road",), ("car", "bus", "truck", "motorcycle", "bicycle"), (2, 4)),
    Theme("harbour", 4, "sky", ("water",), ("boat",), (2, 4)),
    Theme("sidewalk", 5, "sky", ("pavement",), ("fire hydrant", "stop sign", "parking meter", "bench", "traffic light"), (2, 4)),
    Theme("pasture", 6, "sky", ("grass",), ("dog", "cat", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "bird"), (2, 4)),
    Theme("luggage", 7, "wall", ("floor",), ("backpack", "umbrella", "handbag", "suitcase"), (2, 4)),
    Theme("slope", 9, "sky", ("snow",), ("skis", "snowboard"), (2, 4)),
    Theme("table", 11, "wall", ("wood",), ("bottle", "wine glass", "cup", "bowl", "fork", "knife", "spoon"), (3, 6)),
    Theme("fruit", 12, "wall", ("wood",), ("banana", "apple", "orange", "broccoli", "carrot", "sandwich"), (3, 6)),
    Theme("bakery", 13, "wall", ("counter",), ("hot dog", "pizza", "donut", "cake"), (2, 5)),
    Theme("living room", 14, "wall", ("floor",), ("chair", "couch", "bed", "toilet", "refrigerator"), (2, 3)),
    Theme("kitchen", 15, "wall", ("counter",), ("tv", "microwave", "oven", "toaster", "sink"), (2, 4)),
    Theme("desk", 16, "wall", ("wood",), ("laptop", "book", "clock", "vase", "teddy bear", "potted plant", "cell phone",
                                      "remote", "mouse", "keyboard"), (3, 6)),
)
THEME_BY_NAME: dict[str, Theme] = {t.name: t for t in THEMES}
PERSON_THEME = "people"


# --- generated records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoObject:
    """One drawn object: its annotation, the attributes its expressions use, and whether it is referred."""

    annotation: Annotation
    category: str
    colour: str
    pattern: str
    secondary: str
    size_word: str
    tone: str  # "", "dark" or "light"
    referred: bool
    expressions: tuple[str, ...]


@dataclass(frozen=True)
class DemoImage:
    """One demo image: its COCO entry, theme, objects and RGB pixels (uint8, H x W x 3)."""

    info: ImageInfo
    theme: str
    split: str
    objects: tuple[DemoObject, ...]
    pixels: np.ndarray = field(compare=False, repr=False)


@dataclass(frozen=True)
class DemoReport:
    """What ``generate_demo`` wrote, for the command line to report."""

    root: Path
    images: int
    annotations: int
    refs: int
    expressions: int
    splits: dict[str, int]  # refs per split
    clusters: dict[int, int]  # images per Table 10 cluster


# --- planning: themes and splits --------------------------------------------------------------------


def plan_themes(n_images: int, seed: int) -> list[str]:
    """Theme of each image by smooth weighted round-robin, so any prefix covers every theme evenly.

    A seeded permutation of the theme order breaks ties, so different seeds start differently.
    """
    order = rng_for(seed, "demo", "themes").permutation(len(THEMES))
    themes = [THEMES[i] for i in order]
    total = sum(t.weight for t in themes)
    current = [0] * len(themes)
    out: list[str] = []
    for _ in range(n_images):
        for i, t in enumerate(themes):
            current[i] += t.weight
        best = max(range(len(themes)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(themes[best].name)
    return out


def plan_splits(themes: Sequence[str], seed: int) -> list[str]:
    """Image-level RefCOCO+ splits: testA from people scenes only, testB from the others, no overlap.

    Proportions follow RefCOCO+ (unc): 7.5 % val, 3.75 % testA, 3.75 % testB of the images, at least
    one image each; the choice of images is a seeded hash of the image index.
    """
    n = len(themes)
    keys = seeded_keys(seed, "demo-splits", np.arange(n, dtype=np.int64))
    order = sorted(range(n), key=lambda i: (int(keys[i]), i))
    n_test = max(1, round(n * TEST_SHARE))
    n_val = max(1, round(n * VAL_SHARE))
    splits = ["train"] * n
    people = [i for i in order if themes[i] == PERSON_THEME]
    others = [i for i in order if themes[i] != PERSON_THEME]
    for i in people[:n_test]:
        splits[i] = "testA"
    for i in others[:n_test]:
        splits[i] = "testB"
    rest = [i for i in order if splits[i] == "train"]
    for i in rest[:n_val]:
        splits[i] = "val"
    return splits


# --- textures and backgrounds -----------------------------------------------------------------------

_TEXTURE_FILES = ("grass", "gravel", "brick")


@cache
def bundled_texture(name: str) -> np.ndarray:
    """A grayscale texture in [0, 1] from scikit-image's bundled data (``grass``, ``gravel``, ``brick``).

    The files ship inside the scikit-image wheel. If a future release drops one, a seeded
    fractal noise of the same size takes its place so the generator still works offline.
    """
    if name not in _TEXTURE_FILES:
        raise ValueError(f"unknown texture {name!r}; expected one of {', '.join(_TEXTURE_FILES)}")
    img = None
    try:
        import skimage.data

        path = Path(skimage.data.__file__).parent / f"{name}.png"
        if path.is_file():
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    except ImportError:
        img = None
    if img is None:
        rng = rng_for(0, "demo-texture", name)
        tex = sum(_smooth_noise(rng, 512, 512, 2**k) / (1.6**k) for k in range(2, 8))
        tex = (tex - tex.min()) / max(float(np.ptp(tex)), 1e-6)
        return tex.astype(np.float32)
    tex = img.astype(np.float32) / 255.0
    tex = (tex - tex.mean()) / max(float(tex.std()), 1e-6) * 0.18 + 0.5
    return np.clip(tex, 0.0, 1.0)


@lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    """A fixed field of sensor-like grain; images take seeded crops (drawing fresh noise is slow)."""
    rng = np.random.default_rng(20140101)
    return (rng.standard_normal((704, 704, 3)) * 0.012).astype(np.float32)


def _sensor_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tile = _noise_tile()
    y0 = int(rng.integers(0, tile.shape[0] - h + 1))
    x0 = int(rng.integers(0, tile.shape[1] - w + 1))
    return tile[y0:y0 + h, x0:x0 + w]


DEFOCUS_SIGMA = (0.4, 1.0)  # px: every demo photo is a little soft, each by its own amount


def camera_defocus(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The camera's slight global defocus (a Gaussian of σ drawn from DEFOCUS_SIGMA), before its noise.

    Photos differ in sharpness; a pasted object carries its own photo's, which is a cue a model can
    use only if the demo's images differ as photos do. Its own generator, so the scene draws are unchanged.
    """
    sigma = float(rng.uniform(*DEFOCUS_SIGMA))
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise: a coarse random grid upsampled bicubically."""
    gh = max(2, round(cells * h / max(h, w)) + 1)
    gw = max(2, round(cells * w / max(h, w)) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _texture_patch(rng: np.random.Generator, name: str, h: int, w: int, scale: float) -> np.ndarray:
    """A random crop of a bundled texture, scaled by ``scale`` and tiled to h x w (zero mean)."""
    tex = bundled_texture(name)
    scale = max(scale, (max(h, w) + 1) / min(tex.shape))  # crop always fits: no tiling seams
    sw, sh = min(tex.shape[1], max(8, int(math.ceil(w / scale)))), min(tex.shape[0], max(8, int(math.ceil(h / scale))))
    y0 = int(rng.integers(0, tex.shape[0] - sh + 1))
    x0 = int(rng.integers(0, tex.shape[1] - sw + 1))
    crop = tex[y0:y0 + sh, x0:x0 + sw]
    out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    return out - 0.5


def _jitter_colour(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0.0, amount, 3).astype(np.float32), 0.0, 1.0)


_SKIES = (
    ((0.30, 0.52, 0.85), (0.78, 0.86, 0.95)),  # clear
    ((0.55, 0.58, 0.62), (0.80, 0.81, 0.83)),  # overcast
    ((0.35, 0.40, 0.62), (0.98, 0.72, 0.45)),  # evening
    ((0.45, 0.65, 0.90), (0.92, 0.94, 0.96)),  # hazy
)
_WALLS = ((0.86, 0.82, 0.72), (0.80, 0.80, 0.78), (0.74, 0.82, 0.74), (0.72, 0.80, 0.88), (0.92, 0.88, 0.80),
          (0.78, 0.62, 0.52))
_GROUNDS: dict[str, tuple[tuple[tuple[float, float, float], ...], str, float]] = {
    # name: (base colours, texture, texture strength)
    "grass": (((0.28, 0.50, 0.18), (0.40, 0.55, 0.20), (0.52, 0.56, 0.26)), "grass", 1.0),
    "road": (((0.30, 0.30, 0.31), (0.38, 0.37, 0.36)), "gravel", 0.8),
    "pavement": (((0.62, 0.60, 0.57), (0.55, 0.54, 0.52), (0.68, 0.64, 0.58)), "gravel", 0.6),
    "water": (((0.16, 0.36, 0.52), (0.20, 0.42, 0.48), (0.12, 0.28, 0.42)), "gravel", 0.25),
    "snow": (((0.92, 0.94, 0.97), (0.86, 0.89, 0.94)), "gravel", 0.15),
    "wood": (((0.55, 0.36, 0.20), (0.66, 0.48, 0.30), (0.42, 0.27, 0.16)), "gravel", 0.25),
    "floor": (((0.60, 0.46, 0.32), (0.55, 0.55, 0.56), (0.45, 0.36, 0.30)), "gravel", 0.4),
    "counter": (((0.82, 0.80, 0.76), (0.35, 0.35, 0.36), (0.70, 0.66, 0.60)), "gravel", 0.35),
}


def _draw_upper(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """Sky (gradient and clouds) or wall (paint, brick or plaster grain, lit unevenly)."""
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    if kind == "sky":
        top, bottom = (_jitter_colour(rng, c, 0.04) for c in _SKIES[int(rng.integers(len(_SKIES)))])
        img = top * (1.0 - ys) + bottom * ys
        img = np.broadcast_to(img, (h, w, 3)).copy()
        clouds = _smooth_noise(rng, h, w, int(rng.integers(3, 7))) + 0.5 * _smooth_noise(rng, h, w, 14)
        cover = float(rng.uniform(0.3, 1.2))
        alpha = np.clip((clouds - (1.0 - cover)) * 0.6, 0.0, 0.85)[..., None]
        cloud_rgb = np.float32(rng.uniform(0.85, 1.0))
        return img * (1.0 - alpha) + cloud_rgb * alpha
    base = _jitter_colour(rng, _WALLS[int(rng.integers(len(_WALLS)))], 0.03)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    if rng.random() < 0.35:
        grain = _texture_patch(rng, "brick", h, w, float(rng.uniform(0.5, 1.0)))
        img *= (1.0 + 0.6 * grain)[..., None]
    else:
        img *= (1.0 + 0.08 * _smooth_noise(rng, h, w, 24) * 0.5)[..., None]
    img *= (0.92 + 0.12 * ys)  # light falls from the ceiling
    return img


def _wood_grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    warp = _smooth_noise(rng, h, w, 6) * 0.02
    freq = float(rng.uniform(18.0, 40.0))
    grain = np.sin((ys + warp + 0.02 * np.sin(xs * 9.0)) * freq * 2.0 * np.pi)
    planks = (np.floor(xs * rng.integers(3, 7)) % 2).astype(np.float32) * 0.06
    return 0.12 * grain + planks - 0.03


def _draw_ground(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """A textured ground plane seen in perspective: texture is drawn flat, then warped to a trapezoid."""
    colours, tex_name, strength = _GROUNDS[kind]
    base = _jitter_colour(rng, colours[int(rng.integers(len(colours)))], 0.03)
    side = max(h, w)
    flat_h, flat_w = side, side
    tex = _texture_patch(rng, tex_name, flat_h, flat_w, float(rng.uniform(0.6, 1.4)))
    mod = 1.0 + strength * 1.6 * tex
    if kind == "wood":
        mod = mod + _wood_grain(rng, flat_h, flat_w)
    elif kind == "water":
        ys = np.linspace(0.0, 1.0, flat_h, dtype=np.float32)[:, None]
        ripple = np.sin(ys * float(rng.uniform(60, 120)) + _smooth_noise(rng, flat_h, flat_w, 20) * 2.0)
        mod = mod + 0.12 * ripple
    elif kind == "pavement" or (kind == "floor" and rng.random() < 0.5):
        tile = int(rng.integers(48, 110))
        yy, xx = np.arange(flat_h)[:, None], np.arange(flat_w)[None, :]
        joints = ((yy % tile) < 3) | ((xx % tile) < 3)
        mod = mod - 0.18 * joints.astype(np.float32)
    elif kind == "road" and rng.random() < 0.8:
        yy, xx = np.arange(flat_h)[:, None], np.arange(flat_w)[None, :]
        dash = (np.abs(xx - flat_w // 2) < 6) & ((yy // 60) % 2 == 0)
        paint = np.float32(1.0) if rng.random() < 0.5 else np.float32(0.0)
        flat = base * mod[..., None]
        flat[dash] = (np.array([0.95, 0.95, 0.92], np.float32) if paint else np.array([0.95, 0.80, 0.2], np.float32))
        return _warp_ground(rng, flat, h, w)
    flat = base * mod[..., None]
    return _warp_ground(rng, flat, h, w)


def _warp_ground(rng: np.random.Generator, flat: np.ndarray, h: int, w: int) -> np.ndarray:
    size = flat.shape[0]
    spread = float(rng.uniform(0.6, 1.6))
    src = np.float32([[0, 0], [size, 0], [size, size], [0, size]])
    # The far edge spans the image width, the near edge is wider than it: texture shrinks with distance.
    dst = np.float32([[0, 0], [w, 0], [w + spread * w, h], [-spread * w, h]])
    homography = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(flat, homography, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# --- object outlines ---------------------------------------------------------------------------------


def unit_outline(shape: Shape, rng: np.random.Generator, flip: bool) -> np.ndarray:
    """An irregular closed outline (N x 2) whose bounding box is exactly the unit square."""
    if shape.kind == "blob":
        n = 56
        theta = np.arange(n, dtype=np.float64) * (2.0 * np.pi / n)
        c, s = np.cos(theta), np.sin(theta)
        # superellipse |x|^p + |y|^p = 1, its radius wobbling with a few low harmonics
        r = 1.0 / (np.abs(c) ** shape.exponent + np.abs(s) ** shape.exponent) ** (1.0 / shape.exponent)
        wobble = np.zeros_like(theta)
        for k in range(2, 7):
            wobble += rng.normal(0.0, shape.noise / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        r = r * np.clip(1.0 + wobble + rng.normal(0.0, shape.noise * 0.15, n), 0.55, 1.5)
        pts = np.stack([c * r, s * r], axis=1)
    else:
        pts = _densify(np.asarray(shape.points, dtype=np.float64), 0.07)
        amp = 0.022
        f = rng.uniform(0.8, 2.2, size=(2, 2))
        phase = rng.uniform(0, 2 * np.pi, size=2)
        dx = amp * np.sin(2 * np.pi * (f[0, 0] * pts[:, 0] + f[0, 1] * pts[:, 1]) + phase[0])
        dy = amp * np.sin(2 * np.pi * (f[1, 0] * pts[:, 0] + f[1, 1] * pts[:, 1]) + phase[1])
        pts = pts + np.stack([dx, dy], axis=1) + rng.normal(0.0, 0.004, pts.shape)
        shear = rng.normal(0.0, 0.04)
        pts[:, 0] += shear * (pts[:, 1] - 1.0)
    if flip and rng.random() < 0.5:
        pts[:, 0] = -pts[:, 0]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (pts - lo) / np.maximum(hi - lo, 1e-9)


def _densify(pts: np.ndarray, step: float) -> np.ndarray:
    out = []
    for a, b in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        n = max(1, int(math.ceil(float(np.hypot(*(b - a))) / step)))
        t = np.arange(n, dtype=np.float64)[:, None] / n
        out.append(a + (b - a) * t)
    return np.concatenate(out, axis=0)


def polygon_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """The pixels pycocotools assigns to a COCO polygon (uint8 0/1), used both to draw and to annotate."""
    rles = mask_utils.frPyObjects([list(polygon)], height, width)
    return mask_utils.decode(mask_utils.merge(rles))


# --- objects: layout, appearance, expressions --------------------------------------------------------


@dataclass
class _Layout:
    style: CategoryStyle
    box: tuple[float, float, float, float]  # x, y, w, h (float, before outline noise)


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return not (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0] or a[1] + a[3] + gap <= b[1]
                or b[1] + b[3] + gap <= a[1])


def _layout(rng: np.random.Generator, theme: Theme, w: int, h: int, horizon: int) -> list[_Layout]:
    """Objects standing on the ground, farther ones smaller, boxes never overlapping (no occlusion)."""
    n = int(rng.integers(theme.objects[0], theme.objects[1] + 1))
    picks = [STYLES[theme.categories[int(rng.integers(len(theme.categories)))]] for _ in range(n)]
    if len(theme.categories) > 1 and n > 1 and len({p.name for p in picks}) == 1:
        picks[-1] = STYLES[theme.categories[(theme.categories.index(picks[0].name) + 1) % len(theme.categories)]]
    wants = []
    for style in picks:
        lo, hi = style.area
        frac = min(AREA_CAP, AREA_BOOST * math.exp(rng.uniform(math.log(lo), math.log(hi))))
        aspect = float(rng.uniform(*style.aspect))
        wants.append((frac, aspect, style))
    wants.sort(key=lambda t: -t[0])  # place big things first
    placed: list[_Layout] = []
    depth = h - horizon
    for frac, aspect, style in wants:
        for attempt in range(40):
            t = float(rng.uniform(0.12, 1.0))
            bottom = horizon + t * (depth - 2) + 1
            scale = (0.6 + 0.4 * t) * (0.85 ** (attempt // 10))
            area = frac * w * h * scale * scale
            bw = math.sqrt(area / aspect)
            bh = bw * aspect
            limit = min(1.0, 0.92 * w / bw, (bottom - 1) / bh)
            bw, bh = bw * limit, bh * limit
            if bw < 9 or bh < 9:
                bw, bh = max(bw, 9.0), max(bh, 9.0)
                if bh > bottom - 1:
                    continue
            x = float(rng.uniform(1.0, w - bw - 1.0))
            box = (x, bottom - bh, bw, bh)
            if not any(_boxes_overlap(box, p.box, 3.0) for p in placed):
                placed.append(_Layout(style, box))
                break
    return placed


def _polygon_for(rng: np.random.Generator, item: _Layout, w: int, h: int) -> list[float]:
    x, y, bw, bh = item.box
    unit = unit_outline(item.style.shape, rng, item.style.flip)
    px = np.clip(x + unit[:, 0] * bw, 0.0, w - 0.01)
    py = np.clip(y + unit[:, 1] * bh, 0.0, h - 0.01)
    flat = np.round(np.stack([px, py], axis=1).reshape(-1), 2)
    return [float(v) for v in flat]


def _pattern_map(rng: np.random.Generator, pattern: str, h: int, w: int) -> np.ndarray:
    """Where the secondary colour shows (float 0..1, h x w) for a pattern word."""
    if pattern == "plain":
        return np.zeros((h, w), np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if pattern == "striped":
        period = max(4.0, min(h, w) / float(rng.uniform(3.0, 7.0)))
        angle = float(rng.uniform(0, np.pi))
        phase = np.sin(2 * np.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        return np.clip(phase * 3.0 + 0.5, 0.0, 1.0)
    if pattern == "checkered":
        cell = max(3, int(min(h, w) / rng.uniform(3.0, 6.0)))
        return (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    spots = np.zeros((h, w), np.uint8)
    radius = max(2, int(min(h, w) / rng.uniform(7.0, 12.0)))
    count = max(3, int(h * w / (radius * radius * 7)))
    cx = rng.integers(0, w, count)
    cy = rng.integers(0, h, count)
    rr = rng.integers(max(1, radius // 2), radius + 1, count)
    for a, b, r in zip(cx, cy, rr, strict=True):
        cv2.circle(spots, (int(a), int(b)), int(r), 1, -1)
    return spots.astype(np.float32)


def _object_appearance(rng: np.random.Generator, style: CategoryStyle, colour: str, secondary: str, pattern: str,
                       tone: float, trousers: str, patch_mask: np.ndarray, light: tuple[float, float]) -> np.ndarray:
    """Fill for one object's bounding-box patch: colour, pattern, parts, grain, shading (float RGB)."""
    h, w = patch_mask.shape
    base = _jitter_colour(rng, COLOURS[colour], 0.035) * tone
    fill = np.broadcast_to(base, (h, w, 3)).copy()
    if pattern != "plain":
        second = _jitter_colour(rng, COLOURS[secondary], 0.03) * tone
        pm = _pattern_map(rng, pattern, h, w)[..., None]
        fill = fill * (1.0 - pm) + second * pm
    vs = (np.arange(h, dtype=np.float32) + 0.5) / h
    for v0, v1, kind in style.parts:
        rows = (vs >= v0) & (vs < v1)
        if kind == "skin":
            colour_rgb = np.asarray(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], np.float32)
        elif kind == "trousers":
            colour_rgb = _jitter_colour(rng, TROUSER_COLOURS[trousers], 0.02)
        elif kind == "pot":
            colour_rgb = _jitter_colour(rng, (0.62, 0.32, 0.18), 0.04)
        else:
            colour_rgb = np.asarray((0.06, 0.06, 0.07), np.float32)
        fill[rows] = colour_rgb
    grain_name = ("grass", "gravel", "brick")[int(rng.integers(3))]
    grain = _texture_patch(rng, grain_name, h, w, float(rng.uniform(0.8, 2.5)))
    fill *= (1.0 + float(rng.uniform(0.15, 0.45)) * grain)[..., None]
    # Shading: lit side from the scene light, darker towards the silhouette edge (rounded look).
    lx, ly = light
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    side = 1.0 + 0.35 * (xs[None, :] * lx + (vs[:, None] - 0.5) * ly)
    dist = cv2.distanceTransform(np.pad(patch_mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    rim = np.clip(dist / max(2.0, 0.18 * min(h, w)), 0.0, 1.0)
    shade = side * (0.72 + 0.28 * rim)
    return np.clip(fill * shade[..., None], 0.0, 1.0)


def _size_words(areas: list[float], index: int, image_area: float, rng: np.random.Generator) -> str:
    """A size word only where it is true: relative among same-category objects, else absolute extremes."""
    mine = areas[index]
    others = [a for i, a in enumerate(areas) if i != index]
    if others:
        if mine > 1.3 * max(others):
            return str(rng.choice(["big", "large", "bigger", "biggest", "larger"]))
        if mine * 1.3 < min(others):
            return str(rng.choice(["small", "little", "smaller", "smallest"]))
        return ""
    if mine > 0.12 * image_area:
        return str(rng.choice(["big", "large", "huge"]))
    if mine < 1024:
        return str(rng.choice(["small", "little", "tiny"]))
    return ""


def _colour_word(colour: str, rng: np.random.Generator) -> str:
    return str(rng.choice(COLOUR_SPELLINGS.get(colour, (colour,))))


def _phrases(obj: dict, rng: np.random.Generator) -> list[str]:
    """Candidate appearance-only expressions for one object (duplicates removed later)."""
    nouns = obj["nouns"]
    c = _colour_word(obj["colour"], rng)
    tone = obj["tone"]
    tc = f"{tone} {c}" if tone else c
    size = obj["size"]
    adjs, pnouns = PATTERNS[obj["pattern"]]
    second = _colour_word(obj["secondary"], rng) if obj["pattern"] != "plain" else ""

    def n() -> str:
        return str(rng.choice(nouns))

    out: list[str] = []
    if obj["category"] == "person":
        g = str(rng.choice(GARMENTS))
        out += [f"{n()} in {c}", f"{n()} in {tc} {g}", f"{n()} wearing {c}", f"{n()} wearing a {c} {g}",
                f"{c} {g}", f"{c} {g} {n()}", f"{n()} with {tc} {g}"]
        if size:
            out += [f"{size} {n()}", f"{size} {n()} in {c}"]
        if adjs:
            a = str(rng.choice(adjs))
            out += [f"{n()} in {a} {g}", f"{a} {g}", f"{c} and {second} {g}", f"{n()} in {c} {a} {g}"]
        out.append(f"{n()} in {obj['trousers']} pants")
        return out
    out += [f"{c} {n()}", f"the {tc} {n()}", f"{n()} that is {c}", f"{c} colored {n()}", f"{tc} {n()}"]
    if size:
        out += [f"{size} {n()}", f"{size} {c} {n()}", f"the {size} {n()}"]
    if adjs:
        a = str(rng.choice(adjs))
        out += [f"{a} {n()}", f"{n()} with {rng.choice(pnouns)}", f"{c} and {second} {n()}", f"{c} {a} {n()}"]
    return out


def _styled(text: str, rng: np.random.Generator) -> str:
    """RefCOCO-like raw text: mostly lower case, some capitalised or shouted, occasional final punctuation."""
    r = rng.random()
    if r < 0.08:
        text = text.upper()
    elif r < 0.35:
        text = text[:1].upper() + text[1:]
    p = rng.random()
    if p < 0.12:
        text += "."
    elif p < 0.15:
        text += "!"
    return text


def normalize_expression(raw: str) -> tuple[str, tuple[str, ...]]:
    """REFER's ``sent`` and ``tokens`` for a raw text (the reader's own normalisation)."""
    return normalize_sentence(raw)


def _choose_expressions(candidates: list[str], rng: np.random.Generator) -> tuple[str, ...]:
    """2-6 distinct expressions (by normalised text), RefCOCO+ averaging about three per object."""
    k = int(rng.choice([2, 3, 4, 5, 6], p=[0.30, 0.33, 0.20, 0.11, 0.06]))
    order = rng.permutation(len(candidates))
    seen: set[str] = set()
    chosen: list[str] = []
    for i in order:
        raw = _styled(candidates[int(i)], rng)
        sent, _ = normalize_expression(raw)
        if sent in seen or not sent:
            continue
        seen.add(sent)
        chosen.append(raw)
        if len(chosen) == k:
            break
    return tuple(chosen)


# --- one image --------------------------------------------------------------------------------------


def render_demo_image(index: int, theme_name: str, split: str, seed: int,
                      category_ids: dict[str, int]) -> DemoImage:
    """Draw image ``index`` of a demo source and describe it; depends only on its arguments."""
    theme = THEME_BY_NAME[theme_name]
    rng = rng_for(seed, "demo-image", index)
    image_id = index + 1
    w, h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    horizon = int(h * rng.uniform(0.32, 0.55))

    img = np.empty((h, w, 3), np.float32)
    img[:horizon] = _draw_upper(rng, theme.upper, horizon, w)
    ground = theme.grounds[int(rng.integers(len(theme.grounds)))]
    img[horizon:] = _draw_ground(rng, ground, h - horizon, w)
    if theme.upper == "sky":  # haze where the ground meets the sky
        band = min(h - horizon, max(4, h // 10))
        fade = np.linspace(0.55, 0.0, band, dtype=np.float32)[:, None, None]
        img[horizon:horizon + band] = img[horizon:horizon + band] * (1 - fade) + img[horizon - 1:horizon] * fade
    else:  # skirting line where wall meets floor or table
        img[max(0, horizon - 3):horizon + 1] *= np.float32(0.55)

    angle = float(rng.uniform(0, 2 * np.pi))
    light = (math.cos(angle), -abs(math.sin(angle)))  # light comes from above
    layout = _layout(rng, theme, w, h, horizon)

    # Shadows first, on the ground beneath each object, offset away from the light.
    # Drawn at quarter resolution with sub-pixel precision, blurred, then scaled up (soft edges, cheap).
    shadow = np.zeros(((h + 3) // 4, (w + 3) // 4), np.float32)
    for item in layout:
        x, y, bw, bh = item.box
        cx = x + bw / 2 - light[0] * bw * 0.12
        cy = y + bh
        axes = (max(2.0, bw * 0.55), max(3.0, bh * 0.08))
        cv2.ellipse(shadow, (round(cx * 4), round(cy * 4)), (round(axes[0] * 4), round(axes[1] * 4)), 0, 0, 360,
                    1.0, -1, lineType=cv2.LINE_8, shift=4)
    shadow = cv2.resize(cv2.GaussianBlur(shadow, (0, 0), 0.8), (w, h), interpolation=cv2.INTER_LINEAR)
    img *= (1.0 - 0.45 * shadow)[..., None]

    by_category: dict[str, list[int]] = {}
    for i, item in enumerate(layout):
        by_category.setdefault(item.style.name, []).append(i)

    drafts: list[dict] = []
    for name in sorted(by_category):
        members = by_category[name]
        style = STYLES[name]
        palette = list(style.colours)
        picks = rng.permutation(len(palette))
        for j, i in enumerate(members):  # same-category objects never share a colour when avoidable
            colour = palette[int(picks[j % len(palette)])]
            drafts.append({"i": i, "colour": colour})
    drafts.sort(key=lambda d: d["i"])

    objects_px: list[tuple[list[float], np.ndarray, int]] = []
    for d in drafts:
        item = layout[d["i"]]
        poly = _polygon_for(rng, item, w, h)
        full = polygon_mask(poly, h, w)
        area = int(full.sum())
        objects_px.append((poly, full, area))

    ann_records: list[tuple[Annotation, dict]] = []
    for d, (poly, full, area) in zip(drafts, objects_px, strict=True):
        item = layout[d["i"]]
        style = item.style
        pattern = str(rng.choice(style.patterns))
        sec_choices = [c for c in (style.secondary or ALL_COLOURS) if c != d["colour"]]
        secondary = str(rng.choice(sec_choices)) if pattern != "plain" else ""
        if secondary == "" and pattern != "plain":
            pattern = "plain"
        dark_ok = d["colour"] not in ("black", "white")
        tone_value = float(rng.uniform(0.62, 1.18)) if dark_ok else float(rng.uniform(0.9, 1.05))
        tone = "dark" if tone_value < 0.78 else ("light" if tone_value > 1.1 and d["colour"] != "yellow" else "")
        trousers = str(rng.choice(list(TROUSER_COLOURS)))
        x0, y0 = max(0, int(min(poly[0::2])) - 1), max(0, int(min(poly[1::2])) - 1)
        x1, y1 = min(w, int(max(poly[0::2])) + 2), min(h, int(max(poly[1::2])) + 2)
        patch_mask = full[y0:y1, x0:x1]
        fill = _object_appearance(rng, style, d["colour"], secondary or d["colour"], pattern, tone_value,
                                  trousers, patch_mask, light)
        region = img[y0:y1, x0:x1]
        sel = patch_mask.astype(bool)
        region[sel] = fill[sel]
        px, py = poly[0::2], poly[1::2]
        bx, by = min(px), min(py)
        bbox = (round(bx, 2), round(by, 2), round(max(px) - bx, 2), round(max(py) - by, 2))
        ann = Annotation(ann_id=image_id * 100 + d["i"] + 1, image_id=image_id, category_id=category_ids[style.name],
                         bbox=bbox, area=float(area), iscrowd=0, segmentation=[poly])
        attrs = {"category": style.name, "colour": d["colour"], "secondary": secondary, "pattern": pattern,
                 "tone": tone, "area": area, "trousers": trousers}
        ann_records.append((ann, attrs))

    # Scene lighting over everything: exposure, colour cast, directional gradient, vignetting, grain.
    yy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    gradient = 1.0 + float(rng.uniform(0.1, 0.35)) * (xx * light[0] + yy * light[1])
    vignette = 1.0 - float(rng.uniform(0.1, 0.4)) * (xx * xx + yy * yy) * 2.0
    exposure = float(rng.uniform(0.8, 1.12))
    cast = np.asarray([1.0, 1.0, 1.0], np.float32) + np.asarray(rng.uniform(-0.07, 0.07, 3), np.float32)
    img *= (gradient * vignette * exposure)[..., None]
    img *= cast
    img = camera_defocus(img, rng_for(seed, "demo-camera", index))
    img += _sensor_noise(rng, h, w)
    pixels = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    # Referred objects: most, never all when there are several (RefCOCO+ skips some annotations).
    n = len(ann_records)
    n_ref = max(1, min(n, int(round(n * rng.uniform(0.55, 0.9)))))
    if n >= 3 and n_ref == n:
        n_ref = n - 1
    referred = set(int(i) for i in rng.permutation(n)[:n_ref])
    objects: list[DemoObject] = []
    for k, (ann, attrs) in enumerate(ann_records):
        peers = [j for j, (other, _) in enumerate(ann_records) if other.category_id == ann.category_id]
        areas = [float(ann_records[j][1]["area"]) for j in peers]
        size = _size_words(areas, peers.index(k), float(w * h), rng)
        expressions: tuple[str, ...] = ()
        if k in referred:
            style = STYLES[attrs["category"]]
            nouns = style.nouns
            if attrs["category"] == "person":
                nouns = (("man", "guy", "gentleman", "boy", "person") if rng.random() < 0.5
                         else ("woman", "lady", "girl", "person"))
            info = dict(attrs, nouns=nouns, size=size)
            expressions = _choose_expressions(_phrases(info, rng), rng)
        objects.append(DemoObject(annotation=ann, category=attrs["category"], colour=attrs["colour"],
                                  pattern=attrs["pattern"], secondary=attrs["secondary"], size_word=size,
                                  tone=attrs["tone"], referred=k in referred, expressions=expressions))

    file_name = f"COCO_train2014_{image_id:012d}.jpg"
    info = ImageInfo(image_id=image_id, file_name=file_name, width=w, height=h,
                     extra={"license": 1, "coco_url": "", "date_captured": "2014-01-01 00:00:00",
                            "flickr_url": "", "demo_theme": theme.name, "demo_ground_y": horizon})
    return DemoImage(info=info, theme=theme.name, split=split, objects=tuple(objects), pixels=pixels)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG bytes (libjpeg via OpenCV: deterministic for the same build)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


# --- the whole source -------------------------------------------------------------------------------


def _coco_categories() -> tuple[Category, ...]:
    return tuple(COCO_CATEGORIES)


class DemoSourceError(Exception):
    """The demo source cannot be written here (bad size, or OUT holds a source it did not make)."""


MARKER = "demo-source.json"
_IMAGE_NAME = re.compile(r"COCO_train2014_\d{12}\.jpg")


def _prepare_out(out: Path) -> set[str]:
    """Check OUT may be (re)written and return the demo image names a previous run left there.

    A previous demo source (it has the marker file) is replaced; any other REFER source is refused,
    so a mistyped path can never overwrite real RefCOCO+ files.
    """
    if out.exists() and not out.is_dir():
        raise DemoSourceError(f"{out}: exists and is not a directory")
    data_dir = out / DATASET
    existing = [p for p in (data_dir / f"refs({SPLIT_BY}).p", data_dir / "instances.json") if p.exists()]
    if existing and not (out / MARKER).is_file():
        raise DemoSourceError(f"{existing[0]}: {out} already holds a source not written by demo-source; "
                              "choose another directory")
    image_dir = out / IMAGE_SUBDIR
    if not (out / MARKER).is_file() or not image_dir.is_dir():
        return set()
    return {p.name for p in image_dir.iterdir() if _IMAGE_NAME.fullmatch(p.name)}


def generate_demo(out: str | Path, n_images: int = 200, seed: int = 0) -> DemoReport:
    """Write a complete REFER-format RefCOCO+ source at ``out`` and report what it holds.

    Layout: ``out/refcoco+/refs(unc).p``, ``out/refcoco+/instances.json`` and
    ``out/images/mscoco/images/train2014/COCO_train2014_<id>.jpg`` (the defaults of ``load_source``),
    plus ``out/demo-source.json`` recording the generator's arguments. Rerunning over an earlier demo
    source replaces it (stale images removed); any other existing source is refused.
    """
    if int(n_images) < MIN_IMAGES:
        raise DemoSourceError(f"the demo source needs at least {MIN_IMAGES} images (one per split), got {n_images}")
    out = Path(out)
    stale = _prepare_out(out)
    categories = _coco_categories()
    category_ids = {c.name: int(c.id) for c in categories}
    missing = sorted(name for name in STYLES if name not in category_ids)
    if missing:
        raise ValueError(f"COCO category table lacks demo categories: {', '.join(missing)}")

    themes = plan_themes(int(n_images), int(seed))
    splits = plan_splits(themes, int(seed))
    image_dir = out / IMAGE_SUBDIR
    image_dir.mkdir(parents=True, exist_ok=True)

    images: list[ImageInfo] = []
    annotations: list[Annotation] = []
    refs: list[Ref] = []
    sent_id = 0
    clusters: dict[int, int] = {}
    split_counts = {"train": 0, "val": 0, "testA": 0, "testB": 0}
    for index, (theme, split) in enumerate(zip(themes, splits, strict=True)):
        demo = render_demo_image(index, theme, split, int(seed), category_ids)
        write_bytes_atomic(image_dir / demo.info.file_name, encode_jpeg(demo.pixels))
        stale.discard(demo.info.file_name)
        images.append(demo.info)
        clusters[THEME_BY_NAME[theme].cluster] = clusters.get(THEME_BY_NAME[theme].cluster, 0) + 1
        stem = demo.info.file_name.rsplit(".", 1)[0]
        for obj in demo.objects:
            annotations.append(obj.annotation)
            if not obj.referred:
                continue
            sentences = []
            for raw in obj.expressions:
                sent, tokens = normalize_expression(raw)
                sentences.append(Sentence(sent_id=sent_id, raw=raw, sent=sent, tokens=tokens))
                sent_id += 1
            ann = obj.annotation
            refs.append(Ref(ref_id=len(refs), ann_id=ann.ann_id, image_id=ann.image_id, category_id=ann.category_id,
                            split=split, sentences=tuple(sentences), file_name=f"{stem}_{ann.ann_id}.jpg"))
            split_counts[split] += 1

    info = {"description": "comcoco demo source: synthetic RefCOCO+-style scenes drawn by comcoco.sources.demo",
            "version": "1.0", "year": 2014, "contributor": "comcoco", "date_created": "2014-01-01",
            "demo_seed": int(seed), "demo_images": int(n_images)}
    licenses = [{"id": 1, "name": "CC0 1.0 (synthetic images)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    write_source(out, refs, images, annotations, categories, dataset=DATASET, split_by=SPLIT_BY,
                 info=info, licenses=licenses)
    for name in sorted(stale):
        (image_dir / name).unlink(missing_ok=True)
    marker = {"generator": "comcoco.sources.demo", "images": int(n_images), "seed": int(seed),
              "dataset": DATASET, "split_by": SPLIT_BY}
    write_text_atomic(out / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return DemoReport(root=out, images=len(images), annotations=len(annotations), refs=len(refs),
                      expressions=sent_id, splits=split_counts, clusters=dict(sorted(clusters.items())))


def generate_demo_source(out: str | Path, n_images: int = 200, seed: int = 0) -> Path:
    """Write the demo source at ``out`` (see ``generate_demo``) and return ``out``."""
    return generate_demo(out, n_images=n_images, seed=seed).root
