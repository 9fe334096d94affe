"""The fast path of scene matching: blockwise sparse ranking per cluster, and the usage-capped greedy.

A similarity is non-zero exactly when the two word unions meet, which is answered for a block of
refs × all cluster images with per-token image bitsets. Refs with at least ``k`` zero-similarity
images only need the smallest tie-break keys among those; the others get exact similarities from
sparse integer products (sentence × sentence), max-reduced per image. ``comcoco.matching.oracle``
is the definition these must reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from comcoco.ids import stable_hash64
from comcoco.matching.rules import ref_cluster, sentence_words
from comcoco.records import Ref
from comcoco.text.jaccard import Vocabulary, binary_matrix, jaccard_pairs, row_sizes

# Elements (refs × images) per dense block of the zero-similarity pass: small enough that the
# temporaries stay in CPU cache. The exact pass works on larger blocks (a few tens of MB at most).
BLOCK_ELEMS = 1 << 16
_EXACT_ELEMS = 1 << 21
# Tie-break threshold slack: expect want + a·sqrt(want) + b zero-similarity keys below it.
_KEY_SLACK = (4.0, 8.0)
# Extra candidates ranked per ref when a usage cap may skip some of them.
CAP_MARGIN = 16
# Refs per chunk of the usage-capped greedy whose stale rankings are refreshed together.
_CAP_CHUNK = 256

_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass
class Corpus:
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
    def build(cls, refs: Sequence[Ref], seed: int, stop_words: frozenset[str]) -> Corpus:
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
            clusters=np.asarray([ref_cluster(r) for r in refs], dtype=np.int64),
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


class ClusterIndex:
    """One cluster's images, with per-token image bitsets and (lazily) its sentence matrices."""

    def __init__(self, corpus: Corpus, images: np.ndarray, similarity: str):
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
class Ranked:
    """A ref's best candidates so far: image ids and similarities, best first."""

    images: np.ndarray
    sims: np.ndarray
    complete: bool  # True when the whole pool is ranked


def _own_columns(ci: ClusterIndex, ref_images: np.ndarray) -> np.ndarray:
    """Cluster column of each ref's own image, or -1 when its image is not in the cluster."""
    if ci.n == 0:
        return np.full(len(ref_images), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(ci.images, ref_images), ci.n - 1)
    return np.where(ci.images[pos] == ref_images, pos, -1).astype(np.int64)


def _rank_exact(
    ci: ClusterIndex, rows: np.ndarray, own: np.ndarray, need: int, blocked: np.ndarray | None = None
) -> list[Ranked]:
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
        out.append(Ranked(ci.images[cc[a:b]], vals[a:b], complete=take == int(pool[i])))
    return out


def _rank_zero_rows(
    ci: ClusterIndex,
    rows: np.ndarray,
    ok_idx: np.ndarray,
    zero: np.ndarray,
    zero_count: np.ndarray,
    want: np.ndarray,
    pool: np.ndarray,
    result: list[Ranked | None],
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
        result[i] = Ranked(ci.images[best], np.zeros(take), complete=take == int(pool[i]))


def _pool_sizes(ci: ClusterIndex, own: np.ndarray, blocked: np.ndarray | None) -> np.ndarray:
    """How many cluster images each ref may choose: not its own image, not a blocked one."""
    has_own = own >= 0
    if blocked is None:
        return ci.n - has_own.astype(np.int64)
    own_free = has_own & ~blocked[np.maximum(own, 0)]
    return int(ci.n - blocked.sum()) - own_free.astype(np.int64)


def rank_block(
    ci: ClusterIndex, rows: np.ndarray, need: int, blocked: np.ndarray | None = None
) -> list[Ranked]:
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
    result: list[Ranked | None] = [None] * len(rows)
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



def capped_choice(
    order: Sequence[int],
    ranked: dict[int, Ranked],
    indexes: dict[int, ClusterIndex],
    corpus: Corpus,
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
            step = max(1, BLOCK_ELEMS // ci.n)
            for s in range(0, len(rows), step):
                part = rows[s : s + step]
                for pos, fresh in zip(part.tolist(), rank_block(ci, part, need, blocked), strict=True):
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
                more = rank_block(ci, np.asarray([pos], dtype=np.int64), k - len(picks), blocked)[0]
                picks.extend(zip(more.images.tolist(), more.sims.tolist(), strict=True))
            for image_id, _ in picks:
                uses[slot[image_id]] += 1
            chosen[pos] = picks
        advance(len(chunk))
    return chosen

