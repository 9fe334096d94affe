"""The robust profile's way of pasting one object: effects travel with it, and nothing gives it away.

For one target, in order (docs/compose.md, "Shortcut-resistant composites"):

1. cut at the placed size, then refine the matte at the edge and remove the source's colour spill
   (``matte``); the binary mask stays alpha ≥ 0.5;
2. harmonize against the *background* (not the running composite): the six filters are fitted on the
   background with this object alone pasted, and applied to the object's own colours, so one target's
   look never depends on another's and a reviewer's move of one target leaves the others' pixels alone;
3. match the scene's camera: blur and seeded noise on the object only (``camera``); then give the
   object back the rim it had in its own photo, read on the composite (``rim``): the matte, the
   harmonization and the silhouette blur lighten it;
4. cast its shadow on the canvas (``shadow``; light estimated once per background from its annotated
   objects' own shadows, its gradient, or a default), clipped off every other target's footprint;
5. paste, then re-encode the object's region on the background's JPEG grid at its quality (``jpeg``).

What the object changed — alpha > 0, its shadow's and its JPEG step's footprints — is its *touched*
set; ``effect_mask`` is the binary mask ∪ touched. The ground truth restores exactly the touched pixels
to the background, so the pair is byte-identical outside ``effect_mask`` (grown by 8 px or not).
Targets keep ``FOOTPRINT_MARGIN`` px between their footprints, so no 16-px JPEG block holds two.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from comcoco.compose.camera import match_camera, outline_band, scene_camera
from comcoco.compose.cutout import MASK_THRESHOLD, Cutout
from comcoco.compose.jpeg import JpegEstimate, estimate_jpeg_quality, jpeg_regrid
from comcoco.compose.matte import mask_polygons, refine_cutout
from comcoco.compose.rim import match_rim, source_rim
from comcoco.compose.scene_shadow import ShadowTemplate, learn_template, template_shadow
from comcoco.compose.shadow import Light, NativeObject, apply_shadow, cast_shadow, estimate_light
from comcoco.ids import rng_for
from comcoco.records import Annotation, FilterArgs

FOOTPRINT_MARGIN = 18  # px between targets' footprints: a 16-px JPEG block and a 2-px margin
# The re-encoding is taken back on the object only: a chroma ring around it (the module's ``bleed``)
# measured as *more* chroma bleed than the scenes' own edges carry (the object already brings its own).
JPEG_BLEED = 0
# The camera step blurs the silhouette by up to 3 px σ; its visible tail (≥ 1/255) ends within 8 px.
EDGE_PAD = 8


@dataclass(frozen=True)
class Scene:
    """What the robust recipe measures once per background."""

    light: Light
    jpeg: JpegEstimate
    camera: object  # comcoco.compose.camera.SceneCamera
    template: ShadowTemplate | None = None  # the scene's own shadow, when its objects show one


def measure_scene(background: np.ndarray, path: Path | None, annotations: tuple[Annotation, ...]) -> Scene:
    """Light, JPEG quality and camera of a background (from its file's tables when it is a JPEG)."""
    natives = [n for n in (NativeObject.from_annotation(a.bbox, a.segmentation) for a in annotations) if n is not None]
    outlines = filled = None
    if natives:
        filled = np.zeros(background.shape[:2], np.uint8)
        for n in natives:
            cv2.fillPoly(filled, [np.rint(q).astype(np.int32).reshape(-1, 1, 2) for q in n.polygons], 1)
        outlines = outline_band(filled > 0)
    return Scene(light=estimate_light(background, natives, occupied=filled),
                 jpeg=estimate_jpeg_quality(path, background),
                 camera=scene_camera(background, outlines=outlines),
                 template=learn_template(background, natives, occupied=filled))  # the same fill: reused


class SceneCache:
    """Scenes already measured, by background image id and annotation ids: several composites share a
    background, and measuring it is most of what the robust recipe spends per composite. Within one
    run (or shard) an image id names the same pixels, file and annotations; an LRU of ``maxsize``
    scenes (a few KiB each). Not shared between threads."""

    def __init__(self, maxsize: int = 512):
        self._maxsize = maxsize
        self._items: OrderedDict[tuple[int, tuple[int, ...]], Scene] = OrderedDict()

    def get(self, image_id: int, background: np.ndarray, path: Path | None,
            annotations: tuple[Annotation, ...]) -> Scene:
        key = (int(image_id), tuple(int(a.ann_id) for a in annotations))
        scene = self._items.get(key)
        if scene is None:
            scene = self._items[key] = measure_scene(background, path, annotations)
            if len(self._items) > self._maxsize:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return scene


@dataclass
class Pasted:
    """One target's result: its final alpha and colours, what it touched, and what was done."""

    cut: Cutout  # final rgb and alpha (after matte and camera), polygons of the final mask
    args: FilterArgs
    touched: np.ndarray  # H×W bool: every pixel this target changed
    mask: np.ndarray  # H×W uint8 0/255: alpha ≥ 0.5
    effect: np.ndarray  # H×W uint8 0/255: mask ∪ touched
    info: dict[str, object]
    box: tuple[int, int, int, int]  # the placed box (the cut's own box is grown by ``EDGE_PAD``)


def harmonized_colours(bg: np.ndarray, cut: Cutout, method: str, network: object,
                       source: np.ndarray | None = None) -> tuple[np.ndarray, FilterArgs]:
    """The object's colours harmonized against the background alone (see the module docstring); with
    ``fit`` and its ``source`` photo, by the two photos' statistics (``comcoco.harmonize.scenes``)."""
    from comcoco.harmonize.fit import harmonize
    from comcoco.harmonize.scenes import harmonize_object_between

    if method == "none":
        return cut.rgb, FilterArgs()
    x, y, w, h = cut.box
    sel = cut.alpha > 0
    if method == "fit" and source is not None:  # harmonize_between's bytes, on the object's box only
        return harmonize_object_between(source, bg, cut.rgb, sel, cut.box)
    trial = bg.copy()
    trial[y:y + h, x:x + w][sel] = cut.rgb[sel]
    full = np.zeros(bg.shape[:2], np.float32)
    full[y:y + h, x:x + w][sel] = 1.0
    net = np.zeros(bg.shape[:2], bool)  # the network sees alpha ≥ 0.5, as Harmonizer's inference does
    net[y:y + h, x:x + w] = cut.alpha >= 0.5
    out, args = harmonize(trial, full, method, network, network_mask=net)
    if out.shape != bg.shape or out.dtype != np.uint8:
        raise ValueError(f"harmonizer returned {out.dtype} {out.shape}, expected uint8 {bg.shape}")
    rgb = cut.rgb.copy()
    rgb[sel] = out[y:y + h, x:x + w][sel]
    return rgb, args if isinstance(args, FilterArgs) else FilterArgs.from_sequence(args)


def _full(local: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    x, y, w, h = box
    out[y:y + h, x:x + w] = local
    return out


def paste_target(canvas: np.ndarray, bg: np.ndarray, cut: Cutout, scene: Scene, forbidden: np.ndarray,
                 method: str, network: object, seed: int, key: str, source: np.ndarray | None = None) -> Pasted:
    """Steps 1–5 of the module docstring for one target, on ``canvas`` in place.

    ``forbidden`` (H×W bool) is every other target's footprint grown by the margin; the shadow is kept
    off it. ``source`` is the photo the object was cut from (harmonization compares the two photos).
    Raises on a harmonizer failure before the canvas is touched.
    """
    H, W = canvas.shape[:2]
    placed_box = cut.box
    rim = source_rim(cut.rgb, cut.alpha)  # the rim as cut from its photo (step 3)
    cut, matte = refine_cutout(cut)
    cut = _padded(cut, (W, H), EDGE_PAD)
    rgb, args = harmonized_colours(bg, cut, method, network, source)
    cam = match_camera(rgb, cut.alpha, bg, cut.box, rng_for(seed, "camera", key), scene=scene.camera,
                       jpeg=scene.jpeg if scene.jpeg.quality is not None else None)
    if rim is not None:  # the rim it had in its own photo, on the composite as it looks
        cam = replace(cam, rgb=match_rim(cam.rgb, cam.alpha, bg, cut.box, rim)[0])
    final_mask = cam.alpha >= MASK_THRESHOLD
    if not final_mask.any():  # the camera's blur cannot empty a mask, but the final cut must have one
        cam = replace(cam, alpha=cut.alpha)
        final_mask = cut.alpha >= MASK_THRESHOLD
    polys = cut.polygons if np.array_equal(final_mask, cut.mask) else \
        (mask_polygons(final_mask, (cut.box[0], cut.box[1])) or cut.polygons)
    cut = Cutout(rgb=cam.rgb, alpha=cam.alpha, box=cut.box, polygons=polys)
    if scene.template is not None:
        shadow = template_shadow(cut.alpha, cut.box, (W, H), scene.template, background=canvas)
    else:
        shadow = cast_shadow(cut.alpha, cut.box, (W, H), scene.light, background=canvas)
    if shadow.region[2] and shadow.region[3]:
        sx, sy, sw, sh = shadow.region
        shadow.map[forbidden[sy:sy + sh, sx:sx + sw]] = 0.0
    apply_shadow(canvas, shadow)
    _blend(canvas, cut)
    regrid = jpeg_regrid(canvas, cut.alpha, cut.box, scene.jpeg, bleed=JPEG_BLEED)
    regrid.apply(canvas)
    touched = _full(cut.alpha > 0, cut.box, (H, W))
    if shadow.region[2] and shadow.region[3]:
        touched |= shadow.full_effect(H, W)
    if regrid.region[2] and regrid.region[3]:
        touched |= regrid.full_effect(H, W)
    mask = _full(final_mask, cut.box, (H, W))
    info = {
        "light": scene.light.source,
        "shadow_kind": shadow.kind + (f": {shadow.reason}" if shadow.reason else ""),
        "shadow_strength": 0.0 if shadow.kind == "none" else round(float(
            shadow.map.max() if shadow.kind == "scene" else scene.light.strength), 4),
        "blur": round(float(cam.info.blur_applied), 4),
        "noise": round(float(max(cam.info.noise_added.y, 0.0)), 4),
        "jpeg_quality": regrid.quality,
        "matte": "refined" if matte.refined else f"kept: {matte.fallback}",
    }
    return Pasted(cut, args, touched, mask.view(np.uint8) * np.uint8(255), (mask | touched).view(np.uint8) * np.uint8(255),
                  info, placed_box)


def _padded(cut: Cutout, frame: tuple[int, int], pad: int) -> Cutout:
    """The cutout in a box grown by ``pad`` px (clipped to the frame), alpha 0 and edge colours there:
    room for the camera step's blurred silhouette, which reaches past the polygon's box."""
    x, y, w, h = cut.box
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(frame[0], x + w + pad), min(frame[1], y + h + pad)
    borders = (y - y0, y1 - y - h, x - x0, x1 - x - w)
    if not any(borders):
        return cut
    rgb = cv2.copyMakeBorder(cut.rgb, *borders, cv2.BORDER_REPLICATE)
    alpha = cv2.copyMakeBorder(cut.alpha, *borders, cv2.BORDER_CONSTANT, value=0.0)
    return Cutout(rgb=rgb, alpha=alpha, box=(x0, y0, x1 - x0, y1 - y0), polygons=cut.polygons)


def _blend(canvas: np.ndarray, cut: Cutout) -> None:
    """Alpha-blend ``cut`` into ``canvas`` within its box (pixels where alpha is 0 keep their bytes)."""
    x, y, w, h = cut.box
    region = canvas[y:y + h, x:x + w]
    base = region.astype(np.float32)
    out = base + cut.alpha[:, :, None] * (cut.rgb.astype(np.float32) - base)
    sel = cut.alpha > 0
    region[sel] = np.rint(out).astype(np.uint8)[sel]


def keep_out(touched: np.ndarray) -> np.ndarray:
    """A target's footprint grown by ``FOOTPRINT_MARGIN``: the pixels no other target may touch."""
    m = FOOTPRINT_MARGIN
    grown = np.zeros(touched.shape, dtype=bool)
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(touched).view(np.uint8))
    if not (w and h):
        return grown
    # nothing farther than the margin from the footprint's box can change: dilate that window only
    x0, y0 = max(0, x - m), max(0, y - m)
    x1, y1 = min(touched.shape[1], x + w + m), min(touched.shape[0], y + h + m)
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * m + 1, 2 * m + 1))
    grown[y0:y1, x0:x1] = cv2.dilate(np.ascontiguousarray(touched[y0:y1, x0:x1]).view(np.uint8), k) > 0
    return grown
