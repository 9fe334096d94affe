"""Several referred targets per composite, told apart only by their expressions.

With one pasted object per composite the referred object is always *the pasted one*, and a model can
remove it without reading. With K pasted targets, each a sample of its own (the others stay visible in
its ground truth), only the expression says which one to remove — provided the targets' expressions
really do tell them apart. Two targets are *distinguishable* when

- the largest Jaccard similarity between an expression of one and an expression of the other is at most
  ``DISTINCT_JACCARD`` — the threshold scene matching reports backgrounds against
  (``comcoco.matching.rules``), here applied between the targets themselves; and
- when they share a category, each has an attribute word (``comcoco.text.syntax``: colour, material,
  size, clothing, pose, position …) the other lacks, so neither's expressions also describe the other.

``group_targets`` forms the composites: refs are visited in a seeded order; each joins an open group on
one of its matched backgrounds (best rank first) whose members it is distinguishable from, or opens a
new group on its best background. A group never holds one annotation twice and never more than ``k``
targets; a ref no group accepts stays alone (counted by ``group_sizes``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from comcoco.ids import stable_hash64
from comcoco.matching.rules import DISTINCT_JACCARD, sentence_words
from comcoco.records import Candidate, Ref
from comcoco.text.jaccard import jaccard, token_set
from comcoco.text.syntax import TAG_ATTRIBUTE, tag_words


@dataclass(frozen=True)
class _Words:
    sentences: tuple[frozenset[str], ...]
    attributes: frozenset[str]


def _words(ref: Ref) -> _Words:
    sents = tuple(token_set(sentence_words(s)) for s in ref.sentences)
    attrs: set[str] = set()
    for s in ref.sentences:
        words = [w.lower() for w in sentence_words(s)]
        attrs.update(w for w, t in zip(words, tag_words(words), strict=True) if t == TAG_ATTRIBUTE)
    return _Words(sents, frozenset(attrs))


def why_not_distinguishable(a: Ref, b: Ref, threshold: float = DISTINCT_JACCARD) -> str | None:
    """None when ``a`` and ``b`` can share a composite; otherwise the reason they cannot."""
    return _why(a, _words(a), b, _words(b), threshold)


def _why(a: Ref, wa: _Words, b: Ref, wb: _Words, threshold: float) -> str | None:
    sim = max((jaccard(x, y) for x in wa.sentences for y in wb.sentences), default=0.0)
    if sim > threshold:
        return f"refs {a.ref_id} and {b.ref_id}: expression similarity {sim:.2f} > {threshold}"
    if a.category_id == b.category_id and (not (wa.attributes - wb.attributes) or not (wb.attributes - wa.attributes)):
        return (f"refs {a.ref_id} and {b.ref_id}: same category {a.category_id} and no attribute word of "
                "each that the other lacks")
    return None


def group_targets(
    candidates: Sequence[Candidate],
    refs: Mapping[int, Ref],
    k: int,
    seed: int,
    threshold: float = DISTINCT_JACCARD,
) -> list[list[Candidate]]:
    """Composites of up to ``k`` mutually distinguishable targets, each on one of its matched backgrounds.

    ``candidates`` are every ref's ranked backgrounds; each ref appears in exactly one group (refs
    without candidates or without a record in ``refs`` appear in none). Groups come back ordered by
    their background and first member, members in the order they joined.
    """
    by_ref: dict[int, list[Candidate]] = {}
    for c in candidates:
        by_ref.setdefault(c.ref_id, []).append(c)
    words = {rid: _words(refs[rid]) for rid in by_ref if rid in refs}
    ranked = {rid: sorted(by_ref[rid], key=lambda c: (c.rank, c.bg_image_id)) for rid in words}
    open_on: dict[int, list[list[Candidate]]] = {}  # background → its groups with room

    def fits(g: list[Candidate], c: Candidate) -> bool:
        return all(o.ann_id != c.ann_id and _why(refs[o.ref_id], words[o.ref_id], refs[c.ref_id], words[c.ref_id],
                                                 threshold) is None for o in g)

    def join(rid: int, skip: list[Candidate] | None = None) -> bool:
        for c in ranked[rid]:
            for g in open_on.get(c.bg_image_id, ()):
                if g is not skip and fits(g, c):
                    g.append(c)
                    if len(g) >= k:
                        open_on[c.bg_image_id].remove(g)
                    return True
        return False

    groups: list[list[Candidate]] = []
    for rid in sorted(words, key=lambda rid: (stable_hash64(seed, "targets", rid), rid)):
        if not join(rid):
            g = [ranked[rid][0]]
            groups.append(g)
            open_on.setdefault(g[0].bg_image_id, []).append(g)
    # A second pass: a target still alone moves into another group with room on one of its backgrounds.
    for g in [g for g in groups if len(g) == 1]:
        if len(g) == 1 and join(g[0].ref_id, skip=g):
            open_on[g[0].bg_image_id].remove(g)
            g.clear()
    return sorted((g for g in groups if g), key=lambda g: (g[0].bg_image_id, g[0].ref_id))


def group_sizes(groups: Sequence[Sequence[Candidate]]) -> dict[int, int]:
    """How many composites hold 1, 2, … targets."""
    return dict(sorted(Counter(len(g) for g in groups).items()))
