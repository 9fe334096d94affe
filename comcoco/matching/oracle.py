"""The executable specification of scene matching: per-pair Python, sets and nested loops.

``reference_match`` is what ``comcoco.matching.scene.match_backgrounds`` must equal exactly (tests
compare them on generated sources), and the baseline ``benchmarks/matching.py`` times.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from comcoco.ids import seeded_keys
from comcoco.matching.rules import (
    check_args,
    greedy_cap,
    image_clusters,
    ref_cluster,
    sentence_words,
    to_candidates,
    unique_ref_ids,
    usage_order,
)
from comcoco.records import Annotation, Candidate, Ref
from comcoco.text.jaccard import jaccard, normalize_stop_words, token_set


def reference_match(
    refs: Sequence[Ref],
    annotations: Sequence[Annotation],
    k: int = 5,
    seed: int = 0,
    similarity: str = "max",
    max_uses: int | None = None,
    stop_words: Collection[str] = (),
    only_ref_ids: Collection[int] | None = None,
) -> list[Candidate]:
    """The straightforward per-pair Python version of ``match_backgrounds`` (sets, nested loops).

    It is the executable definition the fast path must equal exactly, and the baseline the benchmark
    times. ``only_ref_ids`` restricts the output to some refs (not allowed with a usage cap, which
    couples all refs).
    """
    check_args(k, similarity, max_uses)
    if only_ref_ids is not None and max_uses is not None:
        raise ValueError("only_ref_ids cannot be combined with max_uses")
    unique_ref_ids(refs)
    stops = normalize_stop_words(stop_words)
    clusters = [ref_cluster(r) for r in refs]
    pools = {c: imgs.tolist() for c, imgs in image_clusters(annotations).items()}
    sent_sets = [[token_set(sentence_words(s), stops) for s in r.sentences] for r in refs]
    image_sents: dict[int, list[frozenset[str]]] = {}
    for r, sets in zip(refs, sent_sets, strict=True):
        image_sents.setdefault(r.image_id, []).extend(sets)
    wanted = None if only_ref_ids is None else set(only_ref_ids)

    def full_ranking(pos: int) -> list[tuple[int, float]]:
        r = refs[pos]
        pool = [i for i in pools.get(clusters[pos], []) if i != r.image_id]
        fg = sent_sets[pos]
        fg_union = frozenset().union(*fg)
        scored = []
        for image_id in pool:
            bg = image_sents.get(image_id, [])
            if similarity == "max":
                sim = max((jaccard(a, b) for a in fg for b in bg), default=0.0)
            else:
                sim = jaccard(fg_union, frozenset().union(*bg))
            scored.append(sim)
        keys = seeded_keys(seed, r.ref_id, np.asarray(pool, dtype=np.int64)).tolist() if pool else []
        ranked = sorted(zip(scored, keys, pool, strict=True))
        return [(image_id, sim) for sim, _, image_id in ranked]

    positions = [p for p, r in enumerate(refs) if wanted is None or r.ref_id in wanted]
    if max_uses is None:
        chosen = {p: full_ranking(p)[: int(k)] for p in positions}
    else:
        ids = np.asarray([r.ref_id for r in refs], dtype=np.int64)
        chosen = greedy_cap(usage_order(seed, ids).tolist(), full_ranking, int(k), int(max_uses))
    return to_candidates(refs, clusters, chosen)
