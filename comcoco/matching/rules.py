"""The matching rules shared by the fast matcher and its oracle: clusters, words, tie-breaks, caps.

Everything here is part of the definition of scene matching (see ``comcoco.matching.scene``); the
fast path (``ranking``) and the executable specification (``oracle``) both build on it, so the two can
only differ in how they search, never in what they mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from comcoco.errors import ComcocoError
from comcoco.ids import seeded_keys
from comcoco.matching.clusters import UnknownCategoryError, cluster_of
from comcoco.records import Annotation, Candidate, Ref, Sentence

SIMILARITIES: tuple[str, ...] = ("max", "union")
USAGE_ORDER_SALT = "usage-order"
# Two expression sets whose largest pairwise Jaccard similarity is at most this are *distinct*: a
# background is unlike its object (``match_summary`` counts chosen backgrounds above it), and targets
# pasted into one composite must be distinct from each other (``comcoco.matching.targets``).
DISTINCT_JACCARD = 0.5


class MatchingError(ComcocoError, ValueError):
    """Input records that cannot be matched (the message names the record)."""


def sentence_words(sentence: Sentence) -> Sequence[str]:
    """The raw words of a sentence: REFER ``tokens``, or ``sent`` split on spaces if tokens are empty."""
    return sentence.tokens if sentence.tokens else sentence.sent.split()


def check_args(k: int, similarity: str, max_uses: int | None) -> None:
    if int(k) < 1:
        raise MatchingError(f"--k must be at least 1, got {k}")
    if similarity not in SIMILARITIES:
        raise MatchingError(f"--similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
    if max_uses is not None and int(max_uses) < 1:
        raise MatchingError(f"--max-uses must be at least 1 (or none for no cap), got {max_uses}")


def ref_cluster(ref: Ref) -> int:
    try:
        return cluster_of(ref.category_id)
    except UnknownCategoryError:
        raise MatchingError(
            f"ref {ref.ref_id} (ann {ref.ann_id}, image {ref.image_id}): category_id {ref.category_id} "
            "is not a COCO category"
        ) from None


def image_clusters(annotations: Sequence[Annotation]) -> dict[int, np.ndarray]:
    """Cluster index → sorted image ids of every image with an annotation of that cluster."""
    if not annotations:
        return {}
    img = np.fromiter((a.image_id for a in annotations), dtype=np.int64, count=len(annotations))
    cats = np.fromiter((a.category_id for a in annotations), dtype=np.int64, count=len(annotations))
    ucats, inv = np.unique(cats, return_inverse=True)
    ucl = np.empty(len(ucats), dtype=np.int64)
    for i, cid in enumerate(ucats.tolist()):
        try:
            ucl[i] = cluster_of(cid)
        except UnknownCategoryError:
            bad = next(a for a in annotations if a.category_id == cid)
            raise MatchingError(
                f"annotation {bad.ann_id} (image {bad.image_id}): category_id {cid} is not a COCO category"
            ) from None
    cl = ucl[inv]
    pairs = np.unique(np.stack([cl, img], axis=1), axis=0)
    out: dict[int, np.ndarray] = {}
    for c in np.unique(pairs[:, 0]).tolist():
        out[int(c)] = pairs[pairs[:, 0] == c, 1].copy()
    return out


def unique_ref_ids(refs: Sequence[Ref]) -> None:
    seen: set[int] = set()
    for r in refs:
        if r.ref_id in seen:
            raise MatchingError(f"ref_id {r.ref_id} appears more than once")
        seen.add(r.ref_id)


def usage_order(seed: int, ref_ids: np.ndarray) -> np.ndarray:
    """Positions of refs in the order the usage cap visits them (a seeded hash, never input order)."""
    keys = seeded_keys(seed, USAGE_ORDER_SALT, ref_ids)
    return np.lexsort((ref_ids, keys))


def greedy_cap(
    order: Sequence[int],
    ranking: Any,
    k: int,
    max_uses: int,
) -> dict[int, list[tuple[int, float]]]:
    """Deterministic greedy usage cap: each ref, in ``order``, takes its best unsaturated images.

    ``ranking(pos)`` yields (image_id, similarity) best first for the ref at position ``pos``.
    """
    uses: dict[int, int] = {}
    chosen: dict[int, list[tuple[int, float]]] = {}
    for pos in order:
        picks: list[tuple[int, float]] = []
        for image_id, sim in ranking(pos):
            if uses.get(image_id, 0) < max_uses:
                picks.append((image_id, sim))
                if len(picks) == k:
                    break
        for image_id, _ in picks:
            uses[image_id] = uses.get(image_id, 0) + 1
        chosen[pos] = picks
    return chosen


def to_candidates(refs: Sequence[Ref], clusters: Sequence[int], chosen: dict[int, Any]) -> list[Candidate]:
    out: list[Candidate] = []
    for pos in sorted(chosen, key=lambda p: refs[p].ref_id):
        r = refs[pos]
        for rank, (image_id, sim) in enumerate(chosen[pos], start=1):
            out.append(
                Candidate(
                    ref_id=int(r.ref_id),
                    ann_id=int(r.ann_id),
                    fg_image_id=int(r.image_id),
                    category_id=int(r.category_id),
                    cluster=int(clusters[pos]),
                    rank=rank,
                    bg_image_id=int(image_id),
                    similarity=float(sim),
                )
            )
    return out

