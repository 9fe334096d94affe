"""The artifact audit of a release: can a small detector tell its pasted objects from the scenes' own?

A release's ``ComCOCO/instances.json`` holds both kinds of object on every composite: the pasted
targets (``comcoco.role = "target"``, whose refs are the samples) and the background's own annotated
objects (``"background"``). ``audit_release`` turns them into records for ``comcoco.audit.audit``:
crops around each, size-matched natives, folds grouped by background image (several composites can
share a background and so its native objects; none may sit on both sides of a fold). The result —
held-out ROC AUC with a bootstrap interval, the AUC of each cue family alone, the counts, a verdict —
is written into the release (``audit.json``), its manifest and its card by ``comcoco release``, and
printed by ``comcoco audit RELEASE``. 0.5 means the pasted objects cannot be told apart.

Large releases are audited on a seeded sample of at most ``MAX_TARGETS`` targets (and all native
objects of their backgrounds), so the audit stays within minutes on a CPU; the result says how many
it used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from comcoco.audit import AuditRecord, AuditResult, audit
from comcoco.ids import stable_hash64
from comcoco.release.options import ReleaseError

AUDIT_FILE = "audit.json"
MAX_TARGETS = 2000


def _mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    from comcoco.sources.images import annotation_mask

    return annotation_mask(segmentation, height, width) > 0


def release_records(release: str | os.PathLike[str], variant: str = "ComCOCO", seed: int = 0,
                    max_targets: int = MAX_TARGETS) -> tuple[list[AuditRecord], int]:
    """The audit's records for ``release`` and the number of targets it had in all."""
    release = Path(release)
    path = release / variant / "instances.json"
    try:
        instances = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{path}: cannot be read ({exc}); not a comcoco release") from None
    images = {int(i["id"]): i for i in instances.get("images", [])}
    anns = instances.get("annotations", [])
    targets = [a for a in anns if (a.get("comcoco") or {}).get("role") == "target"]
    natives = [a for a in anns if (a.get("comcoco") or {}).get("role") == "background"]
    total = len(targets)
    if len(targets) > max_targets:  # a seeded sample of whole backgrounds keeps the folds grouped
        keyed = sorted(targets, key=lambda a: (stable_hash64(seed, "audit", int(a["id"])), int(a["id"])))
        targets = sorted(keyed[:max_targets], key=lambda a: int(a["id"]))
    used_images = {int(a["image_id"]) for a in targets}
    records = []
    for a in targets + [n for n in natives if int(n["image_id"]) in used_images]:
        img = images.get(int(a["image_id"]))
        if img is None:
            continue
        group = str(img.get("bg_image_id", img["id"]))
        label = "pasted" if a["comcoco"]["role"] == "target" else "native"
        mask = _mask(a["segmentation"], int(img["height"]), int(img["width"]))
        records.append(AuditRecord.from_full_mask(str(img["id"]), release / "images" / img["file_name"], mask,
                                                  label, object_id=str(a["id"]), group=group))
    return records, total


def audit_release(release: str | os.PathLike[str], seed: int = 0, max_targets: int = MAX_TARGETS) -> dict[str, Any]:
    """The audit of ``release`` as a JSON-ready dict (``AuditResult.to_dict`` plus the sample it used)."""
    records, total = release_records(release, seed=seed, max_targets=max_targets)
    result: AuditResult = audit(records, seed=seed)
    out = result.to_dict()
    out["targets_in_release"] = total
    out["targets_audited"] = sum(1 for r in records if r.label == "pasted")
    return out


def write_audit(release: str | os.PathLike[str], seed: int = 0) -> dict[str, Any]:
    """Audit a release being built and write ``audit.json`` into it (it ships with the release)."""
    from comcoco.io import write_text_atomic

    result = audit_release(release, seed=seed)
    write_text_atomic(Path(release) / AUDIT_FILE, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result
