"""Matching a whole source: the one entry point that `comcoco match` and `comcoco build` share.

By default an object's backgrounds come only from images of its own split group (train, val, test;
RefCOCO+'s testA and testB are one group), so that samples never tie a training image to a test image
and a release can always be split without leaks (docs/matching.md). ``within_splits=False`` matches
across the whole source, as the paper did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from comcoco.ids import stable_hash64
from comcoco.matching.rules import SIMILARITIES, MatchingError, check_args
from comcoco.matching.scene import match_backgrounds
from comcoco.records import SPLITS, Annotation, Candidate, Ref, release_split_of
from comcoco.text.jaccard import resolve_stop_words


@dataclass(frozen=True)
class MatchOptions:
    """Everything that decides a source's candidates."""

    k: int = 5
    seed: int = 0
    similarity: str = "max"
    max_uses: int | None = None
    within_splits: bool = True
    stop_words: str = "none"  # a named list (comcoco.text.jaccard.resolve_stop_words)

    def __post_init__(self) -> None:
        check_args(self.k, self.similarity, self.max_uses)
        try:
            resolve_stop_words(self.stop_words)
        except ValueError as exc:
            raise MatchingError(f"--stop-words: {exc}") from None

    def params(self) -> dict[str, Any]:
        """The settings stored in the candidates file (``stop_words`` only when one is used)."""
        out: dict[str, Any] = {"k": self.k, "seed": self.seed, "similarity": self.similarity,
                               "max_uses": self.max_uses, "match_within_splits": self.within_splits}
        if self.stop_words != "none":
            out["stop_words"] = self.stop_words
        return out


def image_split_groups(refs: Sequence[Ref], image_ids: Sequence[int], seed: int) -> dict[int, str]:
    """Each image's release split group from the refs on it (train, val; testA/testB → test).

    An image without refs joins a group by a seeded hash, in proportion to the images with refs; an
    image whose refs disagree (not the case in RefCOCO+) takes the first group in train, val, test order.
    """
    groups: dict[int, set[str]] = {}
    for r in refs:
        groups.setdefault(int(r.image_id), set()).add(release_split_of(r.split))
    out = {i: min(g, key=SPLITS.index) for i, g in groups.items()}
    counts = Counter(out.values())
    total = sum(counts.values())
    shares = [(s, counts.get(s, 0) / total) for s in SPLITS] if total else [("train", 1.0)]
    for image_id in sorted(set(int(i) for i in image_ids) - set(out)):
        u = stable_hash64(seed, "split-group", image_id) / 2**64
        acc, chosen = 0.0, shares[-1][0]
        for name, share in shares:
            acc += share
            if u < acc:
                chosen = name
                break
        out[image_id] = chosen
    return out


def match_source(
    refs: Sequence[Ref], annotations: Sequence[Annotation], options: MatchOptions, progress: bool = False
) -> list[Candidate]:
    """Candidates for every ref, sorted by (ref_id, rank): within split groups unless told otherwise."""
    refs = sorted(refs, key=lambda r: r.ref_id)
    anns = sorted(annotations, key=lambda a: a.ann_id)
    kwargs = {"k": options.k, "seed": options.seed, "similarity": options.similarity,
              "max_uses": options.max_uses, "stop_words": resolve_stop_words(options.stop_words),
              "progress": progress}
    if not options.within_splits:
        return match_backgrounds(refs, anns, **kwargs)
    group_of = image_split_groups(refs, [a.image_id for a in anns], options.seed)
    candidates: list[Candidate] = []
    for group in sorted(set(group_of.values())):
        g_refs = [r for r in refs if group_of.get(int(r.image_id)) == group]
        g_anns = [a for a in anns if group_of.get(int(a.image_id)) == group]
        if g_refs:
            candidates += match_backgrounds(g_refs, g_anns, **kwargs)
    return sorted(candidates, key=lambda c: (c.ref_id, c.rank))


__all__ = ["SIMILARITIES", "MatchOptions", "image_split_groups", "match_source"]
