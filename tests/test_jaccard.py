"""Token normalisation, stop words and exact Jaccard (pairwise and sparse)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from comcoco.text.jaccard import (
    ENGLISH_STOP_WORDS,
    Vocabulary,
    binary_matrix,
    jaccard,
    normalize_token,
    resolve_stop_words,
    sparse_jaccard,
    token_set,
)


def test_normalize_token():
    assert normalize_token("Man,") == "man"
    assert normalize_token("T-Shirt") == "tshirt"
    assert normalize_token("guy's") == "guys"
    assert normalize_token("2nd") == "2nd"
    assert normalize_token("Café") == "café"
    assert normalize_token("...") == ""
    assert normalize_token("__") == ""


def test_token_set_and_stop_words():
    tokens = ("The", "man", "in", "the", "RED", "shirt", "!")
    assert token_set(tokens) == {"the", "man", "in", "red", "shirt"}
    assert token_set(tokens, ENGLISH_STOP_WORDS) == {"man", "red", "shirt"}
    assert resolve_stop_words("none") == frozenset()
    assert resolve_stop_words("english") is ENGLISH_STOP_WORDS
    with pytest.raises(ValueError, match="unknown stop-word list 'french'"):
        resolve_stop_words("french")
    # spatial and colour words are content, never stop words
    assert not {"left", "right", "red", "behind", "front"} & ENGLISH_STOP_WORDS


def test_jaccard_values():
    assert jaccard({"a", "b"}, {"b", "c"}) == 1 / 3
    assert jaccard({"a"}, {"a"}) == 1.0
    assert jaccard(set(), set()) == 0.0
    assert jaccard({"a"}, set()) == 0.0


def test_vocabulary_matches_token_set():
    vocab = Vocabulary(stop_words={"The"})
    cols = vocab.ids(["The", "man", "Man,", "the", "hat", "?"])
    assert len(cols) == 2 and cols == sorted(cols)
    inverse = {v: k for k, v in vocab.index.items()}
    assert {inverse[c] for c in cols} == token_set(["The", "man", "Man,", "the", "hat", "?"], {"the"})
    assert vocab.column("...") == -1


def test_sparse_jaccard_equals_pairwise_exactly():
    rng = random.Random(7)
    words = [f"w{i}" for i in range(9)]
    a_sets = [frozenset(rng.sample(words, rng.randint(0, 5))) for _ in range(25)]
    b_sets = [frozenset(rng.sample(words, rng.randint(0, 5))) for _ in range(30)]
    vocab = Vocabulary()
    a = binary_matrix([vocab.ids(s) for s in a_sets], len(words))
    b = binary_matrix([vocab.ids(s) for s in b_sets], len(words))
    rows, cols, vals = sparse_jaccard(a, b)
    got = np.zeros((len(a_sets), len(b_sets)))
    got[rows, cols] = vals
    want = np.array([[jaccard(x, y) for y in b_sets] for x in a_sets])
    assert np.array_equal(got, want)  # bit-identical, not approximately equal
    assert (vals > 0).all()
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        sparse_jaccard(a, binary_matrix([[0]], 3))
