"""The lines `make demo` ends with: what this run's files say, never a fixed text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from comcoco.build import build_inline
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.release.builder import ReleaseOptions, build_release

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from demo_summary import summary  # noqa: E402


def test_summary_reports_counts_audit_and_validation_of_the_run(demo_source_small, tmp_path):
    demo = tmp_path / "demo"
    build_inline(SourceSpec(root=str(demo_source_small)), demo / "work", BuildConfig(limit=6, shard_size=3, seed=0))
    release = build_release(demo / "work", demo / "releases", "0.1.0",
                            ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1}))
    manifest = json.loads((Path(release) / "manifest.json").read_text())
    total = manifest["counts"]["total"]["ComCOCO"]
    lines = summary(demo, "0.1.0", 312)
    text = "\n".join(lines)
    assert "(5.2 min)" in text
    assert f"released    {total['samples']} samples, {total['expressions']} expressions" in text
    assert f"built       {manifest['selection']['workdir_status']['ok']} of" in text
    assert manifest["audit"]["verdict"] in text
    assert "validation  not run" in text and f"{release}/card.html" in text

    (Path(release) / "validation").mkdir()
    (Path(release) / "validation" / "validation.json").write_text(json.dumps({
        "metrics": {"iou_mean": 0.031, "iou_mean, trained without text": 0.02},
        "language_baseline": {"objects": 7, "verdict": "inconclusive: the split has 7 referred objects"},
        "run": {"config": "tiny", "steps": 300, "train_items": 40, "test_items": 9, "seconds": 99.0}}))
    text = "\n".join(summary(demo, "0.1.0"))
    assert "SAHM tiny 300 steps on 40 train items, tested on 9 items (7 objects)" in text
    assert "mask IoU 0.031, trained without text 0.02" in text
    assert "verdict: inconclusive: the split has 7 referred objects" in text

    missing = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_summary.py"), str(tmp_path / "none"), "0.1.0"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 0 and "did not finish" in missing.stdout
