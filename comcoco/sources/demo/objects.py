"""Objects of a demo scene: where they stand, their outlines in pixels, and how they are painted."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from comcoco.sources.demo.backdrop import jitter_colour, texture_patch
from comcoco.sources.demo.catalogue import (
    AREA_BOOST,
    AREA_CAP,
    COLOURS,
    SKIN_TONES,
    STYLES,
    TROUSER_COLOURS,
    CategoryStyle,
    Theme,
)
from comcoco.sources.demo.shapes import unit_outline


@dataclass
class LayoutItem:
    style: CategoryStyle
    box: tuple[float, float, float, float]  # x, y, w, h (float, before outline noise)


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return not (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0] or a[1] + a[3] + gap <= b[1]
                or b[1] + b[3] + gap <= a[1])


def layout_objects(rng: np.random.Generator, theme: Theme, w: int, h: int, horizon: int) -> list[LayoutItem]:
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
    placed: list[LayoutItem] = []
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
                placed.append(LayoutItem(style, box))
                break
    return placed


def polygon_for(rng: np.random.Generator, item: LayoutItem, w: int, h: int) -> list[float]:
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


def object_appearance(rng: np.random.Generator, style: CategoryStyle, colour: str, secondary: str, pattern: str,
                       tone: float, trousers: str, patch_mask: np.ndarray, light: tuple[float, float]) -> np.ndarray:
    """Fill for one object's bounding-box patch: colour, pattern, parts, grain, shading (float RGB)."""
    h, w = patch_mask.shape
    base = jitter_colour(rng, COLOURS[colour], 0.035) * tone
    fill = np.broadcast_to(base, (h, w, 3)).copy()
    if pattern != "plain":
        second = jitter_colour(rng, COLOURS[secondary], 0.03) * tone
        pm = _pattern_map(rng, pattern, h, w)[..., None]
        fill = fill * (1.0 - pm) + second * pm
    vs = (np.arange(h, dtype=np.float32) + 0.5) / h
    for v0, v1, kind in style.parts:
        rows = (vs >= v0) & (vs < v1)
        if kind == "skin":
            colour_rgb = np.asarray(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], np.float32)
        elif kind == "trousers":
            colour_rgb = jitter_colour(rng, TROUSER_COLOURS[trousers], 0.02)
        elif kind == "pot":
            colour_rgb = jitter_colour(rng, (0.62, 0.32, 0.18), 0.04)
        else:
            colour_rgb = np.asarray((0.06, 0.06, 0.07), np.float32)
        fill[rows] = colour_rgb
    grain_name = ("grass", "gravel", "brick")[int(rng.integers(3))]
    grain = texture_patch(rng, grain_name, h, w, float(rng.uniform(0.8, 2.5)))
    fill *= (1.0 + float(rng.uniform(0.15, 0.45)) * grain)[..., None]
    # Shading: lit side from the scene light, darker towards the silhouette edge (rounded look).
    lx, ly = light
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    side = 1.0 + 0.35 * (xs[None, :] * lx + (vs[:, None] - 0.5) * ly)
    dist = cv2.distanceTransform(np.pad(patch_mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    rim = np.clip(dist / max(2.0, 0.18 * min(h, w)), 0.0, 1.0)
    shade = side * (0.72 + 0.28 * rim)
    return np.clip(fill * shade[..., None], 0.0, 1.0)

