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

import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from comcoco.ids import seeded_keys, stable_hash64
from comcoco.io import write_bytes_atomic
from comcoco.matching.clusters import CLUSTERS, UnknownCategoryError, cluster_of
from comcoco.records import Annotation, Candidate, Ref, Sentence
from comcoco.text.jaccard import (
    Vocabulary,
    binary_matrix,
    jaccard,
    jaccard_pairs,
    normalize_stop_words,
    row_sizes,
    token_set,
)

SIMILARITIES: tuple[str, ...] = ("max", "union")
USAGE_ORDER_SALT = "usage-order"
CANDIDATE_COLUMNS: tuple[str, ...] = (
    "ref_id",
    "ann_id",
    "fg_image_id",
    "category_id",
    "cluster",
    "rank",
    "bg_image_id",
    "similarity",
)
PARAMS_METADATA_KEY = b"comcoco.matching"

# Elements (refs × images) per dense block of the zero-similarity pass: small enough that the
# temporaries stay in CPU cache. The exact pass works on larger blocks (a few tens of MB at most).
_BLOCK_ELEMS = 1 << 16
_EXACT_ELEMS = 1 << 21
# Tie-break threshold slack: expect want + a·sqrt(want) + b zero-similarity keys below it.
_KEY_SLACK = (4.0, 8.0)
# Extra candidates ranked per ref when a usage cap may skip some of them.
_CAP_MARGIN = 16
# Refs per chunk of the usage-capped greedy whose stale rankings are refreshed together.
_CAP_CHUNK = 256

_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class MatchingError(ValueError):
    """Input records that cannot be matched (the message names the record)."""


class CandidatesFileError(ValueError):
    """A candidates parquet that cannot be read back (the message names the file)."""


# --- shared definitions ---------------------------------------------------------------------------


def sentence_words(sentence: Sentence) -> Sequence[str]:
    """The raw words of a sentence: REFER ``tokens``, or ``sent`` split on spaces if tokens are empty."""
    return sentence.tokens if sentence.tokens else sentence.sent.split()


def _check_args(k: int, similarity: str, max_uses: int | None) -> None:
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
    if max_uses is not None and int(max_uses) < 1:
        raise ValueError(f"max_uses must be at least 1 (or None for no cap), got {max_uses}")


def _ref_cluster(ref: Ref) -> int:
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


def _unique_ref_ids(refs: Sequence[Ref]) -> None:
    seen: set[int] = set()
    for r in refs:
        if r.ref_id in seen:
            raise MatchingError(f"ref_id {r.ref_id} appears more than once")
        seen.add(r.ref_id)


def _usage_order(seed: int, ref_ids: np.ndarray) -> np.ndarray:
    """Positions of refs in the order the usage cap visits them (a seeded hash, never input order)."""
    keys = seeded_keys(seed, USAGE_ORDER_SALT, ref_ids)
    return np.lexsort((ref_ids, keys))


def _greedy_cap(
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


def _candidates(refs: Sequence[Ref], clusters: Sequence[int], chosen: dict[int, Any]) -> list[Candidate]:
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


# --- reference implementation ---------------------------------------------------------------------


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
    _check_args(k, similarity, max_uses)
    if only_ref_ids is not None and max_uses is not None:
        raise ValueError("only_ref_ids cannot be combined with max_uses")
    _unique_ref_ids(refs)
    stops = normalize_stop_words(stop_words)
    clusters = [_ref_cluster(r) for r in refs]
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
        chosen = _greedy_cap(_usage_order(seed, ids).tolist(), full_ranking, int(k), int(max_uses))
    return _candidates(refs, clusters, chosen)


# --- fast path ------------------------------------------------------------------------------------


@dataclass
class _Corpus:
    """Every ref's sentences as sparse word matrices, plus per-image word unions."""

    ref_ids: np.ndarray  # int64, input order
    ref_images: np.ndarray  # int64
    clusters: np.ndarray  # int64
    offsets: np.ndarray  # uint64 tie-break offset per ref (as in comcoco.ids.seeded_keys)
    sent: sparse.csr_matrix  # sentences × vocab, 0/1
    sent_sizes: np.ndarray
    sent_image: np.ndarray  # image id of each sentence
    ref_sent_ptr: np.ndarray  # sentences of ref i are rows ref_sent_ptr[i]:ref_sent_ptr[i+1]
    ref_union: sparse.csr_matrix  # refs × vocab
    ref_union_sizes: np.ndarray
    text_images: np.ndarray  # sorted image ids that have at least one ref
    image_union: sparse.csr_matrix  # text_images × vocab
    image_union_sizes: np.ndarray

    @classmethod
    def build(cls, refs: Sequence[Ref], seed: int, stop_words: frozenset[str]) -> _Corpus:
        vocab = Vocabulary(stop_words)
        sent_rows: list[list[int]] = []
        sent_image: list[int] = []
        ref_rows: list[list[int]] = []
        ptr = [0]
        image_tokens: dict[int, set[int]] = {}
        for r in refs:
            union: set[int] = set()
            for s in r.sentences:
                cols = vocab.ids(sentence_words(s))
                sent_rows.append(cols)
                sent_image.append(r.image_id)
                union.update(cols)
            ptr.append(len(sent_rows))
            ref_rows.append(sorted(union))
            image_tokens.setdefault(r.image_id, set()).update(union)
        n_vocab = max(len(vocab), 1)
        text_images = np.asarray(sorted(image_tokens), dtype=np.int64)
        image_rows = [sorted(image_tokens[i]) for i in text_images.tolist()]
        sent = binary_matrix(sent_rows, n_vocab)
        ref_union = binary_matrix(ref_rows, n_vocab)
        image_union = binary_matrix(image_rows, n_vocab)
        return cls(
            ref_ids=np.asarray([r.ref_id for r in refs], dtype=np.int64),
            ref_images=np.asarray([r.image_id for r in refs], dtype=np.int64),
            clusters=np.asarray([_ref_cluster(r) for r in refs], dtype=np.int64),
            offsets=np.asarray([stable_hash64(int(seed), int(r.ref_id)) for r in refs], dtype=np.uint64),
            sent=sent,
            sent_sizes=row_sizes(sent),
            sent_image=np.asarray(sent_image, dtype=np.int64),
            ref_sent_ptr=np.asarray(ptr, dtype=np.int64),
            ref_union=ref_union,
            ref_union_sizes=row_sizes(ref_union),
            text_images=text_images,
            image_union=image_union,
            image_union_sizes=row_sizes(image_union),
        )


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``comcoco.ids.seeded_keys``, in place on a uint64 array.

    Array arithmetic wraps modulo 2**64 silently, exactly like the scalar version there.
    """
    z += _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _pair_keys(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``seeded_keys`` for aligned (image, ref offset) pairs (or one offset for all images)."""
    return _mix(images.astype(np.uint64) + offsets)


def _rows_of(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened member indices of CSR-like groups ``rows`` and the position of the group of each."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    first = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return first + np.arange(int(lengths.sum()), dtype=np.int64), owner


class _ClusterIndex:
    """One cluster's images, with per-token image bitsets and (lazily) its sentence matrices."""

    def __init__(self, corpus: _Corpus, images: np.ndarray, similarity: str):
        self.corpus = corpus
        self.similarity = similarity
        self.images = images
        self.images_u64 = images.astype(np.uint64)
        self.n = len(images)
        pos = np.searchsorted(corpus.text_images, images)
        pos_c = np.minimum(pos, max(len(corpus.text_images) - 1, 0))
        has_text = (
            (pos < len(corpus.text_images)) & (corpus.text_images[pos_c] == images)
            if len(corpus.text_images)
            else np.zeros(self.n, dtype=bool)
        )
        self.text_cols = np.nonzero(has_text)[0].astype(np.int64)  # cluster columns of images with text
        self.text_rows = pos[has_text].astype(np.int64)  # their rows in corpus.image_union
        sub = corpus.image_union[self.text_rows]
        tokens = sub.indices.astype(np.int64)
        cols = np.repeat(self.text_cols, np.diff(sub.indptr))
        local_tokens, inverse = np.unique(tokens, return_inverse=True)
        self.vocab_map = np.full(corpus.sent.shape[1], -1, dtype=np.int64)
        self.vocab_map[local_tokens] = np.arange(len(local_tokens), dtype=np.int64)
        self.words = (self.n + 63) // 64
        self.bits = np.zeros((len(local_tokens), self.words), dtype="<u8")
        np.bitwise_or.at(
            self.bits, (inverse, cols >> 6), np.left_shift(np.uint64(1), (cols & 63).astype(np.uint64))
        )
        self._bg: tuple[sparse.csr_matrix, sparse.csr_matrix, np.ndarray, np.ndarray] | None = None

    def hits(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows) × n) bool: ref row shares at least one word with cluster image column."""
        c = self.corpus
        members, owner = _rows_of(c.ref_union.indptr.astype(np.int64), rows)
        local = self.vocab_map[c.ref_union.indices[members]]
        keep = local >= 0
        local, owner = local[keep], owner[keep]
        hitbits = np.zeros((len(rows), self.words), dtype="<u8")
        if len(local):
            uniq, starts = np.unique(owner, return_index=True)
            hitbits[uniq] = np.bitwise_or.reduceat(self.bits[local], starts, axis=0)
        return np.unpackbits(hitbits.view(np.uint8), axis=1, count=self.n, bitorder="little").view(bool)

    def _background(self) -> tuple[sparse.csr_matrix, sparse.csr_matrix, np.ndarray, np.ndarray]:
        """Background word matrix (rows = sentences or image unions), its transpose, row sizes, columns."""
        if self._bg is None:
            c = self.corpus
            if self.similarity == "max":
                keep = np.nonzero(np.isin(c.sent_image, self.images))[0]
                mat = c.sent[keep]
                col = np.searchsorted(self.images, c.sent_image[keep])
                sizes = c.sent_sizes[keep]
            else:
                mat = c.image_union[self.text_rows]
                col = self.text_cols
                sizes = c.image_union_sizes[self.text_rows]
            self._bg = (mat, mat.T.tocsr(), sizes, col)
        return self._bg

    def background_rows(self) -> int:
        return int(self._background()[0].shape[0])

    def similarities(self, rows: np.ndarray, blocked: np.ndarray | None = None) -> np.ndarray:
        """Exact (len(rows) × n) float64 similarities (0 where no word is shared).

        Columns in ``blocked`` are left at 0 and not computed: when most of the cluster is blocked
        (late in a usage-capped pass) only the remaining images' expressions enter the product.
        """
        c = self.corpus
        bg, bg_t, bg_sizes, bg_col = self._background()
        if blocked is not None and 2 * int(blocked.sum()) > self.n:
            keep = np.nonzero(~blocked[bg_col])[0]
            bg_t, bg_sizes, bg_col = bg[keep].T.tocsr(), bg_sizes[keep], bg_col[keep]
        out = np.zeros((len(rows), self.n), dtype=np.float64)
        if self.similarity == "max":
            members, owner = _rows_of(c.ref_sent_ptr, rows)
            fg = c.sent[members]
            fg_sizes = c.sent_sizes[members]
        else:
            fg = c.ref_union[rows]
            fg_sizes = c.ref_union_sizes[rows]
            owner = np.arange(len(rows), dtype=np.int64)
        if fg.shape[0] == 0 or bg_t.shape[1] == 0:
            return out
        i, j, vals = jaccard_pairs(fg, bg_t, fg_sizes, bg_sizes)
        np.maximum.at(out, (owner[i], bg_col[j]), vals)
        return out


@dataclass
class _Ranked:
    """A ref's best candidates so far: image ids and similarities, best first."""

    images: np.ndarray
    sims: np.ndarray
    complete: bool  # True when the whole pool is ranked


def _own_columns(ci: _ClusterIndex, ref_images: np.ndarray) -> np.ndarray:
    """Cluster column of each ref's own image, or -1 when its image is not in the cluster."""
    if ci.n == 0:
        return np.full(len(ref_images), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(ci.images, ref_images), ci.n - 1)
    return np.where(ci.images[pos] == ref_images, pos, -1).astype(np.int64)


def _rank_exact(
    ci: _ClusterIndex, rows: np.ndarray, own: np.ndarray, need: int, blocked: np.ndarray | None = None
) -> list[_Ranked]:
    """Rank with exact similarities: the ``need`` best of each ref by (similarity, key, image id)."""
    c = ci.corpus
    sims = ci.similarities(rows, blocked)
    has_own = own >= 0
    sims[np.nonzero(has_own)[0], own[has_own]] = np.inf
    if blocked is not None:
        sims[:, blocked] = np.inf
    pool = _pool_sizes(ci, own, blocked)
    kk = min(need, ci.n)
    vstar = np.partition(sims, kk - 1, axis=1)[:, kk - 1]
    mask = (sims <= vstar[:, None]) & np.isfinite(sims)
    rr, cc = np.nonzero(mask)
    keys = _pair_keys(ci.images[cc], c.offsets[rows][rr])
    vals = sims[rr, cc]
    order = np.lexsort((ci.images[cc], keys, vals, rr))
    rr, cc, vals = rr[order], cc[order], vals[order]
    bounds = np.searchsorted(rr, np.arange(len(rows) + 1))
    out = []
    for i in range(len(rows)):
        take = min(need, int(pool[i]))
        a, b = int(bounds[i]), int(bounds[i]) + take
        out.append(_Ranked(ci.images[cc[a:b]], vals[a:b], complete=take == int(pool[i])))
    return out


def _rank_zero_rows(
    ci: _ClusterIndex,
    rows: np.ndarray,
    ok_idx: np.ndarray,
    zero: np.ndarray,
    zero_count: np.ndarray,
    want: np.ndarray,
    pool: np.ndarray,
    result: list[_Ranked | None],
) -> None:
    """Fill ``result`` for refs with enough zero-similarity images: their smallest tie-break keys.

    Keys are uniform, so a per-row threshold expected to let through want + 4·sqrt(want) + 8 of the
    zero-similarity images keeps the sort tiny; a row where fewer pass is redone without threshold,
    so the result is always exact. Keys are hashed only for zero entries when those are a minority.
    """
    images = ci.images_u64
    offsets = ci.corpus.offsets[rows[ok_idx]]
    for j, i in enumerate(ok_idx.tolist()):
        take, count = int(want[i]), int(zero_count[j])
        expect = max(take + _KEY_SLACK[0] * take**0.5 + _KEY_SLACK[1], 0.0)
        thr = _U64_MAX if expect >= count else np.uint64(int(expect / count * 2.0**64))
        if 2 * count < ci.n:
            cols = np.flatnonzero(zero[j])
            keys = _pair_keys(images[cols], offsets[j])
            passed = np.flatnonzero(keys <= thr)
        else:
            all_keys = _pair_keys(images, offsets[j])
            passed = np.flatnonzero(zero[j] & (all_keys <= thr))
            cols, keys, passed = passed, all_keys[passed], None
        if passed is not None:
            if len(passed) >= take:
                cols, keys = cols[passed], keys[passed]
        elif len(cols) < take:  # dense row below the threshold: fall back to every zero entry
            cols = np.flatnonzero(zero[j])
            keys = all_keys[cols]
        best = cols[np.argsort(keys, kind="stable")[:take]]
        result[i] = _Ranked(ci.images[best], np.zeros(take), complete=take == int(pool[i]))


def _pool_sizes(ci: _ClusterIndex, own: np.ndarray, blocked: np.ndarray | None) -> np.ndarray:
    """How many cluster images each ref may choose: not its own image, not a blocked one."""
    has_own = own >= 0
    if blocked is None:
        return ci.n - has_own.astype(np.int64)
    own_free = has_own & ~blocked[np.maximum(own, 0)]
    return int(ci.n - blocked.sum()) - own_free.astype(np.int64)


def _rank_block(
    ci: _ClusterIndex, rows: np.ndarray, need: int, blocked: np.ndarray | None = None
) -> list[_Ranked]:
    """Rank a block of refs: zero-similarity shortcut where possible, exact similarities otherwise.

    ``blocked`` (bool per cluster image) removes images from every pool, as the usage cap needs.
    """
    c = ci.corpus
    own = _own_columns(ci, c.ref_images[rows])
    has_own = own >= 0
    zero = ~ci.hits(rows)
    zero[np.nonzero(has_own)[0], own[has_own]] = False
    if blocked is not None:
        zero[:, blocked] = False
    pool = _pool_sizes(ci, own, blocked)
    want = np.minimum(need, pool)
    zero_count = zero.sum(axis=1)
    ok_idx = np.nonzero(zero_count >= want)[0]
    result: list[_Ranked | None] = [None] * len(rows)
    if len(ok_idx):
        _rank_zero_rows(ci, rows, ok_idx, zero[ok_idx], zero_count[ok_idx], want, pool, result)
    rest = np.asarray([i for i, r in enumerate(result) if r is None], dtype=np.int64)
    if len(rest):
        step = max(1, _EXACT_ELEMS // max(ci.n, ci.background_rows(), 1))
        for s in range(0, len(rest), step):
            part_rows = rest[s : s + step]
            for i, ranked in zip(
                part_rows.tolist(),
                _rank_exact(ci, rows[part_rows], own[part_rows], need, blocked),
                strict=True,
            ):
                result[i] = ranked
    return [r for r in result if r is not None]


def _progress(total: int, enabled: bool, desc: str = "matching") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="ref", desc=desc, disable=not enabled, file=sys.stderr, leave=False)


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
    _check_args(k, similarity, max_uses)
    _unique_ref_ids(refs)
    k = int(k)
    stops = normalize_stop_words(stop_words)
    corpus = _Corpus.build(refs, int(seed), stops)
    pools = image_clusters(annotations)
    need = k if max_uses is None else k + max(k, _CAP_MARGIN)
    ranked: dict[int, _Ranked] = {}
    indexes: dict[int, _ClusterIndex] = {}
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
                    ranked[pos] = _Ranked(np.zeros(0, np.int64), np.zeros(0), complete=True)
                bar.update(len(members))
                continue
            ci = _ClusterIndex(corpus, images, similarity)
            step = max(1, _BLOCK_ELEMS // ci.n)
            for s in range(0, len(members), step):
                rows = members[s : s + step]
                for pos, r in zip(rows.tolist(), _rank_block(ci, rows, need), strict=True):
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
        return _candidates(refs, corpus.clusters.tolist(), chosen)

    order = _usage_order(int(seed), corpus.ref_ids).tolist()
    bar = _progress(len(order), progress, "usage cap")
    try:
        chosen = _capped_choice(order, ranked, indexes, corpus, pools, k, int(max_uses), need, bar.update)
    finally:
        bar.close()
    return _candidates(refs, corpus.clusters.tolist(), chosen)


def _capped_choice(
    order: Sequence[int],
    ranked: dict[int, _Ranked],
    indexes: dict[int, _ClusterIndex],
    corpus: _Corpus,
    pools: dict[int, np.ndarray],
    k: int,
    max_uses: int,
    need: int,
    advance: Callable[[int], Any],
) -> dict[int, list[tuple[int, float]]]:
    """The usage-capped greedy of ``_greedy_cap``, without walking long saturated rankings.

    Each ref walks its best candidates, skipping saturated images. Refs are taken in chunks: a ref
    whose prefix no longer holds ``k`` unsaturated images when its chunk starts gets a fresh prefix,
    ranked (in one batch per cluster) among the images still available; images only ever leave that
    set, so walking the fresh prefix gives the same choice. A ref that still falls short has the rest
    of its choice ranked on its own among the images available at that moment (saturated and already
    picked ones blocked), which yields exactly the next unsaturated images of its full ranking.
    """
    all_images = np.unique(np.concatenate([p for p in pools.values()])) if pools else np.zeros(0, np.int64)
    slot = {int(img): i for i, img in enumerate(all_images.tolist())}
    uses = np.zeros(len(all_images), dtype=np.int64)
    cluster_slots = {cl: np.searchsorted(all_images, ci.images) for cl, ci in indexes.items()}
    chosen: dict[int, list[tuple[int, float]]] = {}
    for start in range(0, len(order), _CAP_CHUNK):
        chunk = order[start : start + _CAP_CHUNK]
        stale: dict[int, list[int]] = {}
        for pos in chunk:
            r = ranked[pos]
            if not r.complete and int((uses[np.searchsorted(all_images, r.images)] < max_uses).sum()) < k:
                stale.setdefault(int(corpus.clusters[pos]), []).append(pos)
        for cl, members in sorted(stale.items()):
            ci = indexes[cl]
            blocked = uses[cluster_slots[cl]] >= max_uses
            rows = np.asarray(members, dtype=np.int64)
            step = max(1, _BLOCK_ELEMS // ci.n)
            for s in range(0, len(rows), step):
                part = rows[s : s + step]
                for pos, fresh in zip(part.tolist(), _rank_block(ci, part, need, blocked), strict=True):
                    ranked[pos] = fresh
        for pos in chunk:
            r = ranked[pos]
            picks: list[tuple[int, float]] = []
            for image_id, sim in zip(r.images.tolist(), r.sims.tolist(), strict=True):
                if uses[slot[image_id]] < max_uses:
                    picks.append((image_id, sim))
                    if len(picks) == k:
                        break
            if len(picks) < k and not r.complete:
                cl = int(corpus.clusters[pos])
                ci = indexes[cl]
                blocked = uses[cluster_slots[cl]] >= max_uses
                blocked[np.searchsorted(ci.images, [image_id for image_id, _ in picks])] = True
                more = _rank_block(ci, np.asarray([pos], dtype=np.int64), k - len(picks), blocked)[0]
                picks.extend(zip(more.images.tolist(), more.sims.tolist(), strict=True))
            for image_id, _ in picks:
                uses[slot[image_id]] += 1
            chosen[pos] = picks
        advance(len(chunk))
    return chosen


# --- candidates files -----------------------------------------------------------------------------


def _schema(params: dict[str, Any] | None) -> Any:
    import json

    import pyarrow as pa

    fields = [pa.field(name, pa.int64(), nullable=False) for name in CANDIDATE_COLUMNS[:-1]]
    fields.append(pa.field("similarity", pa.float64(), nullable=False))
    meta = None
    if params is not None:
        meta = {PARAMS_METADATA_KEY: json.dumps(params, sort_keys=True, separators=(",", ":")).encode()}
    return pa.schema(fields, metadata=meta)


def candidates_to_table(candidates: Sequence[Candidate], params: dict[str, Any] | None = None) -> Any:
    """A pyarrow Table with the fixed candidates schema, rows sorted by (ref_id, rank)."""
    import pyarrow as pa

    rows = sorted(candidates, key=lambda c: (c.ref_id, c.rank))
    columns = [
        pa.array(np.fromiter((getattr(c, name) for c in rows), dtype=np.int64, count=len(rows)), pa.int64())
        for name in CANDIDATE_COLUMNS[:-1]
    ]
    columns.append(pa.array(np.fromiter((c.similarity for c in rows), dtype=np.float64, count=len(rows))))
    return pa.Table.from_arrays(columns, schema=_schema(params))


def write_candidates(
    path: str | Path, candidates: Sequence[Candidate], params: dict[str, Any] | None = None
) -> Path:
    """Write candidates as parquet, atomically and byte-identically for identical inputs.

    ``params`` (the matching settings) are stored as JSON in the schema metadata for provenance.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = candidates_to_table(candidates, params)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=1 << 20,
        compression="zstd",
        compression_level=3,
        use_dictionary=False,
        write_statistics=True,
        version="2.6",
        data_page_version="1.0",
        store_schema=True,
    )
    path = Path(path)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())
    return path


def read_candidates(path: str | Path) -> list[Candidate]:
    """Read a candidates parquet back into records (checks the columns, names the file on error)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise CandidatesFileError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in CANDIDATE_COLUMNS if c not in table.column_names]
    if missing:
        raise CandidatesFileError(f"{path}: missing candidate columns {', '.join(missing)}")
    cols = {name: table.column(name).to_pylist() for name in CANDIDATE_COLUMNS}
    out = []
    for i in range(table.num_rows):
        values = {name: cols[name][i] for name in CANDIDATE_COLUMNS}
        if any(v is None for v in values.values()):
            raise CandidatesFileError(f"{path}: row {i} has an empty value")
        out.append(Candidate(**{n: (float(v) if n == "similarity" else int(v)) for n, v in values.items()}))
    return out


def read_candidates_params(path: str | Path) -> dict[str, Any] | None:
    """The matching settings stored in a candidates file, if any."""
    import json

    import pyarrow.parquet as pq

    meta = pq.read_schema(Path(path)).metadata or {}
    raw = meta.get(PARAMS_METADATA_KEY)
    return None if raw is None else json.loads(raw)


def match_summary(refs: Sequence[Ref], candidates: Sequence[Candidate], k: int) -> dict[str, int]:
    """Counts for reports: refs, candidate rows, refs with fewer than ``k`` and with none."""
    per_ref: dict[int, int] = {}
    for c in candidates:
        per_ref[c.ref_id] = per_ref.get(c.ref_id, 0) + 1
    counts = [per_ref.get(r.ref_id, 0) for r in refs]
    return {
        "refs": len(refs),
        "candidates": len(candidates),
        "refs_short": sum(1 for n in counts if 0 < n < k),
        "refs_without": sum(1 for n in counts if n == 0),
        "backgrounds": len({c.bg_image_id for c in candidates}),
    }
