"""What a `make demo` run showed, in a few lines: counts, the audit and validation verdicts, where to look.

    python scripts/demo_summary.py DEMO_DIR VERSION [SECONDS]

Reads only what the run wrote (the work directory's status, the release's manifest, audit.json and
validation/validation.json), so the lines say what this run found, not what a demo usually finds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _validation_line(v: dict | None) -> list[str]:
    if v is None:
        return ["validation  not run (validation/validation.json is missing)"]
    run, base = v.get("run", {}), v.get("language_baseline", {})
    iou = v.get("metrics", {}).get("iou_mean")
    blind = v.get("metrics", {}).get("iou_mean, trained without text")
    what = (f"SAHM {run.get('config')} {run.get('steps')} steps on {run.get('train_items')} train items, "
            f"tested on {run.get('test_items')} items ({base.get('objects', '?')} objects) in {run.get('seconds')} s")
    figures = f"mask IoU {iou}" + (f", trained without text {blind}" if blind is not None else "")
    return [f"validation  {what}: {figures}", f"            verdict: {base.get('verdict', 'none')}"]


def summary(demo: Path, version: str, seconds: float | None = None) -> list[str]:
    release = demo / "releases" / f"comcoco-{version}"
    manifest = _load(release / "manifest.json")
    if manifest is None:
        return [f"no release at {release}: the demo did not finish (see the messages above)"]
    sel = manifest["selection"]
    total = manifest["counts"]["total"]["ComCOCO"]
    splits = ", ".join(f"{s} {c['samples']}" for s, c in manifest["counts"]["per_split"]["ComCOCO"].items())
    built = sum(sel["workdir_status"].values())
    audit = manifest.get("audit") or {}
    auc = audit.get("auc")
    lines = [
        "",
        f"== what the demo showed{f' ({seconds / 60:.1f} min)' if seconds else ''} ==",
        f"built       {sel['workdir_status'].get('ok', 0)} of {built} planned samples ok "
        f"({', '.join(f'{k} {n}' for k, n in sorted(sel['workdir_status'].items()) if k != 'ok') or 'none failed'})",
        f"released    {total['samples']} samples, {total['expressions']} expressions, {total['images']} images "
        f"({splits}); every file checked against manifest.json",
        "audit       " + str(audit.get("verdict", "not run"))  # the verdict carries the AUC and its interval
        + (" (a detector telling pasted from native objects; AUC 0.5 = cannot tell)" if auc is not None else ""),
        *_validation_line(_load(release / "validation" / "validation.json")),
        "where       "
        f"{release}/card.html (open in a browser: counts, audit, validation, examples)",
        f"            {demo}/work/status.parquet (every sample and why it failed)",
        f"            {demo}/releases/sahm-runs/comcoco-{version}/ (the SAHM runs: metrics.jsonl, checkpoints)",
        f"            in Python: import comcoco; ds = comcoco.load('{release}', split='train')",
    ]
    return lines


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    seconds = float(sys.argv[3]) if len(sys.argv) == 4 else None
    print("\n".join(summary(Path(sys.argv[1]), sys.argv[2], seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
