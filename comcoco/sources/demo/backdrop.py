"""Backdrops of the demo scenes: sky or wall above a textured ground plane seen in perspective.

Textures come from images bundled in the installed scikit-image package (a seeded fractal noise
takes the place of a missing one); nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path

import cv2
import numpy as np

from comcoco.ids import rng_for

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


DEFOCUS_SIGMA = (0.4, 1.0)  # px: every demo photo is a little soft, each by its own amount


def camera_defocus(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The camera's slight global defocus (a Gaussian of σ drawn from DEFOCUS_SIGMA), before its noise.

    Photos differ in sharpness; a pasted object carries its own photo's, which is a cue a model can
    use only if the demo's images differ as photos do. Its own generator, so the scene draws are unchanged.
    """
    sigma = float(rng.uniform(*DEFOCUS_SIGMA))
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def sensor_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tile = _noise_tile()
    y0 = int(rng.integers(0, tile.shape[0] - h + 1))
    x0 = int(rng.integers(0, tile.shape[1] - w + 1))
    return tile[y0:y0 + h, x0:x0 + w]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise: a coarse random grid upsampled bicubically."""
    gh = max(2, round(cells * h / max(h, w)) + 1)
    gw = max(2, round(cells * w / max(h, w)) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def texture_patch(rng: np.random.Generator, name: str, h: int, w: int, scale: float) -> np.ndarray:
    """A random crop of a bundled texture, scaled by ``scale`` and tiled to h x w (zero mean)."""
    tex = bundled_texture(name)
    scale = max(scale, (max(h, w) + 1) / min(tex.shape))  # crop always fits: no tiling seams
    sw, sh = min(tex.shape[1], max(8, int(math.ceil(w / scale)))), min(tex.shape[0], max(8, int(math.ceil(h / scale))))
    y0 = int(rng.integers(0, tex.shape[0] - sh + 1))
    x0 = int(rng.integers(0, tex.shape[1] - sw + 1))
    crop = tex[y0:y0 + sh, x0:x0 + sw]
    out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    return out - 0.5


def jitter_colour(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> np.ndarray:
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


def draw_upper(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """Sky (gradient and clouds) or wall (paint, brick or plaster grain, lit unevenly)."""
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    if kind == "sky":
        top, bottom = (jitter_colour(rng, c, 0.04) for c in _SKIES[int(rng.integers(len(_SKIES)))])
        img = top * (1.0 - ys) + bottom * ys
        img = np.broadcast_to(img, (h, w, 3)).copy()
        clouds = _smooth_noise(rng, h, w, int(rng.integers(3, 7))) + 0.5 * _smooth_noise(rng, h, w, 14)
        cover = float(rng.uniform(0.3, 1.2))
        alpha = np.clip((clouds - (1.0 - cover)) * 0.6, 0.0, 0.85)[..., None]
        cloud_rgb = np.float32(rng.uniform(0.85, 1.0))
        return img * (1.0 - alpha) + cloud_rgb * alpha
    base = jitter_colour(rng, _WALLS[int(rng.integers(len(_WALLS)))], 0.03)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    if rng.random() < 0.35:
        grain = texture_patch(rng, "brick", h, w, float(rng.uniform(0.5, 1.0)))
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


def draw_ground(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """A textured ground plane seen in perspective: texture is drawn flat, then warped to a trapezoid."""
    colours, tex_name, strength = _GROUNDS[kind]
    base = jitter_colour(rng, colours[int(rng.integers(len(colours)))], 0.03)
    side = max(h, w)
    flat_h, flat_w = side, side
    tex = texture_patch(rng, tex_name, flat_h, flat_w, float(rng.uniform(0.6, 1.4)))
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

