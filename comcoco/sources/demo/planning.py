"""Which theme and which RefCOCO+ split each demo image gets, from the seed alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from comcoco.ids import rng_for, seeded_keys
from comcoco.sources.demo.catalogue import PERSON_THEME, THEMES

# RefCOCO+ (unc) image shares per split: 16,992 / 1,500 / 750 / 750 of 19,992 images.
VAL_SHARE = 1500 / 19992
TEST_SHARE = 750 / 19992


def plan_themes(n_images: int, seed: int) -> list[str]:
    """Theme of each image by smooth weighted round-robin, so any prefix covers every theme evenly.

    A seeded permutation of the theme order breaks ties, so different seeds start differently.
    """
    order = rng_for(seed, "demo", "themes").permutation(len(THEMES))
    themes = [THEMES[i] for i in order]
    total = sum(t.weight for t in themes)
    current = [0] * len(themes)
    out: list[str] = []
    for _ in range(n_images):
        for i, t in enumerate(themes):
            current[i] += t.weight
        best = max(range(len(themes)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(themes[best].name)
    return out


def plan_splits(themes: Sequence[str], seed: int) -> list[str]:
    """Image-level RefCOCO+ splits: testA from people scenes only, testB from the others, no overlap.

    Proportions follow RefCOCO+ (unc): 7.5 % val, 3.75 % testA, 3.75 % testB of the images, at least
    one image each; the choice of images is a seeded hash of the image index.
    """
    n = len(themes)
    keys = seeded_keys(seed, "demo-splits", np.arange(n, dtype=np.int64))
    order = sorted(range(n), key=lambda i: (int(keys[i]), i))
    n_test = max(1, round(n * TEST_SHARE))
    n_val = max(1, round(n * VAL_SHARE))
    splits = ["train"] * n
    people = [i for i in order if themes[i] == PERSON_THEME]
    others = [i for i in order if themes[i] != PERSON_THEME]
    for i in people[:n_test]:
        splits[i] = "testA"
    for i in others[:n_test]:
        splits[i] = "testB"
    rest = [i for i in order if splits[i] == "train"]
    for i in rest[:n_val]:
        splits[i] = "val"
    return splits

