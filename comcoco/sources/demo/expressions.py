"""Appearance-only expressions for demo objects (colour, size, pattern, category or synonym).

Like RefCOCO+, no expression names a location: ``SPATIAL_WORDS`` lists the words never produced.
"""

from __future__ import annotations

import numpy as np

from comcoco.sources.demo.catalogue import COLOUR_SPELLINGS, GARMENTS, PATTERNS
from comcoco.sources.format import normalize_sentence

# Words RefCOCO+ forbids (appearance-only expressions): tests check none is ever produced.
SPATIAL_WORDS = frozenset(
    "left right top bottom middle center centre front back behind near nearest far farther closest "
    "above below under beside next leftmost rightmost upper lower side corner first second third last "
    "between".split()
)



def size_words(areas: list[float], index: int, image_area: float, rng: np.random.Generator) -> str:
    """A size word only where it is true: relative among same-category objects, else absolute extremes."""
    mine = areas[index]
    others = [a for i, a in enumerate(areas) if i != index]
    if others:
        if mine > 1.3 * max(others):
            return str(rng.choice(["big", "large", "bigger", "biggest", "larger"]))
        if mine * 1.3 < min(others):
            return str(rng.choice(["small", "little", "smaller", "smallest"]))
        return ""
    if mine > 0.12 * image_area:
        return str(rng.choice(["big", "large", "huge"]))
    if mine < 1024:
        return str(rng.choice(["small", "little", "tiny"]))
    return ""


def _colour_word(colour: str, rng: np.random.Generator) -> str:
    return str(rng.choice(COLOUR_SPELLINGS.get(colour, (colour,))))


def phrases(obj: dict, rng: np.random.Generator) -> list[str]:
    """Candidate appearance-only expressions for one object (duplicates removed later)."""
    nouns = obj["nouns"]
    c = _colour_word(obj["colour"], rng)
    tone = obj["tone"]
    tc = f"{tone} {c}" if tone else c
    size = obj["size"]
    adjs, pnouns = PATTERNS[obj["pattern"]]
    second = _colour_word(obj["secondary"], rng) if obj["pattern"] != "plain" else ""

    def n() -> str:
        return str(rng.choice(nouns))

    out: list[str] = []
    if obj["category"] == "person":
        g = str(rng.choice(GARMENTS))
        out += [f"{n()} in {c}", f"{n()} in {tc} {g}", f"{n()} wearing {c}", f"{n()} wearing a {c} {g}",
                f"{c} {g}", f"{c} {g} {n()}", f"{n()} with {tc} {g}"]
        if size:
            out += [f"{size} {n()}", f"{size} {n()} in {c}"]
        if adjs:
            a = str(rng.choice(adjs))
            out += [f"{n()} in {a} {g}", f"{a} {g}", f"{c} and {second} {g}", f"{n()} in {c} {a} {g}"]
        out.append(f"{n()} in {obj['trousers']} pants")
        return out
    out += [f"{c} {n()}", f"the {tc} {n()}", f"{n()} that is {c}", f"{c} colored {n()}", f"{tc} {n()}"]
    if size:
        out += [f"{size} {n()}", f"{size} {c} {n()}", f"the {size} {n()}"]
    if adjs:
        a = str(rng.choice(adjs))
        out += [f"{a} {n()}", f"{n()} with {rng.choice(pnouns)}", f"{c} and {second} {n()}", f"{c} {a} {n()}"]
    return out


def _styled(text: str, rng: np.random.Generator) -> str:
    """RefCOCO-like raw text: mostly lower case, some capitalised or shouted, occasional final punctuation."""
    r = rng.random()
    if r < 0.08:
        text = text.upper()
    elif r < 0.35:
        text = text[:1].upper() + text[1:]
    p = rng.random()
    if p < 0.12:
        text += "."
    elif p < 0.15:
        text += "!"
    return text


def normalize_expression(raw: str) -> tuple[str, tuple[str, ...]]:
    """REFER's ``sent`` and ``tokens`` for a raw text (the reader's own normalisation)."""
    return normalize_sentence(raw)


def choose_expressions(candidates: list[str], rng: np.random.Generator) -> tuple[str, ...]:
    """2-6 distinct expressions (by normalised text), RefCOCO+ averaging about three per object."""
    k = int(rng.choice([2, 3, 4, 5, 6], p=[0.30, 0.33, 0.20, 0.11, 0.06]))
    order = rng.permutation(len(candidates))
    seen: set[str] = set()
    chosen: list[str] = []
    for i in order:
        raw = _styled(candidates[int(i)], rng)
        sent, _ = normalize_expression(raw)
        if sent in seen or not sent:
            continue
        seen.add(sent)
        chosen.append(raw)
        if len(chosen) == k:
            break
    return tuple(chosen)

