"""Text side of SAHM: an offline ALBERT tokenizer, word tags spread to tokens, and the BiLSTM-CRF tagger.

Tokenizer: a local ALBERT tokenizer folder when given; otherwise a SentencePiece model (BPE by default) trained
on the release's expressions and loaded with ``AlbertTokenizer.from_pretrained(folder)`` (transformers 5 ignores
``AlbertTokenizer(vocab_file=...)``, leaving only special tokens — ``check_tokenizer`` guards against that).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchcrf import CRF

from comcoco.errors import ComcocoError
from comcoco.text.syntax import IDENTITY_WORDS, TAG_NAMES, TAG_OTHER, split_words, tag_words

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPECIAL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")


class TokenizerError(ComcocoError):
    """The tokenizer cannot be built or loaded; the message names the folder."""


def train_tokenizer(
    expressions: Sequence[str], out_dir: str | Path, vocab_size: int = 8000, model_type: str = "bpe"
):
    """Train a SentencePiece ALBERT tokenizer on expressions and save it to ``out_dir``.

    ``vocab_size`` is an upper bound: small corpora get the vocabulary they support. BPE is the default
    because on a few thousand short expressions unigram pruning collapses to characters; ``unigram``
    (ALBERT's own model type) suits large corpora. Returns the tokenizer.
    """
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = sorted(" ".join(split_words(e)) for e in expressions if split_words(e))
    if not lines:
        raise TokenizerError(f"no expressions to train a tokenizer for {out}")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out / "spiece"),
        vocab_size=vocab_size,
        model_type=model_type,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        user_defined_symbols=list(SPECIAL_SYMBOLS),
        num_threads=1,
        minloglevel=2,
    )
    tok = load_tokenizer(out)
    tok.save_pretrained(str(out))
    return tok


def load_tokenizer(path: str | Path):
    """Load a local ALBERT tokenizer folder (``spiece.model`` or ``tokenizer.json``); never downloads."""
    from transformers import AlbertTokenizer

    p = Path(path)
    if not p.is_dir():
        raise TokenizerError(f"tokenizer folder not found: {p}")
    try:
        tok = AlbertTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # transformers raises many types for unusable folders
        raise TokenizerError(f"cannot load tokenizer from {p}: {exc}") from exc
    check_tokenizer(tok, p)
    return tok


def check_tokenizer(tok, where: str | Path = "tokenizer") -> None:
    """Refuse a tokenizer that holds only special tokens (the transformers-5 ``vocab_file`` pitfall)."""
    if len(tok) <= 5:
        raise TokenizerError(f"{where}: tokenizer has only {len(tok)} tokens (special tokens only)")
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"{where}: a fast tokenizer is needed for word alignment")


@dataclass(frozen=True)
class EncodedText:
    """Token ids, attention mask and per-token silver tags (B, T) for a batch of expressions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tags: torch.Tensor


def encode_expressions(
    tok, expressions: Sequence[str], max_len: int, identity: frozenset[str] = IDENTITY_WORDS
) -> EncodedText:
    """Tokenize expressions word by word; each subword inherits its word's tag, specials are *other*."""
    words = [split_words(e) or ["<empty>"] for e in expressions]
    enc = tok(words, is_split_into_words=True, padding="max_length", truncation=True, max_length=max_len)
    tags = []
    for i, ws in enumerate(words):
        wt = tag_words(ws, identity)
        tags.append([TAG_OTHER if wid is None else wt[wid] for wid in enc.word_ids(i)])
    return EncodedText(
        input_ids=torch.tensor(enc["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(enc["attention_mask"], dtype=torch.long),
        tags=torch.tensor(tags, dtype=torch.long),
    )


class SyntaxTagger(nn.Module):
    """BiLSTM-CRF over ALBERT token features: tags each token identity / attribute / other."""

    def __init__(self, in_dim: int, hidden: int, num_tags: int = len(TAG_NAMES)):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.emit = nn.Linear(2 * hidden, num_tags)
        self.crf = CRF(num_tags, batch_first=True)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Emission scores (B, T, num_tags)."""
        h, _ = self.lstm(feats)
        return self.emit(h)

    def loss(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean negative CRF log-likelihood per sequence."""
        return -self.crf(emissions.float(), tags, mask=mask.bool(), reduction="mean")

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Viterbi tags (B, T); padded positions are *other*."""
        paths = self.crf.decode(emissions.float(), mask=mask.bool())
        out = torch.full(mask.shape, TAG_OTHER, dtype=torch.long, device=emissions.device)
        for i, p in enumerate(paths):
            out[i, : len(p)] = torch.tensor(p, dtype=torch.long, device=emissions.device)
        return out


@dataclass(frozen=True)
class TaggingReport:
    """Token-level tagging accuracy overall and per tag (recall of each gold tag)."""

    accuracy: float
    per_tag: dict[str, float]
    tokens: int

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "per_tag": dict(self.per_tag), "tokens": self.tokens}


def tagging_accuracy(predicted, gold, mask=None) -> TaggingReport:
    """Accuracy of predicted tags against gold tags over valid positions.

    Accepts (B, T) tensors with an optional mask, or sequences of per-sentence tag lists of equal lengths.
    """
    if isinstance(predicted, torch.Tensor):
        m = torch.ones_like(gold, dtype=torch.bool) if mask is None else mask.bool()
        p, g = predicted[m].tolist(), gold[m].tolist()
    else:
        p, g = [], []
        for i, (a, b) in enumerate(zip(predicted, gold, strict=True)):
            if len(a) != len(b):
                raise ValueError(f"sentence {i}: {len(a)} predicted tags vs {len(b)} gold tags")
            p.extend(a)
            g.extend(b)
    if not g:
        raise ValueError("no tokens to score")
    per_tag: dict[str, float] = {}
    for t, name in enumerate(TAG_NAMES):
        idx = [i for i, x in enumerate(g) if x == t]
        if idx:
            per_tag[name] = sum(p[i] == t for i in idx) / len(idx)
    acc = sum(a == b for a, b in zip(p, g, strict=True)) / len(g)
    return TaggingReport(accuracy=acc, per_tag=per_tag, tokens=len(g))
