"""Spatial phrase proposals for a pasted object, read off the geometry of its new scene.

ComCOCO's expressions are appearance-only, so they stay true wherever an object is pasted; ComCOCO+
adds spatial attributes once the object sits in its new scene. Reviewers write those in stage 2, and
this module pre-fills proposals so they edit instead of typing from nothing. Two kinds:

* image-based, from the box centre in a 3x3 grid of the image ("on the left", "at the bottom right",
  "in the middle");
* object-based, relative to the background's annotated objects ("left of the couch", "above the
  table", "on the bed", "next to the person").

A proposal is only emitted when its relation holds with a margin (:class:`SpatialRules`), so a
reviewer never has to correct a phrase that contradicts the picture. Boxes are COCO ``(x, y, w, h)`` in
pixels, image size is ``(width, height)``, y grows downwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

Box = tuple[float, float, float, float]

KIND_IMAGE = "image"
KIND_OBJECT = "object"

# Object relations, in order of preference when several hold for one reference.
RELATION_ON = "on"
RELATION_LEFT_OF = "left_of"
RELATION_RIGHT_OF = "right_of"
RELATION_ABOVE = "above"
RELATION_BELOW = "below"
RELATION_NEXT_TO = "next_to"
OBJECT_RELATIONS: tuple[str, ...] = (
    RELATION_ON,
    RELATION_LEFT_OF,
    RELATION_RIGHT_OF,
    RELATION_ABOVE,
    RELATION_BELOW,
    RELATION_NEXT_TO,
)

_OBJECT_TEMPLATES = {
    RELATION_ON: "on {}",
    RELATION_LEFT_OF: "left of {}",
    RELATION_RIGHT_OF: "right of {}",
    RELATION_ABOVE: "above {}",
    RELATION_BELOW: "below {}",
    RELATION_NEXT_TO: "next to {}",
}

# Image relations are "<row> <column>" cells of the 3x3 grid; "" stands for "not asserted".
_IMAGE_TEXT = {
    ("top", "left"): "at the top left",
    ("top", "middle"): "at the top",
    ("top", "right"): "at the top right",
    ("middle", "left"): "on the left",
    ("middle", "middle"): "in the middle",
    ("middle", "right"): "on the right",
    ("bottom", "left"): "at the bottom left",
    ("bottom", "middle"): "at the bottom",
    ("bottom", "right"): "at the bottom right",
    ("", "left"): "on the left",
    ("", "right"): "on the right",
    ("top", ""): "at the top",
    ("bottom", ""): "at the bottom",
}

# COCO categories that can carry another object ("the cup on the table", "the man on the horse").
# "on" is geometric contact from above, which only reads right when the reference can support things.
SUPPORT_CATEGORIES: frozenset[str] = frozenset(
    {
        "bench", "chair", "couch", "bed", "dining table", "toilet", "sink", "oven", "microwave",
        "refrigerator", "toaster", "suitcase", "car", "truck", "bus", "train", "boat", "motorcycle",
        "bicycle", "horse", "elephant", "cow", "surfboard", "skateboard", "skis", "snowboard", "laptop",
        "keyboard", "book",
    }
)

# Names an annotator would say for a few COCO categories; the rest are used as they are.
DISPLAY_NAMES: dict[str, str] = {
    "dining table": "table",
    "potted plant": "plant",
    "sports ball": "ball",
    "cell phone": "phone",
    "hair drier": "hair dryer",
    "tv": "tv",
}


@dataclass(frozen=True)
class SpatialRules:
    """Margins that make a relation unambiguous; fractions are of the quantity named.

    grid_margin: the box centre must lie this far (fraction of the image side) from a third line
        for its grid row/column to be asserted.
    side_tolerance: left/right/above/below allow the boxes to overlap by at most this fraction of
        the smaller extent along that axis (boxes touching or nearly so).
    min_overlap: side-by-side (left/right) needs vertical overlap of at least this fraction of the
        smaller height; above/below/on need the same horizontally.
    max_gap: left/right/above/below only for references within this many times the larger extent
        along the axis (a relation to something across the image is true but useless).
    next_gap: "next to" needs a horizontal gap of at most this fraction of the smaller height and
        vertical overlap of at least ``next_overlap`` of the smaller height.
    support_depth: "on" needs the object's bottom edge within the top ``support_depth`` of the
        reference box (and no higher than ``side_tolerance`` above it).
    min_reference_area: references smaller than this fraction of the image are not named.
    max_covered: references whose area is covered more than this by the pasted box are hidden by
        it and not named.
    """

    grid_margin: float = 0.03
    side_tolerance: float = 0.1
    min_overlap: float = 0.3
    max_gap: float = 1.0
    next_gap: float = 0.25
    next_overlap: float = 0.5
    support_depth: float = 0.4
    min_reference_area: float = 0.002
    max_covered: float = 0.5


DEFAULT_RULES = SpatialRules()


@dataclass(frozen=True)
class SpatialPhrase:
    """One proposed spatial attribute.

    ``relation`` is the grid cell for image phrases ("bottom right", "left", "middle") and one of
    :data:`OBJECT_RELATIONS` for object phrases; ``reference`` indexes the ``objects`` argument.
    """

    text: str
    kind: str
    relation: str
    reference: int | None = None
    reference_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def display_name(category_name: str) -> str:
    """The word an annotator would use for a COCO category name."""
    name = category_name.strip().lower()
    return DISPLAY_NAMES.get(name, name)


def _check_box(box: Sequence[float], what: str) -> Box:
    if len(box) != 4:
        raise ValueError(f"{what}: expected (x, y, w, h), got {box!r}")
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        raise ValueError(f"{what}: width and height must be positive, got {box!r}")
    return (x, y, w, h)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _grid_cell(centre: float, size: float, margin: float) -> str:
    """'low' / 'mid' / 'high' third of an axis, or '' when the centre is within margin of a line."""
    t = centre / size
    if t < 1 / 3 - margin:
        return "low"
    if 1 / 3 + margin < t < 2 / 3 - margin:
        return "mid"
    if t > 2 / 3 + margin:
        return "high"
    return ""


def image_relation(box: Sequence[float], image_size: Sequence[int], rules: SpatialRules = DEFAULT_RULES) -> str:
    """The grid cell of the box centre as "<row> <column>", "*" for an axis not asserted; "" if none.

    Rows are top/middle/bottom, columns left/middle/right; e.g. "bottom right", "* left", "top *".
    """
    x, y, w, h = _check_box(box, "box")
    width, height = float(image_size[0]), float(image_size[1])
    cx, cy = x + w / 2, y + h / 2
    if not (0 <= cx <= width and 0 <= cy <= height):
        raise ValueError(f"box {tuple(box)!r}: centre lies outside the {width:g}x{height:g} image")
    col = {"low": "left", "mid": "middle", "high": "right", "": ""}[_grid_cell(cx, width, rules.grid_margin)]
    row = {"low": "top", "mid": "middle", "high": "bottom", "": ""}[_grid_cell(cy, height, rules.grid_margin)]
    if (row, col) not in _IMAGE_TEXT:
        # A middle on one axis with the other unclear asserts nothing useful.
        return ""
    return f"{row or '*'} {col or '*'}"


def image_phrase_text(relation: str) -> str:
    """The phrase for an :func:`image_relation` cell ("bottom right" -> "at the bottom right")."""
    row, col = relation.split(" ")
    return _IMAGE_TEXT[(row.strip("*"), col.strip("*"))]


def object_relation(a: Box, b: Box, reference_name: str = "", rules: SpatialRules = DEFAULT_RULES) -> str:
    """The preferred relation of box ``a`` to reference box ``b`` that holds with margin, or ""."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    a_right, a_bottom = ax + aw, ay + ah
    b_right, b_bottom = bx + bw, by + bh
    tol_x = rules.side_tolerance * min(aw, bw)
    tol_y = rules.side_tolerance * min(ah, bh)
    v_overlap = _overlap(ay, a_bottom, by, b_bottom)
    h_overlap = _overlap(ax, a_right, bx, b_right)
    side_by_side = v_overlap >= rules.min_overlap * min(ah, bh)
    stacked = h_overlap >= rules.min_overlap * min(aw, bw)
    max_dx = rules.max_gap * max(aw, bw)
    max_dy = rules.max_gap * max(ah, bh)

    a_cx = ax + aw / 2
    if (
        reference_name in SUPPORT_CATEGORIES
        and by - tol_y <= a_bottom <= by + rules.support_depth * bh
        and bx <= a_cx <= b_right
        and ay < by
    ):
        return RELATION_ON
    if side_by_side and a_right <= bx + tol_x and bx - a_right <= max_dx:
        return RELATION_LEFT_OF
    if side_by_side and ax >= b_right - tol_x and ax - b_right <= max_dx:
        return RELATION_RIGHT_OF
    if stacked and a_bottom <= by + tol_y and by - a_bottom <= max_dy:
        return RELATION_ABOVE
    if stacked and ay >= b_bottom - tol_y and ay - b_bottom <= max_dy:
        return RELATION_BELOW
    gap_x = max(bx - a_right, ax - b_right)  # negative when the boxes overlap horizontally
    if (
        v_overlap >= rules.next_overlap * min(ah, bh)
        and gap_x <= rules.next_gap * min(ah, bh)
        and -gap_x <= 0.5 * min(aw, bw)
    ):
        return RELATION_NEXT_TO
    return ""


def _reference_phrase(
    index: int, name: str, box: Box, named: Sequence[tuple[str, Box] | None], tol: float
) -> str | None:
    """'the X', or 'the left/right X' ('leftmost/rightmost' among 3+) when X occurs more than once.

    ``name``/``box`` describe ``named[index]``; ``named`` holds (display name, box) per object (None for
    unusable boxes). Returns None when another instance of the same name makes the reference ambiguous
    and no left/right ordinal separates it clearly (its centre left of every other instance's left
    edge, or right of every right edge).
    """
    cx = box[0] + box[2] / 2
    others = [e[1] for i, e in enumerate(named) if i != index and e is not None and e[0] == name]
    if not others:
        return f"the {name}"
    left_word, right_word = ("left", "right") if len(others) == 1 else ("leftmost", "rightmost")
    if all(cx < ox - tol for ox, _, _, _ in others):
        return f"the {left_word} {name}"
    if all(cx > ox + ow + tol for ox, _, ow, _ in others):
        return f"the {right_word} {name}"
    return None


def propose_spatial_phrases(
    box: Sequence[float],
    image_size: Sequence[int],
    objects: Sequence[tuple[str, Sequence[float]]],
    max_phrases: int = 4,
    target_category: str | None = None,
    rules: SpatialRules = DEFAULT_RULES,
) -> list[SpatialPhrase]:
    """Spatial phrases for the object at ``box`` in an image of ``image_size`` with ``objects``.

    ``objects`` are the background's annotated objects as ``(category name, box)``; the pasted object
    itself must not be among them. At most one image phrase comes first, then object phrases ordered
    by how close and how large the reference is (ties by index), one per reference, no repeated text.
    With ``target_category`` given, the image phrase is dropped when another object of that category
    has its centre in the same grid cell (it would not single the object out). Deterministic.
    """
    if max_phrases < 0:
        raise ValueError(f"max_phrases must be >= 0, got {max_phrases}")
    a = _check_box(box, "box")
    if len(image_size) != 2 or not (image_size[0] > 0 and image_size[1] > 0):
        raise ValueError(f"image_size must be (width, height) > 0, got {tuple(image_size)!r}")
    width, height = float(image_size[0]), float(image_size[1])
    named: list[tuple[str, Box] | None] = []
    for i, (name, obox) in enumerate(objects):
        if len(obox) != 4:
            raise ValueError(f"objects[{i}] ({name!r}): expected (x, y, w, h), got {tuple(obox)!r}")
        ox, oy, ow, oh = (float(v) for v in obox)
        # Degenerate annotation boxes exist in COCO; they cannot anchor a relation, so they are skipped.
        named.append((display_name(str(name)), (ox, oy, ow, oh)) if ow > 0 and oh > 0 else None)

    phrases: list[SpatialPhrase] = []
    relation = image_relation(a, image_size, rules)
    if relation and target_category is not None:
        target = display_name(target_category)
        for entry in named:
            if entry is None or entry[0] != target:
                continue
            ex, ey, ew, eh = entry[1]
            if 0 <= ex + ew / 2 <= width and 0 <= ey + eh / 2 <= height:
                if image_relation(entry[1], image_size, rules) == relation:
                    relation = ""
                    break
    if relation:
        phrases.append(SpatialPhrase(image_phrase_text(relation), KIND_IMAGE, relation))

    area_img = width * height
    scored: list[tuple[float, float, int, SpatialPhrase]] = []
    for i, entry in enumerate(named):
        if entry is None:
            continue
        b = entry[1]
        area_b = b[2] * b[3]
        if area_b < rules.min_reference_area * area_img:
            continue
        covered = _overlap(a[0], a[0] + a[2], b[0], b[0] + b[2]) * _overlap(a[1], a[1] + a[3], b[1], b[1] + b[3])
        if covered > rules.max_covered * area_b:
            continue
        rel = object_relation(a, b, str(objects[i][0]).strip().lower(), rules)
        if not rel:
            continue
        ref_text = _reference_phrase(i, entry[0], b, named, rules.side_tolerance * b[2])
        if ref_text is None:
            continue
        gap = max(b[0] - (a[0] + a[2]), a[0] - (b[0] + b[2]), b[1] - (a[1] + a[3]), a[1] - (b[1] + b[3]), 0.0)
        phrase = SpatialPhrase(_OBJECT_TEMPLATES[rel].format(ref_text), KIND_OBJECT, rel, i, ref_text[4:])
        scored.append((gap / max(width, height), -area_b / area_img, i, phrase))
    scored.sort(key=lambda t: (t[0], t[1], t[2]))
    seen = {p.text for p in phrases}
    for _, _, _, phrase in scored:
        if phrase.text not in seen:
            phrases.append(phrase)
            seen.add(phrase.text)
    return phrases[:max_phrases]
