"""What a finished build tells its maintainer: a verdict, its reasons, and what to run next.

One owner for the verdict, so the command line's exit code, the Prefect flow's final state and
``build.json`` always agree:

* ``ok``: every planned sample is ok (exit 0, flow Completed);
* ``failures``: some samples failed with a reason (bad source image, placement, ...); the rest are ok
  (exit 0, flow "Completed with failures"; under ``--strict`` this is ``partial``);
* ``partial``: a shard crashed, samples were left ``not_built``, nothing was planned or nothing is ok,
  or the disk filled up (exit 4, flow Failed); what was made is kept and a rerun resumes.

Also the summaries shown beside a run: the Markdown summary (counts by status, the most frequent
reasons, seconds per stage) and the table of failed samples, both published as Prefect artifacts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from comcoco.records import STATUS_NOT_BUILT, STATUS_OK
from comcoco.workdir import StatusRow

OK, FAILURES, PARTIAL = "ok", "failures", "partial"
TABLE_ROWS = 1000  # rows of the failed-samples table; the rest are counted, and all are in status.parquet


@dataclass(frozen=True)
class BuildOutcome:
    verdict: str  # ok | failures | partial
    message: str  # one line: what the build made and what went wrong
    next_step: str | None  # what to run next, when anything is left to do

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return self.message + (f"; {self.next_step}" if self.next_step else "")


def _counts(by_status: dict[str, int], skip: Sequence[str] = (STATUS_OK,)) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()) if k not in skip and v)


def build_outcome(status: dict[str, Any], shard_errors: dict[str, str], gaps: dict[str, Any] | None,
                  strict: bool = False, disk_full: bool = False) -> BuildOutcome:
    """The verdict on a build from its status counts, crashed shards and matching gaps."""
    by = status.get("by_status", {})
    samples, ok = int(status.get("samples", 0)), int(by.get(STATUS_OK, 0))
    not_built = int(by.get(STATUS_NOT_BUILT, 0))
    gap_lines = (gaps or {}).get("lines") or []
    if samples == 0:
        why = "; ".join(gap_lines) if gap_lines else "the source has no referred object to compose"
        return BuildOutcome(PARTIAL, f"no sample was planned: {why}", None)
    if disk_full or shard_errors or not_built:
        shards = ", ".join(f"{int(k):05d}" for k in sorted(shard_errors, key=int)) or "unknown"
        what = "no space left on device: " if disk_full else ""
        return BuildOutcome(PARTIAL, f"{what}{not_built} of {samples} samples not built: shard(s) {shards} did not "
                            f"complete ({ok} ok)", ("free some space, then " if disk_full else "")
                            + "run the same command again: finished shards are kept and the others redone")
    failed = samples - ok
    if ok == 0:
        return BuildOutcome(PARTIAL, f"none of {samples} samples is ok ({_counts(by)})",
                            "fix what the reasons name, then run the same command with --retry-failed")
    if failed:
        return BuildOutcome(PARTIAL if strict else FAILURES,
                            f"{failed} of {samples} samples failed ({_counts(by)}); {ok} ok"
                            + (" (--strict)" if strict else ""),
                            "fix what the reasons name, then run the same command with --retry-failed")
    return BuildOutcome(OK, f"{ok} of {samples} samples ok", None)


# --- summaries ----------------------------------------------------------------------------------------


def _reason_kind(reason: str) -> str:
    """A reason with its numbers and file names blanked, so the same failure on many samples is one row."""
    text = re.sub(r"[^\s:,()]+\.(jpe?g|png|json|parquet|p)\b", "FILE", reason, flags=re.IGNORECASE)
    return re.sub(r"\d+", "N", text)


def worst_reasons(rows: Sequence[StatusRow], limit: int = 10) -> list[dict[str, Any]]:
    """The most frequent failure reasons (numbers and file names blanked), with one example each."""
    groups: dict[tuple[str, str], list[StatusRow]] = {}
    for r in rows:
        if not r.ok:
            groups.setdefault((r.status, _reason_kind(r.reason or "")), []).append(r)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return [{"samples": len(members), "status": status, "reason": kind, "example": members[0].reason,
             "example_sample": members[0].sample_id} for (status, kind), members in ranked[:limit]]


def failed_table(rows: Sequence[StatusRow], limit: int = TABLE_ROWS) -> tuple[list[dict[str, Any]], int]:
    """Failed samples as table rows (the first ``limit``), and how many were left out."""
    failed = [r for r in rows if not r.ok]
    table = [{"sample": r.sample_id, "status": r.status, "shard": f"{r.shard:05d}" if r.shard >= 0 else "",
              "ref": r.fg_ref_id, "ann": r.fg_ann_id, "background": r.bg_image_id, "reason": r.reason}
             for r in failed[:limit]]
    return table, max(0, len(failed) - limit)


def decoys_line(decoys: dict[str, Any], column: str = "decoys_skipped") -> str:
    """The build's decoys in one line (``comcoco.compose.samples.decoy_counts``), the column named as given."""
    left = ", ".join(f"{why} {n}" for why, n in decoys["skipped_by_status"].items())
    return (f"{decoys['pasted']} pasted in {decoys['composites']} composites"
            + (f"; {decoys['skipped']} left out ({left}; each row's {column} says why)" if decoys["skipped"] else ""))


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(workdir: str, summary: dict[str, Any], outcome: BuildOutcome,
                     rows: Sequence[StatusRow]) -> str:
    """The build's summary for a maintainer: verdict, counts by status, worst reasons, seconds per stage."""
    record, status = summary["record"], summary["status"]
    title = {OK: "Completed", FAILURES: "Completed with failures", PARTIAL: "Failed"}[outcome.verdict]
    lines = [f"# comcoco build: {title}", "", f"**{_md(outcome.message)}**", ""]
    if outcome.next_step:
        lines += [f"Next: {_md(outcome.next_step)}", ""]
    lines += [f"Work directory: `{workdir}`  ", f"Runner: {_md(record['runner'])}, {record['workers']} worker(s)"
              + (f", scheduler `{record['scheduler']}`" if record.get("scheduler") else ""), ""]
    lines += ["## Samples by status", "", "| status | samples |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(status.get("by_status", {}).items())]
    lines += [f"| **all** | {status.get('samples', 0)} |", ""]
    if decoys := status.get("decoys"):
        lines += [f"Decoys: {_md(decoys_line(decoys, '`decoys_skipped`'))}", ""]
    gap_lines = (summary.get("matching") or {}).get("lines") or []
    if gap_lines:
        lines += ["## Objects without enough backgrounds", ""] + [f"- {_md(g)}" for g in gap_lines] + [""]
    worst = worst_reasons(rows)
    if worst:
        lines += ["## Worst reasons", "", "| samples | status | reason | example |", "|---:|---|---|---|"]
        lines += [f"| {w['samples']} | {w['status']} | {_md(w['reason'])} | {_md(w['example'])} |" for w in worst]
        lines += [""]
    if record.get("shard_errors"):
        lines += ["## Shards that did not complete", "", "| shard | error |", "|---|---|"]
        lines += [f"| {int(s):05d} | {_md(e)} |" for s, e in record["shard_errors"].items()] + [""]
    lines += ["## Seconds per stage", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in record["seconds"].items()]
    lines += ["", f"{record['shards_run']} shard(s) run, {record['shards_skipped']} skipped; "
              f"{record['samples_per_second']:.2f} samples/s in compose."]
    return "\n".join(lines) + "\n"


__all__ = ["FAILURES", "OK", "PARTIAL", "BuildOutcome", "build_outcome", "failed_table", "summary_markdown",
           "worst_reasons"]
