"""Encoding and writing one composite's files: composite, ground truths, masks, atomically.

The compose engine makes arrays; this module turns them into bytes and files (write-then-rename, so
a file never exists half-written under its name) and fills the rows' paths. The shard runner writes
into a shard's temporary folder through it, and ``comcoco compose`` into its output folder.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comcoco.compose.cutout import dilated
from comcoco.compose.engine import ComposedGroup
from comcoco.compose.samples import SampleRow
from comcoco.config import ComposeConfig

FIDELITY_RADIUS = 8  # px: outside the mask grown by this much, composite and ground truth agree


# Single-channel masks under the fpng encoder (fpng writes only RGB and RGBA): zlib level 1 with run-length
# matching and the Sub filter, which a 0/255 mask compresses best with (about a third of the default's time).
_FAST_MASK_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                  cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _fpng_rgb(rgb: np.ndarray) -> bytes:
    import fpng  # imported here: its extension initialises a CPU dispatch at import

    return fpng.fpng_ext.encode_ndarray(np.ascontiguousarray(rgb))


def encode_image(rgb: np.ndarray, config: ComposeConfig) -> bytes:
    """Lossless PNG by the configured encoder, or JPEG with the configured quality (3-channel images).

    ``rgb`` is H×W×3 RGB or an H×W single-channel mask. fpng (the default) writes colour images; its
    masks go through OpenCV's fast settings. opencv writes every image with libpng at ``png_compression``,
    byte for byte what comcoco wrote before encoders could be chosen.
    """
    if config.image_format == "jpeg" and rgb.ndim == 3:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)])
    elif config.encoder == "fpng" and rgb.ndim == 3:
        return _fpng_rgb(rgb)
    else:
        bgr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        params = _FAST_MASK_PNG if config.encoder == "fpng" else [cv2.IMWRITE_PNG_COMPRESSION, int(config.png_compression)]
        ok, buf = cv2.imencode(".png", bgr, params)
    if not ok:
        raise RuntimeError(f"could not encode a {rgb.shape} image")
    return buf.tobytes()


def outside_error(composite: bytes, ground_truth: bytes, mask: np.ndarray, radius: int = FIDELITY_RADIUS) -> float:
    """Mean absolute difference (0–255) of the decoded pair outside the mask grown by ``radius``."""
    a = cv2.imdecode(np.frombuffer(composite, np.uint8), cv2.IMREAD_COLOR)
    b = cv2.imdecode(np.frombuffer(ground_truth, np.uint8), cv2.IMREAD_COLOR)
    keep = ~dilated(mask, radius)
    if not keep.any():
        return 0.0
    return float(np.abs(a[keep].astype(np.int16) - b[keep].astype(np.int16)).mean())


_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _write_file(path: Path, data: bytes) -> None:
    """Write beside the target, then rename: a file never exists half-written under its name.

    No fsync per file (it would cost more than the encode); the caller flushes once with
    ``os.sync()`` before it writes the samples table, which therefore marks the images durable.
    The folder is made only when the first write into it finds it missing, and the bytes go through
    a plain descriptor (no buffered file object, no tty or size probe): four files per sample.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            fd = os.open(tmp, _WRITE_FLAGS, 0o666)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, _WRITE_FLAGS, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class BytesLRU(OrderedDict):
    """Encoded bytes by key, the most recent ``maxsize`` kept (shared plain-background ground truths)."""

    def __init__(self, maxsize: int = 8):
        super().__init__()
        self.maxsize = maxsize

    def put(self, key: Any, value: bytes) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.maxsize:
            self.popitem(last=False)


def write_group(
    out_dir: str | Path, composed: ComposedGroup, config: ComposeConfig, encoded: BytesLRU | None = None
) -> list[SampleRow]:
    """Encode and write a composed group's images (write-then-rename); return its rows with paths filled.

    Paths: ``images/<composite_id>.<ext>``, ``gt/<sample_id>.<ext>``, ``masks/<sample_id>.png``, and for the
    robust profile ``effects/<sample_id>.png`` (the object and everything it changed).
    ``encoded`` caches ground-truth bytes of plain backgrounds, which many samples share.
    """
    out_dir = Path(out_dir)
    ext = config.image_ext
    rows: list[SampleRow] = []
    if composed.composite is None:
        return [cs.row for cs in composed.samples]
    comp_rel = f"images/{composed.composite_id}.{ext}"
    comp_bytes = encode_image(composed.composite, config)
    _write_file(out_dir / comp_rel, comp_bytes)
    for cs in composed.samples:
        if cs.ground_truth is None or cs.mask is None:
            rows.append(cs.row)
            continue
        key = ("bg", composed.bg_image_id)
        gt_bytes = encoded.get(key) if (encoded is not None and cs.gt_is_background) else None
        if gt_bytes is None:
            gt_bytes = encode_image(cs.ground_truth, config)
            if encoded is not None and cs.gt_is_background:
                encoded.put(key, gt_bytes)
        gt_rel = f"gt/{cs.row.sample_id}.{ext}"
        mask_rel = f"masks/{cs.row.sample_id}.png"
        _write_file(out_dir / gt_rel, gt_bytes)
        _write_file(out_dir / mask_rel, encode_image(cs.mask, config))
        effect_rel = None
        if cs.effect_mask is not None:
            effect_rel = f"effects/{cs.row.sample_id}.png"
            _write_file(out_dir / effect_rel, encode_image(cs.effect_mask, config))
        exact_outside = cs.effect_mask if cs.effect_mask is not None else cs.mask
        err = outside_error(comp_bytes, gt_bytes, exact_outside) if config.image_format == "jpeg" else 0.0
        rows.append(replace(cs.row, composite=comp_rel, ground_truth=gt_rel, mask=mask_rel, outside_error=err,
                            effect_mask=effect_rel))
    return rows
