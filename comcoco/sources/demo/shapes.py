"""Object outlines of the demo source: template polygons and noisy superellipses in the unit box.

An outline is drawn and annotated from the same polygon (``polygon_mask`` is what pycocotools
assigns to it), so a demo annotation covers exactly the pixels its object was painted on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


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
