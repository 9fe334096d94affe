"""Why objects got fewer backgrounds than asked, and which option changes it.

Scene matching gives a ref up to ``k`` backgrounds: images of its scene cluster other than its own,
from its own split group unless matching across splits, and, with a usage cap, not yet used up. A ref
that gets fewer has one of three reasons:

* ``split group``: its split group holds fewer images of its cluster than the whole source does;
  ``--match-across-splits`` draws from every split (and gives up the leak-free release split);
* ``cluster too small``: the whole source holds fewer other images of its cluster; no option helps,
  only a larger source;
* ``usage cap``: there were images enough, but ``--max-uses`` had used them up; a larger cap, or none.

A build that plans nothing, or leaves objects without a background, says so in these words.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from comcoco.matching.rules import image_clusters, ref_cluster
from comcoco.matching.source import MatchOptions, image_split_groups
from comcoco.records import Annotation, Candidate, Ref

SPLIT_GROUP = "split group"
CLUSTER_TOO_SMALL = "cluster too small"
USAGE_CAP = "usage cap"
REASONS = (SPLIT_GROUP, CLUSTER_TOO_SMALL, USAGE_CAP)
EXAMPLES = 5


@dataclass(frozen=True)
class MatchGaps:
    """Refs that got no background (``without``) or fewer than ``k`` (``short``), by reason."""

    refs: int
    k: int
    within_splits: bool
    max_uses: int | None
    without: dict[str, int] = field(default_factory=dict)
    short: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> first ref ids

    @property
    def refs_without(self) -> int:
        return sum(self.without.values())

    @property
    def refs_short(self) -> int:
        return sum(self.short.values())

    def remedy(self, reason: str) -> str:
        if reason == SPLIT_GROUP:
            return ("have no image of their scene cluster in their own split group (--match-across-splits "
                    "draws from every split, but then a release can no longer be split without leaks)")
        if reason == CLUSTER_TOO_SMALL:
            return "have no other image of their scene cluster in the source (only a larger source helps)"
        return (f"found their cluster's images used up by --max-uses {self.max_uses} "
                "(raise --max-uses or leave it out)")

    def lines(self, short: bool = True) -> list[str]:
        """Sentences for a maintainer: how many objects, why, and the option that changes it (objects
        with no background first; with ``short`` also those with fewer than ``k``)."""
        out = []
        kinds = [("found no background", self.without)]
        if short:
            kinds.append((f"got fewer than {self.k} backgrounds", self.short))
        for title, counts in kinds:
            total = sum(counts.values())
            if total:
                parts = [f"{n} {self.remedy(reason)}" for reason, n in counts.items() if n]
                out.append(f"{total} of {self.refs} objects {title}: " + ", ".join(parts))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"refs_without": self.refs_without, "refs_short": self.refs_short,
                               "lines": self.lines(), "headline": self.lines(short=False)}


def gap_reasons(refs: Sequence[Ref], annotations: Sequence[Annotation], candidates: Sequence[Candidate],
                options: MatchOptions) -> dict[int, tuple[str, int]]:
    """ref_id → (reason, backgrounds it got) for every ref with fewer than ``options.k`` candidates."""
    per_ref = Counter(c.ref_id for c in candidates)
    gaps = [r for r in sorted(refs, key=lambda r: r.ref_id) if per_ref.get(r.ref_id, 0) < options.k]
    if not gaps:
        return {}
    pools = {c: set(ids.tolist()) for c, ids in image_clusters(annotations).items()}
    group_of = image_split_groups(refs, [a.image_id for a in annotations], options.seed)
    in_group: dict[int, Counter[str]] = {c: Counter(group_of.get(i) for i in ids) for c, ids in pools.items()}
    out = {}
    for r in gaps:
        cluster = ref_cluster(r)
        images = pools.get(cluster, set())
        own = 1 if int(r.image_id) in images else 0
        everywhere = len(images) - own
        group = group_of.get(int(r.image_id))
        scope = in_group.get(cluster, Counter()).get(group, 0) - own if options.within_splits else everywhere
        got = per_ref.get(r.ref_id, 0)
        need = 1 if got == 0 else options.k  # images the ref would have needed to do better
        if scope >= need and options.max_uses is not None:
            reason = USAGE_CAP
        elif options.within_splits and everywhere > scope:
            reason = SPLIT_GROUP
        else:
            reason = CLUSTER_TOO_SMALL
        out[int(r.ref_id)] = (reason, got)
    return out


def match_gaps(refs: Sequence[Ref], annotations: Sequence[Annotation], candidates: Sequence[Candidate],
               options: MatchOptions) -> MatchGaps:
    """Explain every ref with fewer than ``options.k`` candidates (refs and annotations as matched)."""
    without: Counter[str] = Counter()
    short: Counter[str] = Counter()
    examples: dict[str, list[int]] = {}
    for ref_id, (reason, got) in gap_reasons(refs, annotations, candidates, options).items():
        (without if got == 0 else short)[reason] += 1
        bucket = examples.setdefault(reason, [])
        if len(bucket) < EXAMPLES:
            bucket.append(ref_id)
    order = {name: i for i, name in enumerate(REASONS)}
    return MatchGaps(refs=len(refs), k=options.k, within_splits=options.within_splits, max_uses=options.max_uses,
                     without=dict(sorted(without.items(), key=lambda kv: order[kv[0]])),
                     short=dict(sorted(short.items(), key=lambda kv: order[kv[0]])),
                     examples=dict(sorted(examples.items(), key=lambda kv: order[kv[0]])))


__all__ = ["CLUSTER_TOO_SMALL", "REASONS", "SPLIT_GROUP", "USAGE_CAP", "MatchGaps", "gap_reasons", "match_gaps"]
