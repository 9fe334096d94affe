"""Stable ids and seeded hashes: the same inputs give the same numbers on every machine and run.

Python's ``hash()`` is salted per process and iteration order of sets is arbitrary, so anything that
orders, breaks ties or names samples goes through here instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np


def _canonical(parts: tuple[Any, ...]) -> bytes:
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()


def stable_hash64(*parts: Any) -> int:
    """A 64-bit unsigned integer from any JSON-serialisable parts (blake2b, platform independent)."""
    return int.from_bytes(hashlib.blake2b(_canonical(parts), digest_size=8).digest(), "little")


def stable_id(*parts: Any, length: int = 16) -> str:
    """A hex id of ``length`` characters from the given parts."""
    return hashlib.blake2b(_canonical(parts), digest_size=max(4, (length + 1) // 2)).hexdigest()[:length]


def seeded_keys(seed: int, salt: int | str, ids: np.ndarray) -> np.ndarray:
    """Vectorised seeded hash of integer ids (splitmix64), for deterministic tie-breaking.

    ``salt`` separates independent uses (e.g. one per foreground object) so ties do not always
    resolve the same way across the dataset.
    """
    salt_int = salt if isinstance(salt, int) else stable_hash64(salt)
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(stable_hash64(int(seed), int(salt_int)) & int(mask))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def rng_for(seed: int, *parts: Any) -> np.random.Generator:
    """A numpy Generator seeded from ``seed`` and the identity of the thing it randomises."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stable_hash64(*parts) & 0xFFFFFFFF])


_NORMAL: dict[int, np.ndarray] = {}  # per seed, the longest draw made so far


def fixed_normal(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)``, read-only, cut from a
    kept draw: the generator fills its output in order, so every shorter draw is a prefix of a longer one
    and a fixed-seed noise field costs its drawing once per process, not once per use."""
    n = math.prod(shape)
    kept = _NORMAL.get(seed)
    if kept is None or kept.size < n:
        kept = np.random.default_rng(seed).standard_normal(max(n, 2 * (0 if kept is None else kept.size)),
                                                          dtype=np.float32)
        kept.flags.writeable = False
        _NORMAL[seed] = kept
    return kept[:n].reshape(shape)
