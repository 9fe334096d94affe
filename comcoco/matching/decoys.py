"""Look-alike decoys: pasted objects no sample refers to, so finding the pastes is not finding the target.

With K targets in a composite a model that has learnt only to find pasted objects still removes the
referred one about once in K tries, whatever the sentence says. Decoys are pasted exactly as targets are
(matte, harmonization, camera, shadow, JPEG grid) but are never referred to; they stay visible in every
ground truth. Each target brings up to ``n`` of them from its **own source photo**, objects of its own
category first: those are the objects RefCOCO+'s expression was written to tell it apart from (its
annotators saw the whole photo), so the sentence stays unambiguous beside them. Taken from the target's
own photo, a decoy adds no image to the composite's leak group (release splits group samples by the
images they show).

A decoy must not fit another target's sentence. A decoy that is itself referred must pass the targets'
distinctness rule (``comcoco.matching.targets``) against every *other* target; against its own target,
whose photo it shares, only the rule's attribute half: RefCOCO+ kept an expression only when a second
player could pick its object out of that very photo, so siblings' expressions are contrastive and often
share most words ("man in blue shirt" / "man in red shirt", Jaccard 0.6), but two with no attribute word
of each that the other lacks are still refused. A decoy without expressions of its own may not share a
category with any other target. It is at least ``MIN_AREA_SHARE``
of its target's area (so decoys are sized like targets, not crumbs) and ``MIN_SIDE`` px on each side,
never a crowd annotation, never one of the composite's targets, and never chosen twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from comcoco.ids import stable_hash64
from comcoco.matching.targets import why_not_distinguishable
from comcoco.records import Annotation, Ref

MIN_AREA_SHARE = 0.25  # a decoy's area at least this share of its target's
MIN_SIDE = 8.0  # px, each side of its box in the source photo
SIBLING_JACCARD = 1.0  # against its own target no similarity limit: only the attribute rule (docstring)


def choose_decoys(
    targets: Sequence[tuple[Ref, Annotation]],
    anns_by_image: Mapping[int, Sequence[Annotation]],
    refs_by_ann: Mapping[int, Sequence[Ref]],
    n: int,
    seed: int,
    key: object,
) -> list[tuple[int, Annotation]]:
    """Up to ``n`` decoys per target as (target index, annotation), target by target.

    ``targets`` are the composite's (ref, annotation) pairs in member order; ``key`` names the composite
    (its seeded hash orders equally good decoys, so the choice is stable and independent of dict order).
    """
    if n <= 0:
        return []
    taken = {a.ann_id for _, a in targets}
    chosen: list[tuple[int, Annotation]] = []
    for i, (ref, ann) in enumerate(targets):
        others = [(r, a) for j, (r, a) in enumerate(targets) if j != i]
        usable = [d for d in anns_by_image.get(ann.image_id, ())
                  if d.ann_id not in taken and _usable(d, ann) and _fits(d, ref, others, refs_by_ann)]
        usable.sort(key=lambda d: (d.category_id != ann.category_id, stable_hash64(seed, "decoy", key, d.ann_id),
                                   d.ann_id))
        for d in usable[:n]:
            taken.add(d.ann_id)
            chosen.append((i, d))
    return chosen


def _usable(d: Annotation, target: Annotation) -> bool:
    w, h = float(d.bbox[2]), float(d.bbox[3])
    return (not d.iscrowd and w >= MIN_SIDE and h >= MIN_SIDE
            and float(d.area) >= MIN_AREA_SHARE * float(target.area))


def _fits(d: Annotation, own: Ref, others: Sequence[tuple[Ref, Annotation]],
          refs_by_ann: Mapping[int, Sequence[Ref]]) -> bool:
    """The decoy cannot be read as another target (nor, when it is referred, as its own)."""
    refs = refs_by_ann.get(d.ann_id, ())
    if not refs:  # no expression of its own to compare: it may not share another target's category
        return all(d.category_id != a.category_id for _, a in others)
    return all(why_not_distinguishable(dr, own, threshold=SIBLING_JACCARD) is None
               and all(why_not_distinguishable(dr, t) is None for t, _ in others) for dr in refs)
