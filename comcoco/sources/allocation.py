"""Keeping Python's cyclic garbage collector out of the way while a source's objects are built.

Loading RefCOCO+ allocates about 15 million objects, 2 million of them containers the collector
tracks. With the collector on, every 700 new containers trigger a collection and the older
generations are traversed again and again as they grow, which costs more than the parsing itself;
after the load, each of the three generations would still traverse the whole source once more.
None of these objects form reference cycles (they are freed by reference counting), so the
collector has nothing to find in them.

``paused_gc`` switches the collector off inside a block. ``long_lived(freeze=True)`` also moves
everything the block built into the collector's permanent generation (``gc.freeze``), which later
collections skip; it first collects once, so that no garbage already waiting is frozen with them,
and freezes nothing when the block fails. Freezing is for large sources only: whatever else is
alive at that moment is frozen too, and should it later die in a reference cycle it is never
collected, a price worth paying once per process for millions of objects, not for every small
source a long-running process (a test session) loads.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

_MAX_CENTS = 1 << 24  # two-decimal values up to 167,772.15 are looked up in a table of shared floats
_depth = 0  # nesting of long_lived blocks in this process; only the outermost collects and freezes


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector inside the block (if it was on), and restore it after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def long_lived(freeze: bool = True) -> Iterator[None]:
    """Build objects that live as long as the process's source: collector off, then (``freeze``,
    outermost block only) frozen."""
    global _depth
    if not freeze:
        with paused_gc():
            yield
        return
    outermost = _depth == 0
    was_enabled = gc.isenabled()
    if outermost and was_enabled:
        gc.collect()
    gc.disable()
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        if outermost and was_enabled:  # a failed load leaves garbage, possibly in cycles: collect it
            gc.enable()
        raise
    _depth -= 1
    if outermost and was_enabled:
        gc.freeze()
        gc.enable()


class SharedFloats:
    """One float object per distinct coordinate value, shared by every polygon that has it.

    A Python float costs 24 bytes and the list slot pointing at it 8; polygon coordinates repeat a
    few thousand values (placed outlines are on quarter pixels, COCO's have two decimals), so a
    paper-size release's 9 million coordinates cost 290 MB as separate objects and about 75 MB
    shared. Zeros are kept as they are (``-0.0 == 0.0`` but they print differently).
    """

    def __init__(self) -> None:
        self._table: dict[float, float] = {}
        self._cents = np.empty(0, dtype=object)  # k / 100 at index k

    def cent_floats(self, keys: np.ndarray) -> np.ndarray:
        """The shared floats ``k / 100`` of the keys ``k`` (``two_decimals``), as an object array."""
        need = int(keys.max()) + 1 if keys.size else 0
        if need > len(self._cents):
            grown = np.empty(need, dtype=object)
            grown[: len(self._cents)] = self._cents
            grown[len(self._cents):] = (np.arange(len(self._cents), need) / 100).tolist()
            self._cents = grown
        return self._cents[keys]

    def array(self, coords: np.ndarray) -> list[float]:
        """A float array's values as shared floats; two-decimal values by table lookup, without a loop."""
        cents, exact = two_decimals(coords)
        if not exact.all():
            return self.values(coords.tolist())
        return self.cent_floats(cents.astype(np.int64)).tolist()

    def values(self, coords: Iterable[Any]) -> list[Any]:
        """``coords`` with each float the shared object for its value (other values as they are: an int
        must still print as one)."""
        get = self._table.setdefault
        return [get(v, v) if v.__class__ is float and v else v for v in coords]


def two_decimals(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rint(values * 100)`` and where it is exact: the value is the float of ``k / 100`` for an integer
    ``0 <= k < _MAX_CENTS`` (so ``round(value, 2)`` is the value itself), and not ``-0.0``."""
    cents = np.rint(values * 100)
    return cents, (cents / 100 == values) & (cents >= 0) & (cents < _MAX_CENTS) & ~np.signbit(values)


def shared_lists(values: np.ndarray, ends: Sequence[int]) -> list[list[float]]:
    """``values[start:end]`` as lists for consecutive ``ends``, in which equal values of at most two
    decimals (COCO's polygon coordinates) are one float object: a paper-size source's 9 M coordinates
    take 64 k values, and its load 270 MB less memory. Other values (and ``-0.0``, which equals ``0.0``
    but prints differently) keep their own objects."""
    values = np.asarray(values, dtype=np.float64)
    starts = [0, *ends[:-1]] if len(ends) else []
    cents, exact = two_decimals(values)
    if exact.all():  # the usual case: every list looked up in one table, nothing else allocated
        keys = cents.astype(np.int64)
        del cents, exact
        table = SharedFloats().cent_floats(np.arange(int(keys.max()) + 1 if keys.size else 0))
        return [table[keys[a:b]].tolist() for a, b in zip(starts, ends, strict=True)]
    objects = np.empty(values.shape, dtype=object)
    objects[exact] = SharedFloats().cent_floats(cents[exact].astype(np.int64))
    objects[~exact] = values[~exact].tolist()
    return [objects[a:b].tolist() for a, b in zip(starts, ends, strict=True)]
