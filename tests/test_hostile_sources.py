"""Hostile sources: pickles and JSON built to exhaust time, memory or the stack, and text that cannot ship.

A few hundred bytes of pickle can reach 2**40 values through its memo, or nest a million deep; JSON can
nest deeper than any parser's stack. Each is loaded in a forked child of a driver process, under a
CPU-time alarm and an address-space limit, which reports the outcome, the seconds and the peak RSS
it added: every one must be a clean `SourceError` naming the file, in bounded time and memory, with
the hostile value quoted shortened, and never a `RecursionError`. An RLE without `size` is an
annotation's problem while the rest of the source loads and builds; lone surrogates and control
characters are reported by `inspect`, left in the build and out of the release.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from comcoco.build import build_inline
from comcoco.commands._common import EXIT_REFUSED
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.release.builder import ReleaseOptions, build_release
from comcoco.sources.refer import load_source
from comcoco.sources.safe_pickle import load_plain_pickle
from comcoco.sources.validate import inspect_source

SECONDS = 20.0  # bound per case; a plain load of the demo source takes well under a second
RSS_MB = 200.0  # bound on the peak resident memory a case may add

DRIVER = textwrap.dedent('''
    import json, os, resource, signal, sys, time
    from comcoco.errors import ComcocoError
    from comcoco.sources.refer import load_source
    for root in sys.argv[1:]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            signal.alarm(120)  # a runaway case dies here instead of running on
            resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
            def mb(key):  # this process's own memory (ru_maxrss would include the forking parent's peak)
                with open("/proc/self/status") as fh:
                    return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # the peak (VmHWM) starts again from what is resident now
            before = mb("VmRSS")
            t0 = time.perf_counter()
            try:
                load_source(root, cache_dir=root + ".cache")
                outcome, message = "loaded", ""
            except ComcocoError as exc:
                outcome, message = type(exc).__name__, str(exc)
            except BaseException as exc:  # noqa: BLE001 - what escaped is the finding
                outcome, message = "escaped " + type(exc).__name__, str(exc)[:2000]
            seconds = time.perf_counter() - t0
            rss = mb("VmHWM") - before
            os.write(w, json.dumps({"outcome": outcome, "message": message[:5000], "length": len(message),
                                    "seconds": seconds, "rss_mb": rss}).encode())
            os._exit(0)
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"root": root, "status": status, "report": b"".join(chunks).decode() or None}))
''')


def fan_out(levels: int = 8, width: int = 64, kind: str = "list") -> Any:
    """width**levels values reached from one root through shared references (a pickle "billion laughs"),
    nested only ``levels`` deep: within the depth limit, so only the count of values can refuse it."""
    x: Any = ["lol"] if kind == "list" else {"a": 1}
    for _ in range(levels):
        x = [x] * width if kind == "list" else {str(i): x for i in range(width)}
    return x


def deep_list_pickle(depth: int) -> bytes:
    """Pickle opcodes for a list nested ``depth`` deep (pickle.dumps itself would overflow the stack)."""
    return b"]" * depth + b"a" * (depth - 1)


def pickle_with(refs: list[Any], hole: str | None = None, filling: bytes = b"") -> bytes:
    """Protocol-2 pickle of ``refs`` (no framing); the string ``hole`` replaced by raw opcodes ``filling``."""
    data = pickle.dumps(refs, protocol=2)
    if hole is None:
        return data
    encoded = hole.encode()
    marker = b"X" + len(encoded).to_bytes(4, "little") + encoded
    assert data.count(marker) == 1
    return data.replace(marker, filling)


@pytest.fixture(scope="module")
def demo_refs(demo_source_small) -> list[Any]:
    return load_plain_pickle(demo_source_small / "refcoco+" / "refs(unc).p")


def hostile_source(base: Path, dest: Path, refs_bytes: bytes | None = None, instances: bytes | None = None) -> Path:
    shutil.copytree(base / "refcoco+", dest / "refcoco+")
    (dest / "images").symlink_to(base / "images")
    if refs_bytes is not None:
        (dest / "refcoco+" / "refs(unc).p").write_bytes(refs_bytes)
    if instances is not None:
        (dest / "refcoco+" / "instances.json").write_bytes(instances)
    return dest


def run_driver(roots: list[Path]) -> dict[str, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-c", DRIVER, *map(str, roots)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        assert row["status"] == 0 and row["report"], row  # the child ended normally (no alarm, no crash)
        out[Path(row["root"]).name] = json.loads(row["report"])
    return out


def test_fan_out_and_deep_nesting_are_refused_in_bounded_time_and_memory(demo_source_small, demo_refs, tmp_path):
    base = demo_source_small
    ref = demo_refs[0]
    itself: list[Any] = []
    itself.append(itself)
    deep = 1_000_000
    instances = json.loads((base / "refcoco+" / "instances.json").read_bytes())
    cases = {
        "fan-out as the refs list": pickle_with([fan_out()]),
        "fan-out of dicts beside the refs": pickle_with([*demo_refs, fan_out(kind="dict")]),
        "fan-out in an extra key of a ref": pickle_with([dict(ref, extra=fan_out()), *demo_refs[1:]]),
        "fan-out as a sentence's tokens": pickle_with(
            [dict(ref, sentences=[dict(ref["sentences"][0], tokens=fan_out())]), *demo_refs[1:]]),
        "a list nested a million deep": b"\x80\x02" + deep_list_pickle(deep) + b".",
        "deep nesting in an extra key": pickle_with([dict(ref, extra="HOLE"), *demo_refs[1:]], "HOLE",
                                                    deep_list_pickle(deep)),
        "a ref that contains itself": pickle_with([dict(ref, extra=itself), *demo_refs[1:]]),
        "a megabyte ann_id": pickle_with([dict(ref, ann_id="A" * 1_000_000), *demo_refs[1:]]),
        "a deep image_id": pickle_with([dict(ref, image_id="HOLE"), *demo_refs[1:]], "HOLE", deep_list_pickle(deep)),
    }
    json_cases = {
        "instances.json nested 200000 deep": b'{"images": [], "categories": [], "annotations": ['
                                              + b"[" * 200_000 + b"]" * 200_000 + b"]}",
        "instances.json with a deep segmentation": json.dumps(
            dict(instances, annotations=[dict(instances["annotations"][0], segmentation="HOLE"),
                                         *instances["annotations"][1:]])).encode().replace(
            b'"HOLE"', b"[" * 50_000 + b"[1.0]" + b"]" * 50_000),
    }
    roots = [hostile_source(base, tmp_path / f"case{i}", refs_bytes=data) for i, data in enumerate(cases.values())]
    roots += [hostile_source(base, tmp_path / f"case{len(cases) + i}", instances=data)
              for i, data in enumerate(json_cases.values())]
    names = [*cases, *json_cases]
    plain = len(pickle_with(demo_refs))
    assert all(len(data) < plain + 16_000 for name, data in cases.items() if "fan-out" in name), "small files"
    got = run_driver(roots)
    for i, name in enumerate(names):
        rep = got[f"case{i}"]
        assert not rep["outcome"].startswith("escaped"), (name, rep)
        assert rep["outcome"] in ("SourceError", "UnsafePickleError", "TreeTooLarge"), (name, rep)
        assert str(roots[i] / "refcoco+") in rep["message"], (name, rep["message"][:300])
        assert rep["length"] < 400, (name, rep["length"], rep["message"][:400])
        assert rep["seconds"] < SECONDS and rep["rss_mb"] < RSS_MB, (name, rep)


def test_inspect_refuses_a_fan_out_pickle_in_one_line(demo_source_small, tmp_path):
    root = hostile_source(demo_source_small, tmp_path / "src", refs_bytes=pickle_with([fan_out(levels=10)]))
    proc = subprocess.run([sys.executable, "-m", "comcoco", "inspect", str(root)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT_REFUSED, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refs(unc).p" in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert "fans out" in errors[0] or "more than" in errors[0], errors[0]


# --- annotations and text that the build must survive ------------------------------------------------


@pytest.fixture(scope="module")
def clean_plan(demo_source_small, tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    """A clean build of the demo source, to know which refs a small build plans (and to compare with)."""
    wd = tmp_path_factory.mktemp("clean") / "wd"
    counts = build_inline(SourceSpec(root=str(demo_source_small)), wd, BuildConfig(limit=6, shard_size=6, seed=0))
    assert counts["by_status"] == {"ok": 6}
    return wd, pq.read_table(wd / "status.parquet").to_pylist()


def test_an_rle_without_size_is_one_annotations_problem(demo_source_small, clean_plan, tmp_path):
    _, status = clean_plan
    referred = int(status[0]["fg_ann_id"])
    src = hostile_source(demo_source_small, tmp_path / "src")
    inst_path = src / "refcoco+" / "instances.json"
    inst = json.loads(inst_path.read_text())
    unreferred = max(a["id"] for a in inst["annotations"])
    for a in inst["annotations"]:
        if a["id"] in (referred, unreferred):
            a["segmentation"] = {"counts": "PP0"}  # no size
    inst_path.write_text(json.dumps(inst))
    report = inspect_source(load_source(src))
    no_size = {p.id for p in report.problems if p.kind == "invalid_segmentation" and "RLE without" in p.message}
    assert no_size == {referred, unreferred}
    assert report.annotations == len(inst["annotations"]) and report.refs > 0
    counts = build_inline(SourceSpec(root=str(src)), tmp_path / "wd", BuildConfig(limit=6, shard_size=6, seed=0))
    rows = pq.read_table(tmp_path / "wd" / "status.parquet").to_pylist()
    bad = [r for r in rows if int(r["fg_ann_id"]) == referred]
    assert bad and all(r["status"] != "ok" and str(referred) in r["reason"] for r in bad), bad
    assert counts["by_status"].get("ok", 0) >= 3, counts  # the rest of the source built
    assert "not_built" not in counts["by_status"], counts


def test_unusable_text_is_reported_built_and_left_out_of_the_release(demo_source_small, demo_refs, clean_plan,
                                                                     tmp_path):
    _, status = clean_plan
    ref_id = int(status[0]["fg_ref_id"])
    refs = [dict(r, sentences=[dict(s) for s in r["sentences"]]) for r in demo_refs]
    ref = next(r for r in refs if r["ref_id"] == ref_id)
    good = {"tokens": ["the", "plain", "one"], "raw": "the plain one", "sent_id": 900_001, "sent": "the plain one"}
    lone = {"tokens": ["a", "\ud800"], "raw": "a \ud800", "sent_id": 900_002, "sent": "a \ud800"}
    escape = {"tokens": ["red"], "raw": "\x1b[31mred", "sent_id": 900_003, "sent": "\x1b[31mred"}
    ref["sentences"] += [good, lone, escape]
    ref["sent_ids"] = [s["sent_id"] for s in ref["sentences"]]
    src = hostile_source(demo_source_small, tmp_path / "src", refs_bytes=pickle.dumps(refs, protocol=2))
    unusable = [p for p in inspect_source(load_source(src)).problems if p.kind == "unusable_text"]
    assert {p.id for p in unusable} == {ref_id} and len(unusable) == 2
    assert any("lone surrogate (U+D800)" in p.message for p in unusable)
    assert any("control character (U+001B)" in p.message for p in unusable)
    assert all("\x1b" not in p.message and "\ud800" not in p.message for p in unusable), "quoted raw"
    wd = tmp_path / "wd"
    counts = build_inline(SourceSpec(root=str(src)), wd, BuildConfig(limit=6, shard_size=6, seed=0))
    assert counts["by_status"] == {"ok": 6}
    report = json.loads((wd / "source-report.json").read_text())
    assert report["problem_counts"].get("unusable_text") == 2, report["problem_counts"]
    release = build_release(wd, tmp_path / "releases", "1.0.0",
                            ReleaseOptions(proportions={"train": 2, "val": 1, "test": 1}, audit=False))
    released = load_plain_pickle(release / "ComCOCO+" / "refs(unc).p")
    texts = [s["raw"] for r in released for s in r["sentences"]]
    assert "the plain one" in texts, "the good sentence of the same ref was dropped"
    for p in release.rglob("*"):
        if p.is_file() and p.suffix in (".p", ".json", ".jsonl", ".parquet", ".md"):
            data = p.read_bytes()
            assert b"\x1b[31m" not in data and b"\xed\xa0\x80" not in data and b"\\ud800" not in data, p


def test_a_ref_with_an_unknown_split_is_reported_and_left_out(demo_source_small, demo_refs, clean_plan, tmp_path):
    """A split that maps to no release split (here a megabyte of it) used to crash matching with a
    traceback quoting the whole value; it is one ref's problem, shown shortened, and the build goes on."""
    _, status = clean_plan
    ref_id = int(status[0]["fg_ref_id"])
    refs = [dict(r, split="x" * 1_000_000) if r["ref_id"] == ref_id else dict(r, split="dev") if i == 1 else r
            for i, r in enumerate(demo_refs)]
    other = refs[1]["ref_id"]
    src = hostile_source(demo_source_small, tmp_path / "src", refs_bytes=pickle.dumps(refs, protocol=2))
    problems = [p for p in inspect_source(load_source(src)).problems if p.kind == "unknown_split"]
    assert sorted(p.id for p in problems) == sorted({ref_id, other}) and all(len(p.message) < 300 for p in problems)
    proc = subprocess.run([sys.executable, "-m", "comcoco", "inspect", str(src)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert max(len(line) for line in (proc.stdout + proc.stderr).splitlines()) < 400, "a value was printed whole"
    counts = build_inline(SourceSpec(root=str(src)), tmp_path / "wd", BuildConfig(limit=6, shard_size=6, seed=0))
    assert counts["by_status"].get("ok", 0) >= 3, counts
    rows = pq.read_table(tmp_path / "wd" / "status.parquet").to_pylist()
    assert not [r for r in rows if int(r["fg_ref_id"]) in (ref_id, other)], "a ref of an unknown split was built"
