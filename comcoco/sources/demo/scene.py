"""One demo image: backdrop, objects with shadows, scene lighting, annotations and expressions.

Everything is drawn from ``rng_for(seed, "demo-image", index)``. The steps below consume that one
generator in a fixed order (size, backdrop, light, layout, colours, outlines, paint, lighting,
referred objects, expressions), so the same arguments always give the same pixels and records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from comcoco.ids import rng_for
from comcoco.records import Annotation, ImageInfo
from comcoco.sources.demo.backdrop import camera_defocus, draw_ground, draw_upper, sensor_noise
from comcoco.sources.demo.catalogue import (
    ALL_COLOURS,
    IMAGE_SIZES,
    STYLES,
    THEME_BY_NAME,
    TROUSER_COLOURS,
    Theme,
)
from comcoco.sources.demo.expressions import choose_expressions, phrases, size_words
from comcoco.sources.demo.objects import LayoutItem, layout_objects, object_appearance, polygon_for
from comcoco.sources.demo.shapes import polygon_mask

JPEG_QUALITY = 90


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


def _backdrop(rng: np.random.Generator, theme: Theme, w: int, h: int, horizon: int) -> np.ndarray:
    """Sky or wall above the horizon, the theme's ground below it, and the seam between them."""
    img = np.empty((h, w, 3), np.float32)
    img[:horizon] = draw_upper(rng, theme.upper, horizon, w)
    ground = theme.grounds[int(rng.integers(len(theme.grounds)))]
    img[horizon:] = draw_ground(rng, ground, h - horizon, w)
    if theme.upper == "sky":  # haze where the ground meets the sky
        band = min(h - horizon, max(4, h // 10))
        fade = np.linspace(0.55, 0.0, band, dtype=np.float32)[:, None, None]
        img[horizon:horizon + band] = img[horizon:horizon + band] * (1 - fade) + img[horizon - 1:horizon] * fade
    else:  # skirting line where wall meets floor or table
        img[max(0, horizon - 3):horizon + 1] *= np.float32(0.55)
    return img


def _cast_shadows(img: np.ndarray, layout: list[LayoutItem], light: tuple[float, float]) -> None:
    """Shadows on the ground beneath each object, offset away from the light (in place, no randomness).

    Drawn at quarter resolution with sub-pixel precision, blurred, then scaled up (soft edges, cheap).
    """
    h, w = img.shape[:2]
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


def _colour_drafts(rng: np.random.Generator, layout: list[LayoutItem]) -> list[dict]:
    """A main colour per object, in layout order; same-category objects never share one when avoidable."""
    by_category: dict[str, list[int]] = {}
    for i, item in enumerate(layout):
        by_category.setdefault(item.style.name, []).append(i)
    drafts: list[dict] = []
    for name in sorted(by_category):
        members = by_category[name]
        style = STYLES[name]
        palette = list(style.colours)
        picks = rng.permutation(len(palette))
        for j, i in enumerate(members):
            colour = palette[int(picks[j % len(palette)])]
            drafts.append({"i": i, "colour": colour})
    drafts.sort(key=lambda d: d["i"])
    return drafts


def _paint_objects(rng: np.random.Generator, img: np.ndarray, layout: list[LayoutItem], drafts: list[dict],
                   light: tuple[float, float], image_id: int,
                   category_ids: dict[str, int]) -> list[tuple[Annotation, dict]]:
    """Outline every object, then paint each into ``img``; returns its annotation and attributes.

    All outlines are drawn before any paint, as the generator's order of draws requires.
    """
    h, w = img.shape[:2]
    objects_px: list[tuple[list[float], np.ndarray, int]] = []
    for d in drafts:
        item = layout[d["i"]]
        poly = polygon_for(rng, item, w, h)
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
        fill = object_appearance(rng, style, d["colour"], secondary or d["colour"], pattern, tone_value,
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
    return ann_records


def _scene_lighting(rng: np.random.Generator, img: np.ndarray, light: tuple[float, float],
                   camera: np.random.Generator) -> np.ndarray:
    """Exposure, colour cast, directional gradient, vignetting, defocus (``camera``'s draws) and grain
    over everything; uint8 RGB."""
    h, w = img.shape[:2]
    yy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    gradient = 1.0 + float(rng.uniform(0.1, 0.35)) * (xx * light[0] + yy * light[1])
    vignette = 1.0 - float(rng.uniform(0.1, 0.4)) * (xx * xx + yy * yy) * 2.0
    exposure = float(rng.uniform(0.8, 1.12))
    cast = np.asarray([1.0, 1.0, 1.0], np.float32) + np.asarray(rng.uniform(-0.07, 0.07, 3), np.float32)
    img *= (gradient * vignette * exposure)[..., None]
    img *= cast
    img = camera_defocus(img, camera)
    img += sensor_noise(rng, h, w)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _describe(rng: np.random.Generator, ann_records: list[tuple[Annotation, dict]],
              image_area: float) -> list[DemoObject]:
    """Choose the referred objects (most, never all when there are several) and their expressions.

    RefCOCO+ skips some annotations, so the demo does too.
    """
    n = len(ann_records)
    n_ref = max(1, min(n, int(round(n * rng.uniform(0.55, 0.9)))))
    if n >= 3 and n_ref == n:
        n_ref = n - 1
    referred = set(int(i) for i in rng.permutation(n)[:n_ref])
    objects: list[DemoObject] = []
    for k, (ann, attrs) in enumerate(ann_records):
        peers = [j for j, (other, _) in enumerate(ann_records) if other.category_id == ann.category_id]
        areas = [float(ann_records[j][1]["area"]) for j in peers]
        size = size_words(areas, peers.index(k), image_area, rng)
        expressions: tuple[str, ...] = ()
        if k in referred:
            style = STYLES[attrs["category"]]
            nouns = style.nouns
            if attrs["category"] == "person":
                nouns = (("man", "guy", "gentleman", "boy", "person") if rng.random() < 0.5
                         else ("woman", "lady", "girl", "person"))
            info = dict(attrs, nouns=nouns, size=size)
            expressions = choose_expressions(phrases(info, rng), rng)
        objects.append(DemoObject(annotation=ann, category=attrs["category"], colour=attrs["colour"],
                                  pattern=attrs["pattern"], secondary=attrs["secondary"], size_word=size,
                                  tone=attrs["tone"], referred=k in referred, expressions=expressions))
    return objects


def render_demo_image(index: int, theme_name: str, split: str, seed: int,
                      category_ids: dict[str, int]) -> DemoImage:
    """Draw image ``index`` of a demo source and describe it; depends only on its arguments."""
    theme = THEME_BY_NAME[theme_name]
    rng = rng_for(seed, "demo-image", index)
    image_id = index + 1
    w, h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    horizon = int(h * rng.uniform(0.32, 0.55))
    img = _backdrop(rng, theme, w, h, horizon)

    angle = float(rng.uniform(0, 2 * np.pi))
    light = (math.cos(angle), -abs(math.sin(angle)))  # light comes from above
    layout = layout_objects(rng, theme, w, h, horizon)
    _cast_shadows(img, layout, light)

    drafts = _colour_drafts(rng, layout)
    ann_records = _paint_objects(rng, img, layout, drafts, light, image_id, category_ids)
    pixels = _scene_lighting(rng, img, light, rng_for(seed, "demo-camera", index))
    objects = _describe(rng, ann_records, float(w * h))

    info = ImageInfo(image_id=image_id, file_name=demo_file_name(image_id), width=w, height=h,
                     extra={"license": 1, "coco_url": "", "date_captured": "2014-01-01 00:00:00",
                            "flickr_url": "", "demo_theme": theme.name, "demo_ground_y": horizon})
    return DemoImage(info=info, theme=theme.name, split=split, objects=tuple(objects), pixels=pixels)


def demo_file_name(image_id: int) -> str:
    """The COCO train2014 file name of a demo image."""
    return f"COCO_train2014_{image_id:012d}.jpg"


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG bytes (libjpeg via OpenCV: deterministic for the same build)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
