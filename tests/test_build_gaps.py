"""Silence is a bug: a build that plans nothing, or leaves objects without a background, says how many,
why (split group, cluster too small, usage cap) and which option changes it; each reason is checked
against what that option really does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from comcoco.matching.gaps import CLUSTER_TOO_SMALL, SPLIT_GROUP, USAGE_CAP, gap_reasons, match_gaps
from comcoco.matching.source import MatchOptions, match_source
from comcoco.sources.refer import load_source


def comcoco(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comcoco", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def _refs_with_candidates(source, options: MatchOptions) -> set[int]:
    return {c.ref_id for c in match_source(source.refs(), source.annotations(), options)}


def test_each_reason_names_what_its_option_changes(demo_source_small):
    """Refs blamed on the split group get backgrounds across splits; on the usage cap, without the cap;
    refs in a cluster too small get none whatever the options."""
    src = load_source(demo_source_small)
    refs, anns = src.refs(), src.annotations()
    capped = MatchOptions(k=5, max_uses=1)
    reasons = gap_reasons(refs, anns, match_source(refs, anns, capped), capped)
    without = {r: why for r, (why, got) in reasons.items() if got == 0}
    assert {USAGE_CAP, SPLIT_GROUP, CLUSTER_TOO_SMALL} <= set(without.values()), without
    uncapped = _refs_with_candidates(src, MatchOptions(k=5))
    across = _refs_with_candidates(src, MatchOptions(k=5, within_splits=False))
    for ref_id, why in without.items():
        if why == USAGE_CAP:
            assert ref_id in uncapped, ref_id
        elif why == SPLIT_GROUP:
            assert ref_id not in uncapped and ref_id in across, ref_id
        else:
            assert ref_id not in across, ref_id
    gaps = match_gaps(refs, anns, match_source(refs, anns, capped), capped)
    assert gaps.refs_without == len(without) and sum(gaps.without.values()) == len(without)
    line = gaps.lines(short=False)[0]
    assert line.startswith(f"{len(without)} of {len(refs)} objects found no background: ")
    assert "--match-across-splits" in line and "--max-uses 1" in line


def test_a_build_that_plans_nothing_says_why(prefect_api, tmp_path):
    """A six-image demo source matches nothing within its split groups: exit 4 and the reasons."""
    from comcoco.sources.demo import generate_demo_source

    source = generate_demo_source(tmp_path / "source", n_images=6, seed=0)
    src = load_source(source)
    refs = src.refs()
    assert not _refs_with_candidates(src, MatchOptions()), "precondition: nothing matches within splits"
    rescued = _refs_with_candidates(src, MatchOptions(within_splits=False))
    assert rescued, "precondition: matching across splits finds backgrounds"

    wd = tmp_path / "wd"
    proc = comcoco(["build", str(source), "-o", str(wd), "--no-progress"], prefect_api)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: no sample was planned: {len(refs)} of {len(refs)} objects found no "
                                f"background: {len(rescued)} have no image of their scene cluster in their own "
                                "split group (--match-across-splits draws from every split"), errors[0]
    assert f"{len(refs) - len(rescued)} have no other image of their scene cluster in the source" in errors[0]
    assert "0 of 0 samples ok" in proc.stdout
    record = json.loads((wd / "build.json").read_text())
    assert record["outcome"]["verdict"] == "partial" and record["matching"]["without"] == {
        SPLIT_GROUP: len(rescued), CLUSTER_TOO_SMALL: len(refs) - len(rescued)}

    across = comcoco(["build", str(source), "-o", str(tmp_path / "across"), "--match-across-splits",
                      "--no-progress"], prefect_api)
    assert across.returncode == 0, across.stderr
    planned = json.loads((tmp_path / "across" / "plan.json").read_text())["samples"]
    assert planned == len(rescued)
