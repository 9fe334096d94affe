"""Review against the real Label Studio server of the session: push, annotate through the API, pull.

Each test makes its own small work directory under the server's document root (so its images are
served) and therefore its own projects.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from review_boxes import image_size, shifted
from typer.testing import CliRunner

from comcoco.build import build_inline
from comcoco.cli import app
from comcoco.decisions import decisions_path, ledger_path, read_decisions, read_ledger
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.review.bookkeeping import read_projects, read_tasks
from comcoco.review.pull import pull
from comcoco.review.push import push
from comcoco.review.server import RetryPolicy, ReviewServer
from comcoco.review.status import review_status
from comcoco.review.tasks import percent_to_box
from comcoco.workdir import Workdir


def read_status(workdir) -> list[dict]:
    """status.parquet's rows as plain dicts, read from the file as any user would."""
    return pq.read_table(Path(workdir) / "status.parquet").to_pylist()

REPO = Path(__file__).resolve().parents[1]
FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2)


@pytest.fixture(scope="module")
def built(demo_source_small, tmp_path_factory) -> Path:
    """One small work directory (6 samples in 2 shards), copied by each test."""
    out = tmp_path_factory.mktemp("review-build") / "wd"
    build_inline(SourceSpec(root=str(demo_source_small)), out, BuildConfig(limit=6, shard_size=4, seed=0))
    return out


@pytest.fixture()
def workdir(built, label_studio, request) -> Path:
    dest = label_studio.document_root / f"{request.node.name[:30]}-{os.getpid()}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(built, dest)
    return dest


@pytest.fixture()
def server(label_studio) -> ReviewServer:
    return ReviewServer(label_studio.url, label_studio.token, FAST)


@pytest.fixture()
def cli_env(label_studio) -> dict[str, str]:
    return {"COMCOCO_LS_URL": label_studio.url, "COMCOCO_LS_TOKEN": label_studio.token,
            "COMCOCO_LS_DOCUMENT_ROOT": str(label_studio.document_root),
            "COMCOCO_LS_RETRIES": "3", "COMCOCO_LS_BACKOFF": "0.05"}


def cli(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, args, env=env)


def decision(value: str, **extra) -> list[dict]:
    res = [{"from_name": "decision", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]
    if "box" in extra:
        x, y, w, h, W, H = extra["box"]
        res.append({"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": W,
                    "original_height": H, "value": {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W,
                                                    "height": 100 * h / H, "rotation": 0, "rectanglelabels": ["object"]}})
    if "reason" in extra:
        res.append({"from_name": "reason", "to_name": "image", "type": "textarea", "value": {"text": [extra["reason"]]}})
    return res


def tasks_by_sample(server: ReviewServer, project: int) -> dict[tuple[str, int], dict]:
    return {(t["data"]["sample_id"], t["data"]["round"]): t for t in server.list_tasks(project)}


def rows(workdir: Path) -> dict[str, dict]:
    return {r["sample_id"]: r for r in read_status(workdir)}


def test_both_stages_end_to_end(workdir, server, cli_env, label_studio):
    # --- stage 1 push: every built sample, doubtful first; a second push is a no-op ---------------
    res = cli(["review", "push", str(workdir), "--stage", "placement"], cli_env)
    assert res.exit_code == 0, res.output
    assert "imported 6 task(s)" in res.output and label_studio.token not in res.output
    pid = read_projects(workdir)["placement"]["id"]
    tasks = server.list_tasks(pid)
    assert len(tasks) == 6
    score = {sid: r["plausibility"] for sid, r in rows(workdir).items()}
    ordered = [t["data"]["sample_id"] for t in tasks]  # by task id = import order
    assert [score[s] for s in ordered] == sorted(score[s] for s in ordered)
    first = tasks[0]
    assert first["data"]["image"].startswith("/data/local-files/?d=")
    assert "\n" in first["data"]["expressions"] or first["data"]["expressions"]
    assert cli(["review", "push", str(workdir), "--stage", "placement"], cli_env).output.count("imported 0 task(s)") == 1
    # a lost local record still creates no duplicates (the server's data.sample_id is checked)
    (workdir / "review" / "tasks.json").unlink()
    rep = push(workdir, "placement", server, label_studio.document_root)
    assert rep.imported == 0 and rep.adopted == 6 and len(server.list_tasks(pid)) == 6
    # the composite is really served for that task
    import urllib.request

    req = urllib.request.Request(label_studio.url + first["data"]["image"],
                                 headers={"Authorization": f"Token {label_studio.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200 and r.read()[:4] == b"\x89PNG"

    # --- act as annotators: adjust the most doubtful, reject one, accept one --------------------
    before = rows(workdir)
    adj_sid, rej_sid, acc_sid = ordered[0], ordered[1], ordered[2]
    by = tasks_by_sample(server, pid)
    W, H = image_size(workdir / before[adj_sid]["composite"])
    old_box = tuple(before[adj_sid][k] for k in ("box_x", "box_y", "box_w", "box_h"))
    new_box = shifted(workdir, before[adj_sid])
    server.annotate(by[(adj_sid, 0)]["id"], decision("adjust", box=(*new_box, W, H)))
    server.annotate(by[(rej_sid, 0)]["id"], decision("reject", reason="floating above the table"))
    # accept with the box left as shown is an accept (the prediction's box comes back unchanged)

    acc = before[acc_sid]
    server.annotate(by[(acc_sid, 0)]["id"], decision(
        "accept", box=(acc["box_x"], acc["box_y"], acc["box_w"], acc["box_h"], *image_size(workdir / acc["composite"]))))
    composite = workdir / before[adj_sid]["composite"]
    old_bytes = composite.read_bytes()
    old_manifest = json.loads((workdir / "manifest.json").read_text())

    res = cli(["review", "pull", str(workdir), "--stage", "placement"], cli_env)
    assert res.exit_code == 0, res.output
    assert "applied accept 1, adjust 1, reject 1" in res.output and "recomposed 1 sample(s); 1 sent back" in res.output
    got = read_decisions(workdir)
    assert {k: d.decision for k, d in got.items()} == {
        (adj_sid, "placement"): "adjust", (rej_sid, "placement"): "reject", (acc_sid, "placement"): "accept"}
    rej = got[(rej_sid, "placement")]
    assert rej.reason == "floating above the table" and rej.reviewer == "admin@comcoco.local"
    assert rej.reviewed_at.endswith("Z") and rej.task_id == by[(rej_sid, 0)]["id"]
    assert got[(adj_sid, "placement")].box == new_box
    # the adjusted sample was recomposed in the work directory: files, shard row, status, manifest
    after = rows(workdir)
    moved = (after[adj_sid]["box_x"], after[adj_sid]["box_y"], after[adj_sid]["box_w"], after[adj_sid]["box_h"])
    assert moved != old_box and all(abs(a - b) <= 2 for a, b in zip(moved, new_box, strict=True))
    assert composite.read_bytes() != old_bytes
    assert after[adj_sid]["polygon"] != before[adj_sid]["polygon"]
    new_manifest = json.loads((workdir / "manifest.json").read_text())
    assert new_manifest["files"][before[adj_sid]["composite"]] != old_manifest["files"][before[adj_sid]["composite"]]
    for sid in (rej_sid, acc_sid):
        assert after[sid] == before[sid]
    # sent back for a look: a round-1 task showing the new box
    by = tasks_by_sample(server, pid)
    assert (adj_sid, 1) in by and len(by) == 7
    look = server.sdk.predictions.list(task=by[(adj_sid, 1)]["id"])[0].result[0]
    assert look["from_name"] == "box" and percent_to_box(look["value"], (W, H)) == moved
    # the round is shown on the task (the placement config puts data.look above the image)
    assert by[(adj_sid, 1)]["data"]["look"].startswith("Round 2, look again: admin@comcoco.local adjusted the box")
    assert by[(adj_sid, 0)]["data"]["look"].startswith("Round 1, first look")
    project = server.project(pid)
    assert '<Header value="$look"' in project["label_config"]

    # --- pulling and pushing again change nothing ------------------------------------------------
    frozen = {p: p.read_bytes() for p in (decisions_path(workdir), workdir / "status.parquet",
                                          workdir / "manifest.json", ledger_path(workdir))}
    rep = pull(workdir, "placement", server, label_studio.document_root)
    assert not rep.applied and rep.unchanged == 3 and rep.sent_back == 0
    assert push(workdir, "placement", server, label_studio.document_root).imported == 0
    assert {p: p.read_bytes() for p in frozen} == frozen and len(server.list_tasks(pid)) == 7

    # --- the look: accept the recomposed sample ---------------------------------------------------
    server.annotate(by[(adj_sid, 1)]["id"], decision("accept"))
    rep = pull(workdir, "placement", server, label_studio.document_root)
    assert rep.applied == {"accept": 1} and rep.sent_back == 0
    final = read_decisions(workdir)[(adj_sid, "placement")]
    assert final.decision == "accept" and final.task_id == by[(adj_sid, 1)]["id"]

    # --- stage 2: accepted/adjusted samples only; keep/drop expressions, spatial phrases ----------
    res = cli(["review", "push", str(workdir), "--stage", "expressions"], cli_env)
    assert res.exit_code == 0 and "imported 2 task(s)" in res.output, res.output
    pid2 = read_projects(workdir)["expressions"]["id"]
    export = {t["data"]["sample_id"]: t for page in server.export(pid2) for t in page}
    assert set(export) == {adj_sid, acc_sid}
    t2 = export[acc_sid]
    options = t2["data"]["expression_options"]
    assert options and all(o["alias"].isdigit() for o in options)
    sent_ids = [int(o["alias"]) for o in options]
    kept = sent_ids[:1]
    server.annotate(t2["id"], [
        {"from_name": "keep", "to_name": "image", "type": "choices", "value": {"choices": [str(k) for k in kept]}},
        {"from_name": "spatial", "to_name": "image", "type": "textarea", "value": {"text": ["on the left"]}},
        {"from_name": "more", "to_name": "image", "type": "textarea", "value": {"text": ["next to the dog\n on the left "]}},
    ])
    rep = pull(workdir, "expressions", server, label_studio.document_root)
    assert rep.applied == {"done": 1} and rep.pending == 1
    d2 = read_decisions(workdir)[(acc_sid, "expressions")]
    assert d2.kept_sent_ids == tuple(kept) and d2.dropped_sent_ids == tuple(sorted(sent_ids[1:]))
    assert d2.spatial_phrases == ("on the left", "next to the dog")
    frozen = decisions_path(workdir).read_bytes()
    assert pull(workdir, "expressions", server, label_studio.document_root).unchanged == 1
    assert push(workdir, "expressions", server, label_studio.document_root).imported == 0
    assert decisions_path(workdir).read_bytes() == frozen

    res = cli(["review", "status", str(workdir)], cli_env)
    assert res.exit_code == 0, res.output
    assert "accept 2, reject 1" in res.output and "done 1" in res.output


def test_stage2_proposes_spatial_phrases_and_highlights(workdir, server, label_studio):
    rep = push(workdir, "expressions", server, label_studio.document_root, without_placement_review=True)
    assert rep.imported == 6
    export = [t for page in server.export(rep.project_id) for t in page]
    status = rows(workdir)
    with_phrases = 0
    for t in export:
        result = server.sdk.predictions.list(task=t["id"])[0].result
        names = {r["from_name"] for r in result}
        assert {"object", "keep"} <= names
        box = next(r for r in result if r["from_name"] == "object")
        r = status[t["data"]["sample_id"]]
        assert percent_to_box(box["value"], (box["original_width"], box["original_height"])) == (
            r["box_x"], r["box_y"], r["box_w"], r["box_h"])
        keep = next(r for r in result if r["from_name"] == "keep")
        assert keep["value"]["choices"] == [o["alias"] for o in t["data"]["expression_options"]]
        with_phrases += any(r["from_name"] == "spatial" and r["value"]["text"] for r in result)
    assert with_phrases >= 3


def test_interrupted_pull_resumes_without_loss_or_double_application(workdir, server, label_studio, monkeypatch):
    root = label_studio.document_root
    push(workdir, "placement", server, root)
    pid = read_projects(workdir)["placement"]["id"]
    by = tasks_by_sample(server, pid)
    sids = sorted(s for s, _ in by)
    status = rows(workdir)
    adj = sids[1]
    b = status[adj]
    W, H = image_size(workdir / b["composite"])
    target = shifted(workdir, b)
    plan = {sids[0]: decision("accept"), adj: decision("adjust", box=(*target, W, H)),
            sids[2]: decision("reject", reason="wrong scale"), sids[3]: decision("accept")}
    for sid, res in plan.items():
        server.annotate(by[(sid, 0)]["id"], res)

    # crash 1: inside the application of the adjust, after the files were swapped, before the decision
    real_merge = Workdir.merge_decisions
    calls = {"n": 0}

    def flaky_merge(wd, new):
        new = list(new)
        if new[0].decision == "adjust" and calls["n"] == 0:
            calls["n"] += 1
            raise RuntimeError("killed while applying")
        return real_merge(wd, new)

    monkeypatch.setattr(Workdir, "merge_decisions", flaky_merge)
    with pytest.raises(RuntimeError, match="killed while applying"):
        pull(workdir, "placement", server, root)
    assert (workdir / "review" / ".status-stale").is_file()
    partial = read_decisions(workdir)
    assert (adj, "placement") not in partial

    # crash 2: right after the first decision of the next pull is taken, before it is stored
    def stop_after_one(event):
        if event.startswith("decided"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull(workdir, "placement", server, root, after_each=stop_after_one)
    rep = pull(workdir, "placement", server, root)
    assert not (workdir / "review" / ".status-stale").exists()
    done = read_decisions(workdir)
    assert {k[0]: d.decision for k, d in done.items()} == {s: r[0]["value"]["choices"][0] for s, r in plan.items()}
    ledger = read_ledger(workdir)
    assert len(ledger) == 4 and sorted(a.decision for a in ledger.values()) == ["accept", "accept", "adjust", "reject"]
    assert all(a.annotator == "admin@comcoco.local" and a.updated_at.endswith("Z") for a in ledger.values())
    # the recomposition reached status.parquet although the first attempt died before refreshing it
    now = rows(workdir)[adj]
    assert (now["box_x"], now["box_y"]) != (b["box_x"], b["box_y"]) and abs(now["box_x"] - target[0]) <= 2
    # exactly one look task for the adjusted sample
    by = tasks_by_sample(server, pid)
    assert [k for k in by if k[1] > 0] == [(adj, 1)] and len(by) == 7
    again = pull(workdir, "placement", server, root)
    assert not again.applied and again.unchanged == 4 and rep.sent_back + again.sent_back <= 1


def test_deleted_task_is_reported_not_crashed_on(workdir, server, cli_env, label_studio):
    root = label_studio.document_root
    push(workdir, "placement", server, root)
    pid = read_projects(workdir)["placement"]["id"]
    victim = server.list_tasks(pid)[-1]["id"]
    server.delete_task(victim)
    rep = pull(workdir, "placement", server, root)
    assert rep.missing == [victim] and rep.tasks == 5
    res = cli(["review", "status", str(workdir)], cli_env)
    assert res.exit_code == 0 and "1 task(s) missing on the server" in res.output, res.output
    res = cli(["review", "push", str(workdir), "--stage", "placement"], cli_env)
    assert res.exit_code == 0 and "imported 0 task(s)" in res.output and f"deleted in Label Studio): {victim}" in res.output
    res = cli(["review", "push", str(workdir), "--stage", "placement", "--recreate-missing"], cli_env)
    assert res.exit_code == 0 and "imported 1 task(s)" in res.output, res.output
    assert len(server.list_tasks(pid)) == 6
    assert review_status(workdir, server)[0].missing == 0
    assert len({t.task_id for t in read_tasks(workdir)}) == 6


def test_deleted_project_is_recreated_with_a_message(workdir, server, label_studio):
    root = label_studio.document_root
    first = push(workdir, "placement", server, root)
    server.delete_project(first.project_id)
    again = push(workdir, "placement", server, root)
    assert again.project_created and again.project_id != first.project_id and again.imported == 6
    assert any("deleted on the server" in m for m in again.messages)


def test_unreachable_server_retries_then_one_clear_line(built, label_studio, tmp_path):
    from comcoco.review.process import free_port

    wd = label_studio.document_root / f"unreachable-{os.getpid()}"
    shutil.rmtree(wd, ignore_errors=True)
    shutil.copytree(built, wd)
    env = {"COMCOCO_LS_URL": f"http://127.0.0.1:{free_port()}", "COMCOCO_LS_TOKEN": label_studio.token,
           "COMCOCO_LS_DOCUMENT_ROOT": str(label_studio.document_root),
           "COMCOCO_LS_RETRIES": "3", "COMCOCO_LS_BACKOFF": "0.01"}
    res = CliRunner().invoke(app, ["review", "push", str(wd), "--stage", "placement"], env=env)
    assert res.exit_code == 3
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "unreachable" in err and "3 times" in err
    assert label_studio.token not in res.output and "Traceback" not in res.output
    assert not (wd / "review" / "projects.json").exists()


def test_flows_push_and_pull(workdir, label_studio, prefect_api):
    env = {**os.environ, **prefect_api, "COMCOCO_LS_URL": label_studio.url, "COMCOCO_LS_TOKEN": label_studio.token,
           "COMCOCO_LS_DOCUMENT_ROOT": str(label_studio.document_root), "PYTHONPATH": str(REPO)}
    code = (
        "import json, os, sys\n"
        "from pipelines.review import review_push, review_pull\n"
        "from comcoco.review.server import ReviewServer\n"
        "a = review_push(sys.argv[1], 'placement')\n"
        "s = ReviewServer(os.environ['COMCOCO_LS_URL'], os.environ['COMCOCO_LS_TOKEN'])\n"
        "first = s.list_tasks(a['project_id'])[0]['id']\n"
        "s.annotate(first, [{'from_name': 'decision', 'to_name': 'image', 'type': 'choices',"
        " 'value': {'choices': ['accept']}}])\n"
        "b = review_pull(sys.argv[1], 'placement')\n"
        "print(json.dumps([a['imported'], b['tasks'], b['pending'], b['applied']]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(workdir)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [6, 6, 5, {"accept": 1}]
    assert len(read_decisions(workdir)) == 1
    assert label_studio.token not in proc.stdout + proc.stderr
