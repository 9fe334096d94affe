"""The artifact audit: can a small detector tell pasted objects from the scene's own objects?

Protocol (all seeded, deterministic):

1. **Size matching** on mask areas (objects under ``MIN_AREA`` pixels are skipped). Each pasted
   object, largest first, takes the unused native object closest in log-area, if within a factor
   ``SIZE_FACTOR`` (ties: composite id, object id); unmatched objects are dropped, so both classes
   have the same size distribution and size is no cue. Native objects whose box, grown by 8 px,
   meets a pasted object's box in the same composite are not used (the paste would be inside
   their ring).
2. **Features** (``features.object_features``) of the matched crops only; a pair whose member cannot
   be measured (unreadable image, mask outside it) is dropped whole and named in ``problems``.
3. **Refusal.** With fewer than ``min_per_class`` crops of either class, or fewer than two
   composites, the audit refuses to judge: ``auc`` is None and the verdict says how many it had.
4. **Detector.** Logistic regression on standardised features (median-imputed), out-of-fold
   scores from ``StratifiedGroupKFold`` grouped **by composite** (a composite is never in both
   train and test; ``AuditRecord.group`` can widen the unit, e.g. to the background image),
   ``folds`` folds (fewer if there are fewer groups).
5. **Numbers.** ROC AUC of the pooled out-of-fold scores; a 95 % interval from ``bootstrap``
   resamples of whole composites; the same AUC with each cue family's columns alone (``cues``).

Verdict (by the AUC and its interval): ≥ 0.8 "detectable", ≥ 0.65 "partly detectable", an interval
containing 0.5 "not detectable at this sample size", otherwise "hard to detect".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from comcoco.audit.features import FAMILIES, FEATURE_FAMILY, MIN_AREA, AuditRecord, extract_features
from comcoco.ids import rng_for

MIN_PER_CLASS = 30  # below this many crops of either class the audit refuses to judge
SIZE_FACTOR = 2.0  # a native object matches a pasted one within this area ratio
DETECTABLE, PARTLY = 0.8, 0.65
_GAP = 8  # px: a native object this close to a paste is not used


@dataclass(frozen=True)
class AuditResult:
    auc: float | None
    ci: tuple[float, float] | None
    n_pasted: int
    n_native: int
    cues: dict[str, float | None]
    verdict: str
    n_composites: int = 0
    folds: int = 0
    min_per_class: int = MIN_PER_CLASS
    seed: int = 0
    problems: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = None if self.ci is None else [self.ci[0], self.ci[1]]
        d["problems"] = list(self.problems)
        return d


def _boxes_near(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return (min(a[0] + a[2] + gap, b[0] + b[2]) > max(a[0] - gap, b[0])
            and min(a[1] + a[3] + gap, b[1] + b[3]) > max(a[1] - gap, b[1]))


def match_by_size(records: Sequence[AuditRecord], areas: Sequence[int] | None = None,
                  factor: float = SIZE_FACTOR) -> list[tuple[int, int]]:
    """(pasted index, native index) pairs: greedy one-to-one nearest log-area within ``factor``."""
    areas = [r.area for r in records] if areas is None else list(areas)
    pasted_boxes: dict[str, list[tuple[int, int, int, int]]] = {}
    for r in records:
        if r.label == "pasted":
            pasted_boxes.setdefault(r.composite_id, []).append(r.box)
    pasted = [i for i, r in enumerate(records) if r.label == "pasted" and areas[i] > 0]
    natives = [i for i, r in enumerate(records) if r.label == "native" and areas[i] > 0
               and not any(_boxes_near(r.box, b, _GAP) for b in pasted_boxes.get(r.composite_id, ()))]
    if not pasted or not natives:
        return []
    natives.sort(key=lambda i: (records[i].composite_id, records[i].object_id, i))
    log_n = np.log(np.asarray([areas[i] for i in natives], np.float64))
    free = np.ones(len(natives), bool)
    limit = math.log(factor)
    pairs = []
    for i in sorted(pasted, key=lambda i: (-areas[i], records[i].composite_id, records[i].object_id, i)):
        d = np.abs(log_n - math.log(areas[i]))
        d[~free] = np.inf
        j = int(np.argmin(d))  # first minimum: the sort order breaks ties
        if d[j] <= limit:
            free[j] = False
            pairs.append((i, natives[j]))
    return pairs


def grouped_folds(groups: Sequence[str], y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep every group (composite) on one side: [(train idx, test idx)]."""
    from sklearn.model_selection import StratifiedGroupKFold

    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    codes = np.asarray([index[g] for g in groups])
    k = max(2, min(int(folds), len(names)))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed) & 0x7FFFFFFF)
    return [(tr, te) for tr, te in cv.split(np.zeros(len(y)), y, codes)]


def _model():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                         LogisticRegression(C=1.0, max_iter=2000))


def _oof_scores(X: np.ndarray, y: np.ndarray, splits) -> np.ndarray:
    scores = np.full(len(y), np.nan)
    for tr, te in splits:
        if len(np.unique(y[tr])) < 2:
            scores[te] = 0.5
            continue
        m = _model().fit(X[tr], y[tr])
        scores[te] = m.predict_proba(X[te])[:, 1]
    return scores


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann–Whitney) formula, ties counted half."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _bootstrap_ci(y: np.ndarray, s: np.ndarray, groups: Sequence[str], n: int, seed: int) -> tuple[float, float]:
    names = sorted(set(groups))
    members: dict[str, list[int]] = {g: [] for g in names}
    for i, g in enumerate(groups):
        members[g].append(i)
    idx = [np.asarray(members[g]) for g in names]
    rng = rng_for(seed, "audit-bootstrap")
    vals = []
    for _ in range(int(n)):
        pick = rng.integers(0, len(names), len(names))
        sel = np.concatenate([idx[k] for k in pick])
        a = _auc(y[sel], s[sel])
        if math.isfinite(a):
            vals.append(a)
    if not vals:
        return (math.nan, math.nan)
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return (round(float(lo), 4), round(float(hi), 4))


def _verdict(auc: float, ci: tuple[float, float], cues: dict[str, float | None]) -> str:
    ranked = sorted(((v, k) for k, v in cues.items() if v is not None and math.isfinite(v)), reverse=True)
    top = ", ".join(f"{k} {v:.2f}" for v, k in ranked[:2])
    numbers = f"AUC {auc:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
    if auc >= DETECTABLE:
        return f"detectable: pasted objects are told from native ones at {numbers}; strongest cues: {top}"
    if auc >= PARTLY:
        return f"partly detectable: {numbers}; strongest cues: {top}"
    if ci[0] <= 0.5 <= ci[1]:
        return f"not detectable at this sample size: {numbers} includes 0.5"
    return f"hard to detect: {numbers}; strongest cues: {top}"


def audit(records: Sequence[AuditRecord], seed: int = 0, folds: int = 5, bootstrap: int = 1000,
          min_per_class: int = MIN_PER_CLASS) -> AuditResult:
    """Run the whole protocol (module docstring) on pasted and native object records."""
    # match on mask areas first, then extract features of the matched crops only (a pair whose
    # member cannot be measured is dropped whole, so the classes stay size-matched)
    areas = [r.area if r.area >= MIN_AREA else 0 for r in records]
    pairs = match_by_size(records, areas)
    needed = sorted({i for p in pairs for i in p})
    X_sub, used_sub, problems = extract_features([records[i] for i in needed])
    row_of = {needed[int(k)]: j for j, k in enumerate(used_sub)}
    pairs = [(a, b) for a, b in pairs if a in row_of and b in row_of]
    keep = sorted({i for p in pairs for i in p}, key=lambda i: row_of[i])
    X_all = X_sub
    n_p = sum(1 for i in keep if records[i].label == "pasted")
    n_n = len(keep) - n_p
    groups = [records[i].fold_group for i in keep]
    n_groups = len(set(groups))
    base = dict(n_pasted=n_p, n_native=n_n, n_composites=n_groups, min_per_class=int(min_per_class),
                seed=int(seed), problems=tuple(problems))
    if n_p < min_per_class or n_n < min_per_class or n_groups < 2:
        why = (f"not judged: {n_p} pasted and {n_n} native size-matched crops in {n_groups} composites "
               f"(needs at least {min_per_class} of each class and 2 composites or groups)")
        return AuditResult(auc=None, ci=None, cues={f: None for f in FAMILIES}, verdict=why, **base)
    from threadpoolctl import threadpool_limits

    X = X_all[[row_of[i] for i in keep]]
    y = np.asarray([1 if records[i].label == "pasted" else 0 for i in keep])
    splits = grouped_folds(groups, y, folds, seed)
    fam = np.asarray(FEATURE_FAMILY)
    cues: dict[str, float | None] = {}
    with threadpool_limits(limits=1):  # tiny problems: BLAS threads only add contention
        scores = _oof_scores(X, y, splits)
        for f in FAMILIES:
            cols = np.nonzero(fam == f)[0]
            cues[f] = round(_auc(y, _oof_scores(X[:, cols], y, splits)), 4)
    auc = round(_auc(y, scores), 4)
    ci = _bootstrap_ci(y, scores, groups, bootstrap, seed)
    return AuditResult(auc=auc, ci=ci, cues=cues, verdict=_verdict(auc, ci, cues), folds=len(splits), **base)
