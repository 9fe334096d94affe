"""The artifact audit: how well a small detector tells pasted objects from a scene's own objects.

``audit(records)`` takes (image, composite id, object mask, label) records and returns an
``AuditResult`` (held-out ROC AUC grouped by composite, a bootstrap interval, the AUC of each cue
family alone, the counts and a verdict); see ``detector`` for the protocol and ``features`` for the
cues. I/O-agnostic: images are arrays or paths, masks arrays or polygons.
"""

from comcoco.audit.detector import (
    MIN_PER_CLASS,
    SIZE_FACTOR,
    AuditResult,
    audit,
    grouped_folds,
    match_by_size,
)
from comcoco.audit.features import (
    FAMILIES,
    FEATURE_FAMILY,
    FEATURE_NAMES,
    MIN_AREA,
    AuditRecord,
    extract_features,
    object_features,
)

__all__ = [
    "FAMILIES",
    "FEATURE_FAMILY",
    "FEATURE_NAMES",
    "MIN_AREA",
    "MIN_PER_CLASS",
    "SIZE_FACTOR",
    "AuditRecord",
    "AuditResult",
    "audit",
    "extract_features",
    "grouped_folds",
    "match_by_size",
    "object_features",
]
