"""Scene matching: for every referred object, the backgrounds of its cluster it is least like.

Step 1 of the construction (paper §3.1): an object may only be pasted into an image of the same scene
cluster (Table 10), and among those the images whose expressions are least similar to the object's
own are preferred, so the pasted object's expressions do not also describe something already there.

Definitions (the reference implementation ``reference_match`` is the executable specification):

* An image belongs to the cluster of every category among its annotations (all of ``instances.json``,
  not only referred objects). A ref belongs to its category's cluster. Its pool is the images of that
  cluster minus its own image.
* Word sets come from ``comcoco.text.jaccard.token_set`` over each sentence's ``tokens`` (``sent``
  split on spaces when ``tokens`` is empty).
* ``similarity="max"``: the largest Jaccard over pairs (a sentence of the ref, a sentence of any ref
  in the background image). ``similarity="union"``: Jaccard of the ref's word union and the image's
  word union. An image without expressions has similarity 0.
* A ref's candidates are ordered by (similarity, ``seeded_keys(seed, ref_id, image_id)``, image_id);
  the first ``k`` are kept (fewer when the pool is smaller).
* ``max_uses=N`` caps how often one image is chosen over the whole dataset: refs are visited in the
  order of ``seeded_keys(seed, "usage-order", ref_id)`` and each takes its best images that are not yet
  used N times.

The fast path is vectorised: a similarity is non-zero exactly when the two word unions meet, which is
answered for a block of refs × all cluster images with per-token image bitsets. Refs with at least
``k`` zero-similarity images only need the smallest tie-break keys among those; the others get exact
similarities from sparse integer products (sentence × sentence), max-reduced per image.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from comcoco.matching import ranking
from comcoco.matching.candidates import (  # noqa: F401 (re-exported: the candidates file API moved there)
    CANDIDATE_COLUMNS,
    PARAMS_METADATA_KEY,
    CandidatesFileError,
    candidates_to_table,
    match_summary,
    read_candidates,
    read_candidates_params,
    write_candidates,
)
from comcoco.matching.clusters import CLUSTERS
from comcoco.matching.oracle import reference_match  # noqa: F401 (re-exported)
from comcoco.matching.ranking import ClusterIndex, Corpus, Ranked, capped_choice, rank_block
from comcoco.matching.rules import (  # noqa: F401 (re-exported)
    SIMILARITIES,
    USAGE_ORDER_SALT,
    MatchingError,
    check_args,
    image_clusters,
    sentence_words,
    to_candidates,
    unique_ref_ids,
    usage_order,
)
from comcoco.progress import Progress
from comcoco.records import Annotation, Candidate, Ref
from comcoco.text.jaccard import normalize_stop_words


def _progress(total: int, enabled: bool, desc: str = "matching") -> Progress:
    return Progress(desc, total, unit="ref", enabled=enabled)


def match_backgrounds(
    refs: Sequence[Ref],
    annotations: Sequence[Annotation],
    k: int = 5,
    seed: int = 0,
    similarity: str = "max",
    max_uses: int | None = None,
    stop_words: Collection[str] = (),
    progress: bool = False,
) -> list[Candidate]:
    """The ``k`` least similar backgrounds of each ref's cluster, sorted by (ref_id, rank).

    Equal to ``reference_match`` on the same arguments, computed blockwise per cluster with sparse
    word matrices. Refs whose pool (cluster images minus their own) is smaller than ``k`` get the
    whole pool; with ``max_uses`` a ref can get fewer when its cluster's images are used up.
    """
    check_args(k, similarity, max_uses)
    unique_ref_ids(refs)
    k = int(k)
    stops = normalize_stop_words(stop_words)
    corpus = Corpus.build(refs, int(seed), stops)
    pools = image_clusters(annotations)
    need = k if max_uses is None else k + max(k, ranking.CAP_MARGIN)
    ranked: dict[int, Ranked] = {}
    indexes: dict[int, ClusterIndex] = {}
    bar = _progress(len(refs), progress)
    try:
        for cluster in range(len(CLUSTERS)):
            members = np.nonzero(corpus.clusters == cluster)[0]
            if not len(members):
                continue
            members = members[np.argsort(corpus.ref_ids[members], kind="stable")]
            images = pools.get(cluster, np.zeros(0, dtype=np.int64))
            if len(images) == 0:
                for pos in members.tolist():
                    ranked[pos] = Ranked(np.zeros(0, np.int64), np.zeros(0), complete=True)
                bar.update(len(members))
                continue
            ci = ClusterIndex(corpus, images, similarity)
            step = max(1, ranking.BLOCK_ELEMS // ci.n)
            for s in range(0, len(members), step):
                rows = members[s : s + step]
                for pos, r in zip(rows.tolist(), rank_block(ci, rows, need), strict=True):
                    ranked[pos] = r
                bar.update(len(rows))
            if max_uses is not None:
                indexes[cluster] = ci
    finally:
        bar.close()

    if max_uses is None:
        chosen = {
            pos: list(zip(r.images.tolist(), r.sims.tolist(), strict=True)) for pos, r in ranked.items()
        }
        return to_candidates(refs, corpus.clusters.tolist(), chosen)

    order = usage_order(int(seed), corpus.ref_ids).tolist()
    bar = _progress(len(order), progress, "usage cap")
    try:
        chosen = capped_choice(order, ranked, indexes, corpus, pools, k, int(max_uses), need, bar.update)
    finally:
        bar.close()
    return to_candidates(refs, corpus.clusters.tolist(), chosen)

