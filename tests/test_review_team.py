"""A review team on the real Label Studio server: accounts, overlap, every answer with who and when, the
resolution rule, agreement, the annotator's screen (guidelines, round, reasons), and bad input.

Annotators answer with their own tokens (they log in like a person would), so ``completed_by`` is real.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from review_boxes import first_free
from typer.testing import CliRunner

from comcoco.build import build_inline
from comcoco.cli import app
from comcoco.decisions import ledger_path, read_decisions, read_ledger
from comcoco.plan import BuildConfig, SourceSpec
from comcoco.review import server as server_module
from comcoco.review.bookkeeping import read_projects, read_tasks
from comcoco.review.pull import pull
from comcoco.review.push import push
from comcoco.review.server import RetryPolicy, ReviewServer, TokenRefused
from comcoco.review.team import Team
from comcoco.workdir import Workdir

FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2)
PASSWORD = "annotator-pass-2026"


@pytest.fixture(scope="module")
def built(demo_source_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("review-team-build") / "wd"
    build_inline(SourceSpec(root=str(demo_source_small)), out, BuildConfig(limit=6, shard_size=6, seed=0))
    return out


@pytest.fixture()
def workdir(built, label_studio, request) -> Path:
    dest = label_studio.document_root / f"team-{request.node.name[:24]}-{os.getpid()}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(built, dest)
    return dest


@pytest.fixture()
def admin(label_studio) -> ReviewServer:
    return ReviewServer(label_studio.url, label_studio.token, FAST)


@pytest.fixture()
def env(label_studio) -> dict[str, str]:
    return {"COMCOCO_LS_URL": label_studio.url, "COMCOCO_LS_TOKEN": label_studio.token,
            "COMCOCO_LS_DOCUMENT_ROOT": str(label_studio.document_root),
            "COMCOCO_LS_RETRIES": "3", "COMCOCO_LS_BACKOFF": "0.05"}


def cli(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, args, env=env)


def login_token(url: str, email: str, password: str) -> str:
    """The API token of an account, fetched the way its owner would (log in, Account & Settings)."""
    with httpx.Client(base_url=url, timeout=60) as c:
        c.get("/user/login/")
        r = c.post("/user/login/", data={"email": email, "password": password,
                                         "csrfmiddlewaretoken": c.cookies.get("csrftoken", "")},
                   headers={"Referer": url + "/user/login/"})
        assert r.status_code == 302, f"login of {email} failed"
        return c.get("/api/current-user/token").json()["token"]


def add_team(names: list[str], env: dict[str, str], url: str, tag: str) -> dict[str, ReviewServer]:
    """Annotator accounts made with `comcoco review users add`; each answers through their own token."""
    out = {}
    for name in names:
        email = f"{name}.{tag}@example.org"
        res = cli(["review", "users", "add", email, "--password", PASSWORD], env)
        assert res.exit_code == 0, res.output
        assert f"created annotator {email}" in res.output
        out[email] = ReviewServer(url, login_token(url, email, PASSWORD), FAST)
    return out


def choices(value: str, **extra) -> list[dict]:
    res = [{"from_name": "decision", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]
    if "box" in extra:
        x, y, w, h, W, H = extra["box"]
        res.append({"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": W,
                    "original_height": H, "value": {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W,
                                                    "height": 100 * h / H, "rotation": 0,
                                                    "rectanglelabels": ["object"]}})
    if "reason" in extra:
        res.append({"from_name": "reason", "to_name": "image", "type": "textarea", "value": {"text": [extra["reason"]]}})
    return res


def status_rows(workdir: Path) -> dict[str, object]:
    return Workdir(workdir).status_by_id()


def size_of(workdir: Path, row) -> tuple[int, int]:
    from PIL import Image

    with Image.open(workdir / row.composite) as im:
        return im.size


def moved(row, dx: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = row.box
    return (x + dx, y, w, h) if x + dx + w <= size[0] else (x - dx, y, w, h)


def test_team_overlap_every_answer_resolution_and_agreement(workdir, admin, env, label_studio):
    tag = f"t{os.getpid()}"
    team = add_team(["alice", "bob", "carol"], env, label_studio.url, tag)
    emails = sorted(team)
    res = cli(["review", "users", "list"], env)
    assert res.exit_code == 0 and all(e in res.output for e in emails) and "(the token user)" in res.output
    res = cli(["review", "users", "add", emails[0], "--password", PASSWORD], env)
    assert res.exit_code == 3 and "already has an account" in res.stderr

    rows = status_rows(workdir)
    sids = sorted(rows)
    seed = next(s for s in range(100) if 4 <= sum(Team(tuple(emails), 0.6, s).in_overlap(i) for i in sids) <= 5)
    args = ["review", "push", str(workdir), "--stage", "placement", "--overlap", "0.6", "--seed", str(seed)]
    res = cli(args + sum((["--annotator", e] for e in emails), []), env)
    assert res.exit_code == 0, res.output
    over = [s for s in sids if Team(tuple(emails), 0.6, seed).in_overlap(s)]
    assert f"imported {len(sids) + len(over)} task(s)" in res.output and f"({len(over)} second-opinion" in res.output
    pid = read_projects(workdir)["placement"]["id"]
    assert set(emails) <= set(admin.tabs(pid))  # one Data Manager tab per annotator
    tasks = {(t["data"]["sample_id"], t["data"]["slot"]): t for t in admin.list_tasks(pid)}
    for s in over:
        assert tasks[(s, 0)]["data"]["annotator"] != tasks[(s, 1)]["data"]["annotator"]
        assert "second opinion" in tasks[(s, 1)]["data"]["look"]
    assert all(t["data"]["annotator"] in emails for t in tasks.values())

    def answer(sid: str, slot: int, result: list[dict]) -> str:
        t = tasks[(sid, slot)]
        team[t["data"]["annotator"]].annotate(t["id"], result)
        return t["data"]["annotator"]

    s_agree, s_reject, s_avg, s_conflict = over[:4]
    size = size_of(workdir, rows[s_avg])
    answer(s_agree, 0, choices("accept"))
    answer(s_agree, 1, choices("accept"))
    answer(s_reject, 0, choices("accept"))
    rejecter = answer(s_reject, 1, choices("reject", reason="wrong scale"))
    answer(s_avg, 0, choices("adjust", box=(*moved(rows[s_avg], 20, size), *size)))
    answer(s_avg, 1, choices("adjust", box=(*moved(rows[s_avg], 24, size), *size)))
    c_size = size_of(workdir, rows[s_conflict])
    first = answer(s_conflict, 0, choices("accept"))
    second = answer(s_conflict, 1, choices("adjust", box=(*moved(rows[s_conflict], 40, c_size), *c_size)))
    if len(over) > 4:
        answer(over[4], 0, choices("accept"))  # its second opinion is still out
    single = next(s for s in sids if s not in over)
    answer(single, 0, choices("accept"))

    res = cli(["review", "pull", str(workdir), "--stage", "placement"], env)
    assert res.exit_code == 0, res.output
    assert f"third look for {s_conflict}: {first}: accept; {second}: adjust" in res.output
    if len(over) > 4:
        assert "1 sample(s) wait for their second opinion" in res.output
    got = read_decisions(workdir)
    assert got[(s_agree, "placement")].decision == "accept" and "+" in got[(s_agree, "placement")].reviewer
    assert (got[(s_reject, "placement")].decision, got[(s_reject, "placement")].reason) == ("reject", "wrong scale")
    avg = got[(s_avg, "placement")]
    a, b = moved(rows[s_avg], 20, size), moved(rows[s_avg], 24, size)
    assert avg.decision == "adjust" and avg.box == tuple(int(round((p + q) / 2)) for p, q in zip(a, b, strict=True))
    assert abs(status_rows(workdir)[s_avg].box[0] - avg.box[0]) <= 2  # recomposed with the averaged box
    assert (s_conflict, "placement") not in got and got[(single, "placement")].decision == "accept"
    # the ledger has every answer, with who and when
    ledger = read_ledger(workdir)
    assert len(ledger) == 9 + (len(over) > 4)
    assert {r.annotator for r in ledger.values()} <= set(emails) and all(r.updated_at.endswith("Z") for r in ledger.values())
    assert rejecter in {r.annotator for r in ledger.values() if r.decision == "reject"}

    # the third look went to the annotator who had not answered, and decides
    third = next(t for t in admin.list_tasks(pid) if t["data"]["sample_id"] == s_conflict and t["data"]["slot"] == 2)
    assert third["data"]["annotator"] not in {first, second} and "third look" in third["data"]["look"]
    assert f"{first}: accept; {second}: adjust" in third["data"]["look"]
    team[third["data"]["annotator"]].annotate(third["id"], choices("reject", reason="floating"))
    rep = pull(workdir, "placement", admin, label_studio.document_root)
    assert rep.applied == {"reject": 1} and not rep.conflicts
    final = read_decisions(workdir)[(s_conflict, "placement")]
    assert (final.decision, final.reviewer) == ("reject", third["data"]["annotator"])

    # agreement: 4 samples answered twice (kappa on accept/reject/adjust, box IoU where both have a box)
    res = cli(["review", "status", str(workdir)], env)
    assert res.exit_code == 0, res.output
    assert "agreement on 4 sample(s) answered by two annotators: Cohen's kappa" in res.output
    assert "over 3 pair(s) with boxes" in res.output and all(e in res.output for e in (first, second))
    # ... and the release's selection report and card say the same
    from comcoco.release.card import agreement_note
    from comcoco.release.options import ReleaseOptions
    from comcoco.release.select import select_entries

    _, report = select_entries(workdir, ReleaseOptions())
    agr = report["agreement"]["placement"]
    assert agr["pairs"] == 4 and agr["box_pairs"] == 3 and report["review"]["reject"] == 2
    note = agreement_note(report["agreement"])
    assert note.startswith("Inter-annotator agreement on the 4 samples two annotators answered: Cohen's kappa")
    assert f"{agr['mean_box_iou']:.2f}" in note


def test_bad_input_is_named_and_a_later_pull_continues(workdir, admin, env, label_studio, monkeypatch):
    root = label_studio.document_root
    sids = sorted(status_rows(workdir))

    def emils(tag: str) -> int:  # how many of the six first tasks the seeded assignment gives emil
        pair = Team(tuple(sorted(f"{n}.{tag}@example.org" for n in ("dora", "emil"))), seed=0)
        return sum(pair.assignee(x, 0, 0).startswith("emil.") for x in sids)

    tag = next(t for k in range(200) if 2 <= emils(t := f"b{os.getpid()}-{k}") <= 4)
    team = add_team(["dora", "emil"], env, label_studio.url, tag)
    dora, emil = sorted(team)
    rep = push(workdir, "placement", admin, root, annotators=[dora, emil])
    assert rep.imported == 6 and rep.annotators == [dora, emil]
    pid = rep.project_id
    tasks = {t["data"]["sample_id"]: t for t in admin.list_tasks(pid)}
    rows = status_rows(workdir)
    by_emil = [x for x in sorted(tasks) if tasks[x]["data"]["annotator"] == emil]
    assert len(by_emil) >= 2, "the seeded assignment gives emil at least two of six tasks"
    gone_task, open_task = by_emil[:2]
    rest = [x for x in sorted(tasks) if x not in (gone_task, open_task)]  # four samples for the other cases
    # the clipped box and the moved one must be applicable: samples with room there (review_boxes)
    clip = first_free(workdir, [rows[x] for x in rest], lambda r: (size_of(workdir, r)[0] - r.box[2] + 15, *r.box[1:]))
    move = first_free(workdir, [rows[x] for x in rest if x != clip.sample_id],
                      lambda r: moved(r, 30, size_of(workdir, r)))
    s = [x for x in rest if x not in (clip.sample_id, move.sample_id)] + [clip.sample_id, move.sample_id]

    # a result of an unknown shape (a hand-edited config), a reject without a reason, a box leaving the
    # image, an accept with a moved box, an answer by an annotator who is then removed
    admin.annotate(tasks[s[0]]["id"], [{"from_name": "verdict", "to_name": "image", "type": "choices",
                                        "value": {"choices": ["fine"]}}])
    no_reason = admin.annotate(tasks[s[1]]["id"], choices("reject"))
    W, H = size_of(workdir, rows[s[2]])
    x, y, w, h = rows[s[2]].box
    admin.annotate(tasks[s[2]]["id"], choices("adjust", box=(W - w + 15, y, w, h, W, H)))
    W3, H3 = size_of(workdir, rows[s[3]])
    target = moved(rows[s[3]], 30, (W3, H3))
    admin.annotate(tasks[s[3]]["id"], choices("accept", box=(*target, W3, H3)))
    team[emil].annotate(tasks[gone_task]["id"], choices("accept"))
    res = cli(["review", "users", "remove", emil], env)
    assert res.exit_code == 0, res.output

    res = cli(["review", "pull", str(workdir), "--stage", "placement"], env)
    # two answers cannot be applied: a partial result (exit 4); the rest is recorded and applied
    assert res.exit_code == 4 and "2 decision(s) not applied" in res.stderr, res.output
    pulled = res.output
    err = res.stderr
    assert f"task {tasks[s[0]]['id']} (sample {s[0]}, round 1)" in err and "edited by hand" in err
    assert f"task {tasks[s[1]]['id']} (sample {s[1]}, round 1), annotation {no_reason}" in err
    assert "without a reason" in err and "not counted" in err
    assert f"task {tasks[s[2]]['id']} (sample {s[2]}, round 1)" in res.output and "clipped to" in res.output
    assert "recorded as adjust" in res.output and "account was removed" in res.output
    got = read_decisions(workdir)
    assert (s[0], "placement") not in got and (s[1], "placement") not in got
    clipped = got[(s[2], "placement")].box
    assert got[(s[2], "placement")].decision == "adjust" and clipped[0] + clipped[2] == W and clipped[2] == w - 15
    assert got[(s[3], "placement")].decision == "adjust" and got[(s[3], "placement")].box == target
    assert got[(gone_task, "placement")].reviewer == "removed"

    # the removed annotator's open task goes to the rest of the team (at the look push of that pull, or
    # at the next push)
    res = cli(["review", "push", str(workdir), "--stage", "placement"], env)
    assert res.exit_code == 0, res.output
    both = pulled + res.output
    assert f"annotator {emil} has no account on the server any more" in both
    assert f"task {tasks[open_task]['id']} (sample {open_task}) was meant for {emil}" in both
    assert f"reassigned to {dora}" in both
    now = {t["data"]["sample_id"]: t for t in admin.list_tasks(pid) if t["data"]["round"] == 0}
    assert now[open_task]["data"]["annotator"] == dora and f"(for {dora})" in now[open_task]["data"]["look"]

    # the reject gets its reason: the next pull applies it
    admin.update_annotation(no_reason, choices("reject", reason="impossible support"))
    rep = pull(workdir, "placement", admin, root)
    assert rep.applied == {"reject": 1} and read_decisions(workdir)[(s[1], "placement")].reason == "impossible support"

    # a deleted task is named, with its sample
    victim = tasks[open_task]["id"]
    admin.delete_task(victim)
    res = cli(["review", "pull", str(workdir), "--stage", "placement"], env)
    assert res.exit_code == 0 and f"deleted in Label Studio): {victim} (sample {open_task}, round 1)" in res.output

    # a wrong token: one line, nothing local touched
    before = ledger_path(workdir).read_bytes()
    res = cli(["review", "pull", str(workdir), "--stage", "placement"], {**env, "COMCOCO_LS_TOKEN": "0" * 40})
    assert res.exit_code == 3 and "refused the API token" in res.stderr and "\n" not in res.stderr.strip()
    assert ledger_path(workdir).read_bytes() == before

    # a token that expires halfway through a pull: what was read is kept, and the next pull continues
    looks = [t for t in admin.list_tasks(pid) if t["data"]["round"] == 1]
    assert looks, "the adjusted samples were sent back for a look"
    for t in looks:
        team[dora].annotate(t["id"], choices("accept"))
    token = login_token(label_studio.url, dora, PASSWORD)
    as_dora = ReviewServer(label_studio.url, token, FAST)
    monkeypatch.setattr(server_module, "EXPORT_CHUNK", 1)

    def expire(event: str) -> None:
        if event.startswith("recorded"):
            httpx.post(label_studio.url + "/api/current-user/reset-token", headers={"Authorization": f"Token {token}"})

    n = len(read_ledger(workdir))
    if len(looks) > 1:
        with pytest.raises(TokenRefused, match="refused the API token"):
            pull(workdir, "placement", as_dora, root, after_each=expire)
        assert len(read_ledger(workdir)) == n + 1
    rep = pull(workdir, "placement", admin, root)
    assert len(read_ledger(workdir)) == n + len(looks) and rep.applied.get("accept") == len(looks)
    assert len({t.task_id for t in read_tasks(workdir)}) == len(read_tasks(workdir))


def test_the_annotator_sees_guidelines_and_meanings_and_must_give_a_reason(workdir, admin, label_studio):
    rep = push(workdir, "placement", admin, label_studio.document_root)
    project = admin.project(rep.project_id)
    assert project["show_instruction"] is True
    instruction = project["expert_instruction"]
    assert "<h2>Stage 1: placement</h2>" in instruction and "What counts as implausible" in instruction
    assert "Stage 2" not in instruction  # each stage's project gets its own part
    config = project["label_config"]
    assert 'alias="reject"' in config and "reject: implausible, no box in this image would fix it" in config
    assert 'name="reason"' in config and 'required="true"' in config.split('name="reason"')[1].split("/>")[0]
    assert "Guidelines in short" in config
    rep2 = push(workdir, "expressions", admin, label_studio.document_root, without_placement_review=True)
    instruction2 = admin.project(rep2.project_id)["expert_instruction"]
    assert "<h2>Stage 2: expressions and spatial attributes</h2>" in instruction2 and "Stage 1:" not in instruction2
