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
from collections.abc import Iterator
from contextlib import contextmanager

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
