"""What the demo source can draw and name: image sizes, colours, patterns, category styles, themes.

Each COCO category the demo uses has a style (nouns, outline, proportions, size range, colours,
patterns, parts); each scene theme is one of the paper's Table 10 clusters with its backdrop and
the categories it shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from comcoco.sources.demo.shapes import (
    BACKPACK,
    BANANA,
    BED,
    BENCH,
    BIRD,
    BOAT,
    BOTTLE,
    BOWL,
    BOXCAR,
    BOXY,
    CAR,
    CARROT,
    CHAIR,
    COUCH,
    CUP,
    GIRAFFE,
    HANDBAG,
    HYDRANT,
    KNIFE,
    LAPTOP,
    LONG_BOARD,
    LUMPY,
    PERSON,
    PLANT,
    QUADRUPED,
    ROUND,
    ROUNDED,
    SIGN_POST,
    SINK,
    SKIS,
    SLICE,
    STOP_SIGN,
    TABLE_ITEM,
    TEDDY,
    TOILET,
    TRUCK,
    TWO_WHEELER,
    UMBRELLA,
    UTENSIL,
    VASE,
    WINE_GLASS,
    Shape,
)

# Category area ranges below are typical shares of a COCO frame; the boost shifts the mix towards
# medium and large objects (as ComCOCO does), which give placement and harmonization more to do.
AREA_BOOST = 2.5
AREA_CAP = 0.3

# COCO-like image sizes (width, height); most COCO images are 640 px on the long side.
IMAGE_SIZES: tuple[tuple[int, int], ...] = (
    (640, 480), (640, 480), (640, 427), (640, 426), (640, 360), (640, 512),
    (500, 375), (612, 612), (480, 640), (427, 640),
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
