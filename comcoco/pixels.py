"""Pixel arithmetic whose result must not depend on where an array happens to sit in memory.

OpenCV's IPP-optimised ``cv2.magnitude`` rounds differently with its inputs' alignment and stride: the
same gradients at two buffer offsets give different float32 magnitudes (thousands of elements in a
few hundred thousand), so a threshold on them — which pixels count as edges — could change from one run
of a build to the next. Everything that must give the same bytes for the same inputs uses these.
"""

from __future__ import annotations

import numpy as np


def magnitude(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """√(gx² + gy²) elementwise in float32, correctly rounded (numpy's sqrt), whatever the memory layout."""
    gx = np.asarray(gx, np.float32)
    gy = np.asarray(gy, np.float32)
    return np.sqrt(gx * gx + gy * gy)
