"""Token normalisation and exact Jaccard similarity, one pair at a time or as sparse matrices.

Scene matching compares word sets of referring expressions. The paper leaves tokenisation and stop
words unspecified, so the choices live here in one place: tokens are lower-cased, every character
that is not a letter or a digit is removed, empty tokens are dropped, and by default no stop words
are removed (``ENGLISH_STOP_WORDS`` is an opt-in list). Similarities are exact: intersections are
integer counts and every Jaccard value is ``float(inter) / float(union)``, so the sparse path and the
set-based path give bit-identical float64 numbers.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence

import numpy as np
from scipy import sparse

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)

# Opt-in stop list: articles, common prepositions, conjunctions, copulas and pronouns that appear in
# referring expressions without naming anything. Spatial and attribute words are deliberately absent.
ENGLISH_STOP_WORDS: frozenset[str] = frozenset(
    """a an the of in on at to with and or but is are was be being this that these those it its
    his her their there who which whose as for by from into""".split()
)

STOP_WORD_LISTS: dict[str, frozenset[str]] = {"none": frozenset(), "english": ENGLISH_STOP_WORDS}


def resolve_stop_words(name: str) -> frozenset[str]:
    """The stop list called ``name`` (``none`` or ``english``)."""
    try:
        return STOP_WORD_LISTS[name]
    except KeyError:
        raise ValueError(
            f"unknown stop-word list {name!r}; choose one of {sorted(STOP_WORD_LISTS)}"
        ) from None


def normalize_token(token: str) -> str:
    """Lower-case and strip everything that is not a letter or digit (may return '')."""
    return _NON_WORD.sub("", token.lower())


def token_set(tokens: Iterable[str], stop_words: Collection[str] = ()) -> frozenset[str]:
    """The normalised word set of one expression, without empty tokens and stop words."""
    out = set()
    for tok in tokens:
        norm = normalize_token(tok)
        if norm and norm not in stop_words:
            out.add(norm)
    return frozenset(out)


def normalize_stop_words(stop_words: Iterable[str]) -> frozenset[str]:
    """Stop words pass through the same normalisation as tokens, so 'The' and 'the' both match."""
    return frozenset(w for w in (normalize_token(s) for s in stop_words) if w)


def jaccard(a: Collection[str], b: Collection[str]) -> float:
    """|A∩B| / |A∪B| of two word sets; 0.0 when both are empty."""
    inter = len(set(a) & set(b))
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


class Vocabulary:
    """Normalised word → column index, assigned in first-seen order (the order changes no similarity).

    Raw tokens are normalised once each and cached, so building matrices for ~140k expressions costs
    one dictionary lookup per token.
    """

    def __init__(self, stop_words: Collection[str] = ()) -> None:
        self.stop_words = normalize_stop_words(stop_words)
        self.index: dict[str, int] = {}
        self._raw: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.index)

    def column(self, token: str) -> int:
        """The column of a raw token, or -1 if it normalises to nothing or to a stop word."""
        col = self._raw.get(token)
        if col is None:
            word = normalize_token(token)
            if not word or word in self.stop_words:
                col = -1
            else:
                col = self.index.setdefault(word, len(self.index))
            self._raw[token] = col
        return col

    def ids(self, tokens: Iterable[str]) -> list[int]:
        """Sorted unique columns of a token sequence: the matrix form of ``token_set``."""
        get = self._raw.get
        cols = set()
        for tok in tokens:
            col = get(tok)
            if col is None:
                col = self.column(tok)
            if col >= 0:
                cols.add(col)
        return sorted(cols)


def binary_matrix(rows: Sequence[Sequence[int]], n_cols: int) -> sparse.csr_matrix:
    """A CSR 0/1 matrix (int32) whose row i has ones at the (unique, sorted) columns ``rows[i]``."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.fromiter((c for r in rows for c in r), dtype=np.int32, count=int(indptr[-1]))
    data = np.ones(indices.shape[0], dtype=np.int32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), n_cols))


def row_sizes(matrix: sparse.csr_matrix) -> np.ndarray:
    """Set sizes of the rows of a binary CSR matrix (int64)."""
    return np.diff(matrix.indptr).astype(np.int64)


def jaccard_pairs(
    a: sparse.csr_matrix, b_t: sparse.csr_matrix, a_sizes: np.ndarray, b_sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like ``sparse_jaccard`` with ``b`` given transposed (vocab × rows) and row sizes precomputed.

    Callers that compare many blocks against the same ``b`` transpose it once.
    """
    if a.shape[1] != b_t.shape[0]:
        raise ValueError(f"vocabulary sizes differ: {a.shape[1]} vs {b_t.shape[0]}")
    prod = (a @ b_t).tocoo()
    inter = prod.data.astype(np.int64)
    keep = inter > 0
    rows = prod.row.astype(np.int64)[keep]
    cols = prod.col.astype(np.int64)[keep]
    inter = inter[keep]
    union = a_sizes[rows] + b_sizes[cols] - inter
    return rows, cols, inter.astype(np.float64) / union.astype(np.float64)


def sparse_jaccard(a: sparse.csr_matrix, b: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j) with a non-empty intersection of binary rows a[i] and b[j], and their Jaccard.

    Returns ``(rows, cols, values)``; every pair not listed has similarity 0. Intersections come from
    an integer sparse product, unions from |A| + |B| − |A∩B|.
    """
    return jaccard_pairs(a, b.T.tocsr(), row_sizes(a), row_sizes(b))
