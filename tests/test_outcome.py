"""The build's verdict, one owner for the exit code, the flow's final state and build.json."""

from __future__ import annotations

from comcoco.outcome import FAILURES, OK, PARTIAL, build_outcome, failed_table, worst_reasons
from comcoco.workdir import StatusRow


def status(**by: int) -> dict:
    return {"samples": sum(by.values()), "by_status": by}


def test_verdicts():
    assert build_outcome(status(ok=24), {}, None).verdict == OK
    failures = build_outcome(status(ok=22, bad_source=2), {}, None)
    assert failures.verdict == FAILURES and failures.message == "2 of 24 samples failed (bad_source 2); 22 ok"
    assert "--retry-failed" in failures.next_step
    strict = build_outcome(status(ok=22, bad_source=2), {}, None, strict=True)
    assert strict.verdict == PARTIAL and strict.message.endswith("(--strict)")
    none_ok = build_outcome(status(bad_background=3), {}, None)
    assert none_ok.verdict == PARTIAL and none_ok.message == "none of 3 samples is ok (bad_background 3)"
    crashed = build_outcome(status(ok=4, not_built=4), {"3": "RuntimeError: boom"}, None)
    assert crashed.verdict == PARTIAL and crashed.message == "4 of 8 samples not built: shard(s) 00003 did not complete (4 ok)"
    assert crashed.next_step.startswith("run the same command again")
    full = build_outcome(status(ok=4, not_built=4), {"3": "OSError: [Errno 28] No space left on device"}, None,
                         disk_full=True)
    assert full.message.startswith("no space left on device: ") and full.next_step.startswith("free some space")
    empty = build_outcome(status(), {}, {"lines": ["5 of 5 objects found no background: ..."]})
    assert empty.verdict == PARTIAL and empty.message == "no sample was planned: 5 of 5 objects found no background: ..."
    assert build_outcome(status(), {}, None).message.startswith("no sample was planned")


def _row(i: int, status_: str, reason: str) -> StatusRow:
    return StatusRow(sample_id=f"s{i}", composite_id=f"s{i}", status=status_, reason=reason, fg_ref_id=i, fg_ann_id=i,
                     fg_image_id=i, bg_image_id=100 + i, category_id=1, candidate_rank=1, seed=0, config="", shard=i // 2)


def test_worst_reasons_group_failures_whatever_their_ids_and_files():
    rows = [_row(i, "bad_source", f"source image {i}: /data/COCO_{i:012d}.jpg: missing file") for i in range(5)]
    rows += [_row(9, "placement_failed", "no placement inside the image"), _row(10, "ok", "")]
    worst = worst_reasons(rows)
    assert [(w["samples"], w["status"]) for w in worst] == [(5, "bad_source"), (1, "placement_failed")]
    assert worst[0]["reason"] == "source image N: FILE: missing file" and worst[0]["example_sample"] == "s0"
    table, left_out = failed_table(rows, limit=4)
    assert [r["sample"] for r in table] == ["s0", "s1", "s2", "s3"] and left_out == 2
    assert table[0]["shard"] == "00000" and table[0]["background"] == 100
