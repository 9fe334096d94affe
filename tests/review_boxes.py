"""Boxes a reviewer may move a target to: inside the image and clear of its composite's other targets.

A moved box that covers another target (or its shadow, grown by the footprint margin) is refused when
the composite is made again; tests of that refusal are elsewhere, so the review tests that need an
applied move find their spot here instead of trusting the demo's geometry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from comcoco.compose.robust import FOOTPRINT_MARGIN


def _get(row: Any, key: str) -> Any:
    return row[key] if isinstance(row, Mapping) else getattr(row, key)


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def taken_by_others(workdir: Path, row: Any) -> np.ndarray:
    """H×W bool: the other ok targets of the row's composite, their effect masks grown by the margin."""
    W, H = image_size(workdir / _get(row, "composite"))
    taken = np.zeros((H, W), dtype=np.uint8)
    for other in pq.read_table(workdir / "status.parquet").to_pylist():
        if other["composite_id"] == _get(row, "composite_id") and other["sample_id"] != _get(row, "sample_id") \
                and other["status"] == "ok":
            taken |= cv2.imread(str(workdir / other["effect_mask"]), cv2.IMREAD_GRAYSCALE)
    k = 2 * FOOTPRINT_MARGIN + 1
    return cv2.dilate(taken, np.ones((k, k), np.uint8)) > 0


def is_free(workdir: Path, row: Any, box: tuple[int, int, int, int]) -> bool:
    """The box (clipped to the image) is clear of the composite's other targets."""
    taken = taken_by_others(workdir, row)
    H, W = taken.shape
    x, y, w, h = box
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    return x1 > x0 and y1 > y0 and not taken[y0:y1, x0:x1].any()


def shifted(workdir: Path, row: Any, by: int = 25) -> tuple[int, int, int, int]:
    """The row's box moved by ``by`` px (sideways first, then up or down) to a free spot inside the image."""
    x, y, w, h = (int(_get(row, k)) for k in ("box_x", "box_y", "box_w", "box_h"))
    W, H = image_size(workdir / _get(row, "composite"))
    for dx, dy in ((-by, 0), (by, 0), (0, -by), (0, by), (-2 * by, 0), (2 * by, 0)):
        nx, ny = x + dx, y + dy
        if nx >= 0 and ny >= 0 and nx + w <= W and ny + h <= H and is_free(workdir, row, (nx, ny, w, h)):
            return nx, ny, w, h
    pytest.fail(f"no free spot {by} or {2 * by} px from {_get(row, 'sample_id')}'s box {(x, y, w, h)}")


def first_free(workdir: Path, rows: Iterable[Any], box_of) -> Any:
    """The first row for which ``box_of(row)`` is a free box (a test's case needs an applicable move)."""
    rows = list(rows)
    for row in rows:
        if is_free(workdir, row, box_of(row)):
            return row
    pytest.fail(f"none of {[_get(r, 'sample_id') for r in rows]} has a free box for this case")
