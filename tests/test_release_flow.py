"""The Prefect release flow wraps the same stages and publishes the same files as the plain builder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from comcoco.build import build_inline
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.release.builder import ReleaseOptions, build_release
from comcoco.release.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1})

SCRIPT = """
import json, sys
from comcoco.release.builder import ReleaseOptions
from pipelines.release import run_release
out = run_release(sys.argv[1], sys.argv[2], "3.0.0", ReleaseOptions(**json.loads(sys.argv[3])),
                  validate=None)
print(json.dumps(out))
"""


def test_flow_matches_builder(demo_source_small, prefect_api, tmp_path):
    wd = tmp_path / "wd"
    build_inline(SourceSpec(root=str(demo_source_small)), wd, BuildConfig(limit=6, shard_size=6, seed=0))
    plain = build_release(wd, tmp_path / "plain", "3.0.0", OPTIONS)
    env = {**os.environ, **prefect_api, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(wd), str(tmp_path / "flow"),
                           json.dumps(OPTIONS.to_dict())], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    flowed = Path(out["release"])
    assert flowed == tmp_path / "flow" / "comcoco-3.0.0" and set(out["seconds"]) >= {"select", "export", "dist"}
    assert read_manifest(flowed)["files"] == read_manifest(plain)["files"]
    assert not list((tmp_path / "flow").glob("*.incomplete"))
