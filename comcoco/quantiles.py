"""numpy's default (linear) quantile of a 1-D array, bit for bit, without its general machinery.

``np.quantile`` and ``np.percentile`` spend most of a call on small arrays in argument handling and
axis bookkeeping (~60 µs); the harmonizer's fit takes six of them per object. ``quantile`` and
``percentile`` follow numpy's own steps for one axis and one q (the same dtypes: a float32 array's
percentile is interpolated in float32, a quantile at a Python float in float64), so they return what
numpy returns; tests/test_robust_exact.py compares them on many arrays.
"""

from __future__ import annotations

import numpy as np


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's quantile interpolation: a + (b − a)·t, or b − (b − a)·(1 − t) from t = 0.5 on."""
    diff = np.subtract(b, a)
    out = np.asanyarray(np.add(a, diff * t))
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5, casting="unsafe", dtype=type(out.dtype))
    return out[()] if out.ndim == 0 else out


def quantile(a: np.ndarray, q: float | np.ndarray) -> np.floating:
    """``np.quantile(a, q)`` for a 1-D float array ``a`` and one ``q`` in [0, 1]."""
    arr = np.array(a, copy=True)
    if isinstance(q, int | float) and arr.dtype.kind == "f":  # numpy: a Python q takes the array's dtype
        q = np.asanyarray(q, dtype=arr.dtype)
    n = arr.shape[0]
    vi = np.asanyarray((n - 1) * np.asanyarray(q))
    prev = np.asanyarray(np.floor(vi))
    nxt = np.asanyarray(prev + 1)
    if vi >= n - 1:
        prev, nxt = np.asanyarray(-1.0, prev.dtype), np.asanyarray(-1.0, nxt.dtype)
    elif vi < 0:
        prev, nxt = np.asanyarray(0.0, prev.dtype), np.asanyarray(0.0, nxt.dtype)
    if np.isnan(vi):
        prev, nxt = np.asanyarray(-1.0, prev.dtype), np.asanyarray(-1.0, nxt.dtype)
    pi, ni = prev.astype(np.intp), nxt.astype(np.intp)
    arr.partition((0, -1, int(pi), int(ni)))  # numpy's kth (it dedups them; the order statistics are the same)
    if np.isnan(arr[-1]):  # numpy: a slice holding a NaN has the NaN as its quantile
        return arr[-1]
    gamma = np.asanyarray(np.asanyarray(vi - pi), dtype=vi.dtype)
    return _lerp(arr[pi], arr[ni], gamma)


def percentile(a: np.ndarray, p: float) -> np.floating:
    """``np.percentile(a, p)`` for a 1-D float array ``a`` and one ``p`` in [0, 100]."""
    a = np.asanyarray(a)
    return quantile(a, np.asanyarray(np.true_divide(p, a.dtype.type(100) if a.dtype.kind == "f" else 100)))
