"""Gradient magnitudes are the same bits wherever the arrays sit in memory (a build's edges, and so its
bytes, must not change from run to run)."""

from __future__ import annotations

import numpy as np
import pytest

from comcoco.pixels import magnitude


@pytest.mark.parametrize("shape", [(33, 17), (97, 131), (200, 301)])
def test_magnitude_does_not_depend_on_memory_layout(shape):
    h, w = shape
    rng = np.random.default_rng(0)
    a = rng.normal(0, 50, shape).astype(np.float32)
    b = rng.normal(0, 50, shape).astype(np.float32)
    ref = magnitude(a.copy(), b.copy())
    for off in range(16):  # views at every float offset inside a wider, padded buffer
        big_a = np.zeros((h + 2, w + 32), np.float32)
        big_b = np.zeros((h + 2, w + 32), np.float32)
        x, y = big_a[1:h + 1, off:off + w], big_b[1:h + 1, off:off + w]
        x[:], y[:] = a, b
        assert np.array_equal(magnitude(x, y), ref)
    exact = np.sqrt(a.astype(np.float64) ** 2 + b.astype(np.float64) ** 2)
    assert np.allclose(ref, exact, rtol=1e-6, atol=0)
