"""Does the robust profile make samples that must be read? The paper profile beside it, in one run.

    python benchmarks/shortcut.py [--images 1800] [--steps 20000] [--out DIR] [--reuse] [--jobs 1]
                                  [--validate paper,robust]

One demo source (``--images``, seed 0; 1,800 images give 323 test objects, which know the blind
share to about ±0.05, where 900 images' 160 left it at ±0.10) is built twice — ``--profile paper`` and the default
(``robust``) — and released without tar shards (``--no-dist``: validation reads the release's own
files; at 1,800 images the shards would add about 10 GB per profile); then for each release:

- the artifact audit (``comcoco audit``): held-out ROC AUC that pasted objects are told from the scenes'
  own objects, with its bootstrap interval, and per cue family;
- ``comcoco validate`` at ``--steps`` tiny-SAHM steps (docs/sahm.md: about 20,000 before the verdict can
  be judged): the full model's IoU and the blind model's (trained on empty expressions), their ratio
  with its object-level 95 % interval, and the verdict.

Goals: audit AUC paper ≥ 0.8 (the problem is visible), robust ≤ 0.65; blind / full IoU
ratio of the robust profile ≤ 0.35 with its interval below 0.5. The compose throughput of the robust
profile against the codec bound is ``benchmarks/compose.py``.

Each validation trains its full model and blind twin side by side (one core each, ``comcoco validate``
on a CPU); ``--jobs`` validations run at once, ``--validate`` names the profiles to validate (the
others are audited only). ``--reuse`` keeps what
an earlier run of the same ``--out`` made (source, builds, releases, and validation runs, which
``comcoco validate`` continues); a profile left out of ``--validate`` then reports its earlier
validation, if it has one. Prints a table; ``DIR/shortcut.json`` holds every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILES = ("paper", "robust")


def comcoco(*args: str, log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log, "ab") as fh:
        proc = subprocess.run([sys.executable, "-m", "comcoco", *args], stdout=fh, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO)
    if proc.returncode not in (0, 4):  # 4: a partial build (some samples failed) is still a build
        raise SystemExit(f"comcoco {' '.join(args)} failed ({proc.returncode}); see {log}")


def build_and_release(out: Path, images: int, reuse: bool) -> dict[str, Path]:
    source = out / "source"
    if not (reuse and (source / "demo-source.json").is_file()):
        shutil.rmtree(source, ignore_errors=True)
        comcoco("demo-source", "-o", str(source), "--images", str(images), "--seed", "0", log=out / "log.txt")
    releases = {}
    for profile in PROFILES:
        work, rels = out / f"work-{profile}", out / f"releases-{profile}"
        rel = rels / "comcoco-1.0.0"
        if not (reuse and rel.is_dir()):
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(rels, ignore_errors=True)
            comcoco("build", str(source), "-o", str(work), "--profile", profile, "--workers", "2", "--no-progress",
                    log=out / "log.txt")
            # no tar shards: validation reads the release's own files, and at 1,800 images the shards
            # would take about 10 GB per profile (docs/release.md, *Size*)
            comcoco("release", str(work), "-o", str(rels), "--version", "1.0.0", "--no-dist", "--no-progress",
                    log=out / "log.txt")
        releases[profile] = rel
    return releases


def report_of(release: Path) -> Path:
    """Where ``comcoco validate`` writes a published release's report (beside it, never inside)."""
    return release.with_name(release.name + ".validation") / "validation.json"


def validate(releases: dict[str, Path], steps: int, out: Path, jobs: int, profiles: list[str]) -> dict[str, dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO), MKL_NUM_THREADS="1")
    procs = {}
    pending = list(profiles)
    results = {}
    while pending or procs:
        while pending and len(procs) < jobs:
            p = pending.pop(0)
            cmd = [sys.executable, "-m", "comcoco", "validate", str(releases[p]), "--out", str(out / f"run-{p}"),
                   "--steps", str(steps), "--device", "cpu", "--no-progress"]
            procs[p] = subprocess.Popen(cmd, stdout=open(out / f"validate-{p}.log", "wb"), stderr=subprocess.STDOUT,
                                        env=env, cwd=REPO)
        for p, proc in list(procs.items()):
            if proc.poll() is not None:
                del procs[p]
                report = report_of(releases[p])
                if proc.returncode != 0 or not report.is_file():
                    raise SystemExit(f"validate {p} failed ({proc.returncode}); see {out / f'validate-{p}.log'}")
                results[p] = json.loads(report.read_text())
        time.sleep(5)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1800)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path("runs/shortcut"))
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--validate", default=",".join(PROFILES), help="profiles to validate (comma-separated)")
    args = ap.parse_args()
    to_validate = [p for p in PROFILES if p in args.validate.split(",")]
    sys.path.insert(0, str(REPO))
    from comcoco.release.audit import audit_release
    from comcoco.sahm.validate import pasted_note

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    releases = build_and_release(args.out, args.images, args.reuse)
    audits = {p: audit_release(rel) for p, rel in releases.items()}
    t1 = time.perf_counter()
    vals = validate(releases, args.steps, args.out, args.jobs, to_validate) if args.steps > 0 else {}
    t2 = time.perf_counter()
    earlier = [p for p in PROFILES if p not in vals and args.reuse and report_of(releases[p]).is_file()]
    for p in earlier:  # validated by an earlier run of this --out: reported beside, and said so
        vals[p] = json.loads(report_of(releases[p]).read_text())
    summary = {"images": args.images, "steps": args.steps, "audit": audits,
               "validation": {p: v["language_baseline"] for p, v in vals.items()},
               "seconds": {"build_release_audit": round(t1 - t0, 1), "validate": round(t2 - t1, 1)}}
    (args.out / "shortcut.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    print(f"demo source: {args.images} images; {args.steps} tiny SAHM steps per model")
    print(f"{'':<28}{'paper':>26}{'robust':>26}")

    def auc(a: dict) -> str:
        return "n/a" if a["auc"] is None else f"{a['auc']:.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]"

    print(f"{'audit AUC (0.5 = hidden)':<28}{auc(audits['paper']):>26}{auc(audits['robust']):>26}")
    for fam in sorted(audits["paper"]["cues"]):
        row = [audits[p]["cues"].get(fam) for p in PROFILES]
        print(f"{'  ' + fam:<28}" + "".join(f"{'n/a' if v is None else f'{v:.2f}':>26}" for v in row))
    print(f"{'  pasted / native objects':<28}" + "".join(f"{audits[p]['n_pasted']} / {audits[p]['n_native']:<4}".rjust(26)
                                                        for p in PROFILES))
    if vals:
        lb = {p: vals[p]["language_baseline"] if p in vals else {} for p in PROFILES}
        for key, label in (("original", "IoU, original text"), ("blind", "IoU, trained without text")):
            print(f"{label:<28}" + "".join(f"{lb[p].get(key, {}).get('iou_mean', float('nan')):>26.3f}" for p in PROFILES))

        def ratio(b: dict) -> str:
            r, ci = b.get("ratio", {}).get("blind"), b.get("ratio_ci95", {}).get("blind")
            num = lambda v: f"{v:.2f}" if v < 100 else ">99"  # noqa: E731 (a full IoU near 0 divides)
            return "n/a" if r is None else f"{num(r)} [{num(ci[0])}, {num(ci[1])}]"

        print(f"{'blind / full IoU':<28}" + "".join(f"{ratio(lb[p]):>26}" for p in PROFILES))
        for p in PROFILES:
            when = " (validated by an earlier run)" if p in earlier else ""
            print(f"verdict {p}{when}: {lb[p].get('verdict', 'not validated')}")
            if note := pasted_note(lb[p]):
                print(f"  {note}")
    print("goals: audit paper >= 0.8, robust <= 0.65; blind/full robust <= 0.35 with its interval below 0.5")
    print(f"seconds: build, release and audit {t1 - t0:.0f}; validation {t2 - t1:.0f}; all numbers in "
          f"{args.out / 'shortcut.json'}")


if __name__ == "__main__":
    main()
