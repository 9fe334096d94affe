"""Review pieces that need no server: retries, coordinates, annotation reading, resolution, agreement,
progress, project titles."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from label_studio_sdk.core.api_error import ApiError

from comcoco.decisions import AnnotationRecord, agreement, box_iou, cohen_kappa
from comcoco.progress import Progress
from comcoco.records import Sentence
from comcoco.review.answers import read_annotation, submitted
from comcoco.review.bookkeeping import project_title, task_key
from comcoco.review.resolve import CONFLICT, DECIDED, PENDING, resolve_sample
from comcoco.review.server import NotFound, RetryPolicy, ReviewServer, ServerUnavailable, is_transient
from comcoco.review.settings import LabelStudioError
from comcoco.review.tasks import box_to_percent, percent_to_box, wanted
from comcoco.review.team import Team

TOKEN = "ab" * 20


def flaky(errors):
    """A callable that raises the given errors in turn, then returns "ok"."""
    errors = list(errors)
    calls = []

    def fn():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "ok"

    fn.calls = calls
    return fn


def server(attempts=4):
    sleeps: list[float] = []
    return ReviewServer("http://127.0.0.1:9", TOKEN, RetryPolicy(attempts, 0.5, 2.0, 3.0), sleep=sleeps.append), sleeps


def test_backoff_schedule_doubles_and_caps():
    assert RetryPolicy(5, 0.5, 2.0, 3.0).delays() == [0.5, 1.0, 2.0, 3.0]
    assert RetryPolicy(1).delays() == []
    assert RetryPolicy.from_env({"COMCOCO_LS_RETRIES": "2", "COMCOCO_LS_BACKOFF": "0.01"}).delays() == [0.01]
    with pytest.raises(LabelStudioError, match="COMCOCO_LS_RETRIES"):
        RetryPolicy.from_env({"COMCOCO_LS_RETRIES": "many"})
    with pytest.raises(ValueError):
        RetryPolicy(0)


def test_transient_errors_are_retried_with_backoff_then_succeed():
    s, sleeps = server()
    fn = flaky([httpx.ConnectError("refused"), ApiError(status_code=503, headers={}, body="restarting")])
    assert s.call("list tasks", fn) == "ok"
    assert len(fn.calls) == 3 and sleeps == [0.5, 1.0]


def test_exhausted_retries_give_one_clear_error_without_the_token():
    s, sleeps = server(attempts=3)
    fn = flaky([httpx.ConnectError(f"refused for {TOKEN}")] * 5)
    with pytest.raises(ServerUnavailable) as exc:
        s.call("import tasks", fn)
    msg = str(exc.value)
    assert "unreachable" in msg and "import tasks failed 3 times" in msg and TOKEN not in msg
    assert len(fn.calls) == 3 and sleeps == [0.5, 1.0]


@pytest.mark.parametrize("code", [400, 401, 404, 409, 500])
def test_other_http_errors_are_not_retried(code):
    s, sleeps = server()
    fn = flaky([ApiError(status_code=code, headers={}, body={"detail": "nope"})])
    with pytest.raises(LabelStudioError, match="HTTP 401\\): it is wrong, expired" if code == 401
                       else f"HTTP {code}: nope") as exc:
        s.call("create project", fn)
    assert not isinstance(exc.value, ServerUnavailable) and len(fn.calls) == 1 and sleeps == []
    assert isinstance(exc.value, NotFound) == (code == 404)


def test_missing_objects_answer_none_not_an_error():
    s, _ = server()

    def gone(id):
        raise ApiError(status_code=404, headers={}, body={"detail": "Not found."})

    s._sdk = SimpleNamespace(projects=SimpleNamespace(get=gone, delete=gone), tasks=SimpleNamespace(delete=gone))
    assert s.project_exists(3) is False
    s.delete_task(4)
    s.delete_project(3)


def test_transient_whitelist():
    assert is_transient(httpx.ReadTimeout("slow")) and is_transient(ApiError(status_code=502, headers={}, body=""))
    assert not is_transient(ValueError("x")) and not is_transient(ApiError(status_code=400, headers={}, body=""))


def test_percent_boxes_round_trip_and_clip():
    size = (640, 427)
    for box in [(0, 0, 640, 427), (317, 148, 19, 51), (1, 2, 3, 4)]:
        assert percent_to_box(box_to_percent(box, size), size) == box
    assert percent_to_box({"x": -5, "y": 90, "width": 20, "height": 30}, (100, 100)) == (0, 90, 15, 10)


def test_project_title_is_short_stable_and_per_workdir(tmp_path):
    a = project_title(tmp_path / ("a-very-long-work-directory-name" * 3), "expressions")
    assert len(a) <= 50 and a == project_title(tmp_path / ("a-very-long-work-directory-name" * 3), "expressions")
    assert project_title(tmp_path / "x", "placement") != project_title(tmp_path / "y", "placement")


def fake_view(status="ok"):
    from comcoco.workdir import StatusRow

    row = StatusRow(sample_id="s1", composite_id="s1", status=status, reason="", fg_ref_id=7, fg_ann_id=70,
                    fg_image_id=2, bg_image_id=3, category_id=1, candidate_rank=1, seed=0, config="c",
                    composite="c.png", plausibility=0.5, box_x=1, box_y=2, box_w=3, box_h=4, shard=0)
    sents = (Sentence(11, "red cup", "red cup", ("red", "cup")), Sentence(12, "cup", "cup", ("cup",)))
    source = SimpleNamespace(ref=lambda rid: SimpleNamespace(sentences=sents),
                             image=lambda iid: SimpleNamespace(width=200, height=100))
    return SimpleNamespace(rows={"s1": row}, source=source, sentences=lambda r: sents, decisions={}, outcomes={},
                           reviewable=lambda: [row], image_size=lambda r: (200, 100))


TASK = {"id": 5, "data": {"sample_id": "s1", "round": 0, "placed_box": [20, 20, 50, 50]}}


def ann(result, **extra):
    return {"id": 9, "result": result, "updated_at": "2026-01-02T03:04:05.123456Z", **extra}


def read(stage, result, task=TASK):
    return read_annotation(stage, 3, task, ann(result), fake_view(), "r@x")


RECT = {"from_name": "box", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
        "value": {"x": 10, "y": 20, "width": 25, "height": 50}}  # (20, 20, 50, 50) in pixels


def test_placement_annotations_become_answers():
    r = read("placement", [{"from_name": "decision", "value": {"choices": ["adjust"]}},
                           {**RECT, "value": {**RECT["value"], "x": 20}}])
    assert (r.decision, r.box, r.annotator, r.task_id, r.annotation_id, r.project_id) == (
        "adjust", (40, 20, 50, 50), "r@x", 5, 9, 3)
    assert r.updated_at == "2026-01-02T03:04:05.123456Z" and r.counts and r.shown_box == (20, 20, 50, 50)
    r = read("placement", [{"from_name": "decision", "value": {"choices": ["reject"]}},
                           {"from_name": "reason", "value": {"text": ["  floating\nin the air "]}}])
    assert r.decision == "reject" and r.reason == "floating in the air" and r.box is None and r.counts
    # accept with the box left where it was is an accept; with the box moved, an adjust (said in the note)
    assert read("placement", [{"from_name": "decision", "value": {"choices": ["accept"]}}, RECT]).decision == "accept"
    moved = read("placement", [{"from_name": "decision", "value": {"choices": ["accept"]}},
                               {**RECT, "value": {**RECT["value"], "y": 30}}])
    assert moved.decision == "adjust" and moved.box == (20, 30, 50, 50) and "recorded as adjust" in moved.note


@pytest.mark.parametrize("result, needle", [
    ([{"from_name": "decision", "value": {"choices": ["adjust"]}}], "without a box"),
    ([], "expected one of"),
    ([{"from_name": "decision", "value": {"choices": ["reject"]}}], "without a reason"),
    ([{"from_name": "verdict", "type": "choices", "value": {"choices": ["ok"]}}], "edited by hand"),
    ([{"from_name": "decision", "type": "textarea", "value": {"text": ["accept"]}}], "not in the placement"),
    ([{"from_name": "decision", "value": {"choices": ["adjust"]}}, {**RECT, "value": {"x": "left"}}], "unreadable"),
    ([{"from_name": "decision", "value": {"choices": ["adjust"]}},
      {**RECT, "value": {"x": 120, "y": 10, "width": 10, "height": 10}}], "outside"),
])
def test_unusable_annotations_are_recorded_with_why(result, needle):
    r = read("placement", result)
    assert not r.counts and needle in r.error and r.annotation_id == 9 and r.sample_id == "s1"


def test_a_box_leaving_the_image_is_clipped_and_said():
    r = read("placement", [{"from_name": "decision", "value": {"choices": ["adjust"]}},
                           {**RECT, "value": {"x": 90, "y": 60, "width": 20, "height": 50}}])
    assert r.counts and r.box == (180, 60, 20, 40) and "leaves the 200×100 image; clipped" in r.note


def test_expression_annotations_become_answers():
    r = read("expressions", [
        {"from_name": "keep", "value": {"choices": ["12"]}},
        {"from_name": "spatial", "value": {"text": ["on the left", "above the table"]}},
        {"from_name": "more", "value": {"text": ["on the left\nthe cup near the door"]}}])
    assert r.decision == "done" and r.kept_sent_ids == (12,) and r.dropped_sent_ids == (11,)
    assert r.spatial_phrases == ("on the left", "above the table", "the cup near the door")
    nothing = read("expressions", [])
    assert nothing.kept_sent_ids == () and nothing.dropped_sent_ids == (11, 12) and nothing.spatial_phrases == ()
    assert "not the object's sentences" in read("expressions", [{"from_name": "keep", "value": {"choices": ["99"]}}]).error


def test_submitted_annotations_oldest_first_skips_ignored():
    task = {"annotations": [
        {"id": 1, "updated_at": "2026-01-01T00:00:00Z", "was_cancelled": False},
        {"id": 2, "updated_at": "2026-01-03T00:00:00Z", "was_cancelled": True},
        {"id": 3, "updated_at": "2026-01-02T00:00:00+00:00", "was_cancelled": False}]}
    assert [a["id"] for a in submitted(task)] == [1, 3]
    assert submitted({"annotations": [{"id": 4, "was_cancelled": True}]}) == []


def test_wanted_rounds_and_slots_follow_the_decisions_and_the_team():
    from comcoco.records import ReviewDecision
    from comcoco.review.resolve import Outcome

    view = fake_view()
    assert [(r.sample_id, n, s) for r, n, s in wanted(view, "placement", {})] == [("s1", 0, 0)]
    pair = Team(("a@x", "b@x"), overlap=1.0)
    assert [(n, s) for _, n, s in wanted(view, "placement", {}, pair)] == [(0, 0), (0, 1)]
    view.outcomes = {"placement": {"s1": Outcome("s1", "placement", 0, CONFLICT, None, "conflict")}}
    assert [(n, s) for _, n, s in wanted(view, "placement", {}, pair)] == [(0, 0), (0, 1), (0, 2)]
    view.outcomes = {}
    assert wanted(view, "expressions", {}) == []
    assert len(wanted(view, "expressions", {}, without_placement_review=True)) == 1
    view.decisions = {("s1", "placement"): ReviewDecision("s1", "placement", "adjust", "r", "t", box=(1, 1, 2, 2), task_id=40)}
    assert [(n, s) for _, n, s in wanted(view, "placement", {40: 2}, pair)] == [(3, 0)]
    assert len(wanted(view, "expressions", {})) == 1
    view.decisions = {("s1", "placement"): ReviewDecision("s1", "placement", "reject", "r", "t", task_id=40)}
    assert wanted(view, "placement", {40: 0}) == [] and wanted(view, "expressions", {}, Team(), True) == []


def test_overlap_and_assignment_are_seeded_stable_and_balanced():
    team = Team(("a@x", "b@x", "c@x"), overlap=0.1, seed=0)
    ids = [f"{i:016x}" for i in range(4000)]
    chosen = [s for s in ids if team.in_overlap(s)]
    assert 320 < len(chosen) < 480 and chosen == [s for s in ids if Team(team.annotators, 0.1, 0).in_overlap(s)]
    assert chosen != [s for s in ids if Team(team.annotators, 0.1, 1).in_overlap(s)]
    assert set(chosen) <= {s for s in ids if Team(team.annotators, 0.2, 0).in_overlap(s)}  # growing keeps members
    firsts = [team.assignee(s, 0, 0) for s in ids]
    assert all(team.assignee(s, 0, 0) != team.assignee(s, 0, 1) for s in ids[:200])
    assert all(1100 < firsts.count(e) < 1567 for e in team.annotators)
    assert team.assignee(ids[0], 0, 2, exclude={team.assignee(ids[0], 0, 0), team.assignee(ids[0], 0, 1)}) not in {
        team.assignee(ids[0], 0, 0), team.assignee(ids[0], 0, 1)}
    assert not Team(("a@x",), overlap=0.5).in_overlap(ids[0])


def answer(decision, slot=0, who="a@x", box=None, shown=(10, 10, 20, 20), rnd=0, aid=None, at="2026-01-01T00:00:00Z",
           reason="", stage="placement", kept=(), dropped=(), phrases=()):
    return AnnotationRecord(aid or 100 + slot + 10 * rnd, 50 + slot, 3, stage, "s1", rnd, slot, who, at, at, decision,
                            reason or ("why" if decision == "reject" else ""), box, shown, kept, dropped, phrases)


def test_resolution_rule():
    both = {0: {0, 1}}
    o = resolve_sample([answer("accept")], {0: {0}})
    assert (o.state, o.decision.decision, o.rule, o.decision.reviewer) == (DECIDED, "accept", "single", "a@x")
    assert resolve_sample([answer("accept")], both).state == PENDING
    o = resolve_sample([answer("accept"), answer("accept", 1, "b@x")], both)
    assert (o.decision.decision, o.rule, o.decision.reviewer) == ("accept", "agreed", "a@x+b@x")
    o = resolve_sample([answer("accept"), answer("reject", 1, "b@x", reason="floating")], both)
    assert (o.decision.decision, o.rule, o.decision.reason) == ("reject", "reject wins", "floating")
    o = resolve_sample([answer("adjust", box=(10, 10, 20, 20)), answer("adjust", 1, "b@x", box=(12, 10, 20, 20))], both)
    assert (o.decision.decision, o.rule, o.decision.box) == ("adjust", "boxes averaged", (11, 10, 20, 20))
    far = [answer("adjust", box=(10, 10, 20, 20)), answer("adjust", 1, "b@x", box=(40, 10, 20, 20))]
    o = resolve_sample(far, both)
    assert (o.state, o.decision, o.answered_by) == (CONFLICT, None, ("a@x", "b@x")) and "IoU" in o.detail
    o = resolve_sample([answer("accept"), answer("adjust", 1, "b@x", box=(11, 10, 20, 20))], both)
    assert o.state == CONFLICT and "a@x: accept; b@x: adjust" == o.detail
    o = resolve_sample([*far, answer("reject", 2, "c@x", reason="wrong scale")], {0: {0, 1, 2}})
    assert (o.state, o.decision.decision, o.rule, o.decision.reviewer) == (DECIDED, "reject", "third look", "c@x")
    # a later round decides; an earlier round edited afterwards changes nothing
    later = [answer("adjust", box=(12, 10, 20, 20)), answer("accept", rnd=1, at="2026-01-02T00:00:00Z"),
             answer("reject", aid=100, at="2026-01-03T00:00:00Z")]
    o = resolve_sample(later, {0: {0}, 1: {0}})
    assert (o.round, o.decision.decision) == (1, "accept")
    # errors do not count; the latest answer of a slot does
    bad = AnnotationRecord(300, 50, 3, "placement", "s1", 0, 0, "a@x", "t", "2026-02-01T00:00:00Z", "", error="x")
    assert resolve_sample([bad], {0: {0}}) is None
    two = [answer("accept", aid=1), answer("reject", aid=2, at="2026-01-05T00:00:00Z")]
    assert resolve_sample(two, {0: {0}}).decision.decision == "reject"


def test_expression_opinions_merge():
    a = answer("done", stage="expressions", kept=(11, 12), phrases=("on the left",))
    b = answer("done", 1, "b@x", stage="expressions", kept=(12,), dropped=(11,), phrases=("next to the dog", "on the left"))
    o = resolve_sample([a, b], {0: {0, 1}})
    assert (o.decision.kept_sent_ids, o.decision.dropped_sent_ids) == ((12,), (11,))
    assert o.decision.spatial_phrases == ("on the left", "next to the dog") and o.rule == "merged"


def test_kappa_iou_and_agreement():
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), None) is None and box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0
    # a textbook case: 50 pairs, 35 agreeing; marginals A 25/25, B 30/20 → pe 0.5, kappa 0.4
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    assert cohen_kappa(pairs, ("yes", "no")) == pytest.approx(0.4)
    assert cohen_kappa([("a", "a")] * 3, ("a", "b")) is None and cohen_kappa([], ("a",)) is None
    recs = []
    for i, (x, y) in enumerate([("accept", "accept"), ("accept", "reject"), ("adjust", "adjust"), ("reject", "reject")]):
        sid = f"s{i}"
        recs += [AnnotationRecord(10 * i, i, 3, "placement", sid, 0, 0, "a@x", "t", "t", x,
                                  box=(0, 0, 10, 10) if x == "adjust" else None, shown_box=(0, 0, 10, 10)),
                 AnnotationRecord(10 * i + 1, 100 + i, 3, "placement", sid, 0, 1, "b@x", "t", "t", y,
                                  box=(5, 0, 10, 10) if y == "adjust" else None, shown_box=(0, 0, 10, 10))]
    recs.append(AnnotationRecord(99, 99, 3, "placement", "s9", 0, 0, "a@x", "t", "t", "accept"))  # no second opinion
    agr = agreement(recs)["placement"]
    expected = cohen_kappa([("accept", "accept"), ("accept", "reject"), ("adjust", "adjust"), ("reject", "reject")],
                           ("accept", "reject", "adjust"))
    assert agr["pairs"] == 4 and agr["observed"] == 0.75 and agr["kappa"] == pytest.approx(expected, abs=1e-4)
    assert agr["box_pairs"] == 2 and agr["mean_box_iou"] == pytest.approx((1 + 50 / 150) / 2, abs=1e-4)


def test_progress_is_a_line_per_tenth_off_a_terminal():
    import io

    out = io.StringIO()
    with Progress("push placement", 24000, unit="task", stream=out, tty=False) as p:
        for _ in range(240):
            p.advance(100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0] == "push placement: 2400/24000 tasks (10 %)" and lines[-1].endswith("(100 %)")


def test_cli_errors_are_one_line_without_a_server(tmp_path):
    from typer.testing import CliRunner

    from comcoco.cli import app

    env = {"COMCOCO_LS_URL": "http://127.0.0.1:9", "COMCOCO_LS_TOKEN": TOKEN}
    res = CliRunner().invoke(app, ["review", "pull", str(tmp_path / "nope"), "--stage", "placement"], env=env)
    assert res.exit_code == 3 and res.stderr.strip() == f"error: {tmp_path / 'nope'}: no such work directory"
    res = CliRunner().invoke(app, ["review", "pull", str(tmp_path), "--stage", "placement"], env=env)
    assert res.exit_code == 3 and "nothing pushed for stage placement" in res.stderr and "\n" not in res.stderr.strip()
    res = CliRunner().invoke(app, ["review", "push", str(tmp_path), "--stage", "colour"], env=env)
    assert res.exit_code == 2 and "--stage must be one of placement, expressions" in res.stderr
    res = CliRunner().invoke(app, ["review", "status", str(tmp_path), "--offline"], env=env)
    assert res.exit_code == 3 and "build the work directory first" in res.stderr
    assert TOKEN not in res.output


def test_an_import_that_timed_out_after_landing_is_not_repeated():
    """The server stored the batch but the answer timed out: the retry must not import it again."""
    s, sleeps = server()
    stored: list[dict] = []
    answers = [httpx.ReadTimeout("slow"), None]

    def import_tasks(id, request, return_task_ids):
        stored.extend({"id": len(stored) + 1, "data": dict(t["data"])} for t in request)
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    s._sdk = SimpleNamespace(projects=SimpleNamespace(import_tasks=import_tasks))
    s.list_tasks = lambda project, include="id,data": [dict(t) for t in stored]
    tasks = [{"data": {"sample_id": f"s{i}", "round": 0}} for i in range(3)]
    assert s.import_tasks(7, tasks, key=task_key) == {("s0", 0, 0): 1, ("s1", 0, 0): 2, ("s2", 0, 0): 3}
    assert [t["data"]["sample_id"] for t in stored] == ["s0", "s1", "s2"] and sleeps == [0.5]
    # Without a key the same timeout duplicates the batch: what the key is there to prevent.
    stored.clear()
    answers[:] = [httpx.ReadTimeout("slow"), None]
    s.import_tasks(7, tasks)
    assert len(stored) == 6


def test_a_partly_landed_import_sends_only_the_rest():
    s, _ = server()
    stored: list[dict] = []
    calls: list[list[str]] = []

    def import_tasks(id, request, return_task_ids):
        calls.append([t["data"]["sample_id"] for t in request])
        if len(calls) == 1:  # the server stored the first task, then the connection dropped
            stored.append({"id": 1, "data": dict(request[0]["data"])})
            raise httpx.RemoteProtocolError("server disconnected")
        stored.extend({"id": len(stored) + 1, "data": dict(t["data"])} for t in request)

    s._sdk = SimpleNamespace(projects=SimpleNamespace(import_tasks=import_tasks))
    s.list_tasks = lambda project, include="id,data": [dict(t) for t in stored]
    tasks = [{"data": {"sample_id": f"s{i}", "round": 1}} for i in range(3)]
    assert len(s.import_tasks(7, tasks, key=task_key)) == 3
    assert calls == [["s0", "s1", "s2"], ["s1", "s2"]]
    assert sorted(t["data"]["sample_id"] for t in stored) == ["s0", "s1", "s2"]
