"""Review pieces that need no server: retries, coordinates, annotation parsing, project titles."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from label_studio_sdk.core.api_error import ApiError

from comcoco.records import Sentence
from comcoco.review.pull import AnnotationError, annotation_decision, latest_annotation
from comcoco.review.push import box_to_percent, percent_to_box, project_title, wanted
from comcoco.review.server import NotFound, RetryPolicy, ReviewServer, ServerUnavailable, is_transient
from comcoco.review.settings import LabelStudioError

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
    with pytest.raises(LabelStudioError, match=f"HTTP {code}: nope") as exc:
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
    return SimpleNamespace(rows={"s1": row}, source=source, sentences=lambda r: sents, decisions={},
                           reviewable=lambda: [row], image_size=lambda r: (200, 100))


TASK = {"id": 5, "data": {"sample_id": "s1", "round": 0}}


def ann(result, **extra):
    return {"id": 9, "result": result, "updated_at": "2026-01-02T03:04:05.123456Z", **extra}


def test_placement_annotations_become_decisions():
    view = fake_view()
    rect = {"from_name": "box", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
            "value": {"x": 10, "y": 20, "width": 25, "height": 50}}
    d = annotation_decision("placement", TASK, ann([
        {"from_name": "decision", "value": {"choices": ["adjust"]}}, rect]), view, "r@x")
    assert (d.decision, d.box, d.reviewer, d.task_id, d.annotation_id) == ("adjust", (20, 20, 50, 50), "r@x", 5, 9)
    assert d.reviewed_at == "2026-01-02T03:04:05.123456Z"
    d = annotation_decision("placement", TASK, ann([
        {"from_name": "decision", "value": {"choices": ["reject"]}},
        {"from_name": "reason", "value": {"text": ["  floating\nin the air "]}}]), view, "r@x")
    assert d.decision == "reject" and d.reason == "floating in the air" and d.box is None
    with pytest.raises(AnnotationError, match="without a box"):
        annotation_decision("placement", TASK, ann([{"from_name": "decision", "value": {"choices": ["adjust"]}}]), view, "r")
    with pytest.raises(AnnotationError, match="expected one of"):
        annotation_decision("placement", TASK, ann([]), view, "r")


def test_expression_annotations_become_decisions():
    view = fake_view()
    d = annotation_decision("expressions", TASK, ann([
        {"from_name": "keep", "value": {"choices": ["12"]}},
        {"from_name": "spatial", "value": {"text": ["on the left", "above the table"]}},
        {"from_name": "more", "value": {"text": ["on the left\nthe cup near the door"]}}]), view, "r")
    assert d.decision == "done" and d.kept_sent_ids == (12,) and d.dropped_sent_ids == (11,)
    assert d.spatial_phrases == ("on the left", "above the table", "the cup near the door")
    nothing = annotation_decision("expressions", TASK, ann([]), view, "r")
    assert nothing.kept_sent_ids == () and nothing.dropped_sent_ids == (11, 12) and nothing.spatial_phrases == ()
    with pytest.raises(AnnotationError, match="not the object's sentences"):
        annotation_decision("expressions", TASK, ann([{"from_name": "keep", "value": {"choices": ["99"]}}]), view, "r")


def test_latest_submitted_annotation_wins_and_skips_are_ignored():
    task = {"annotations": [
        {"id": 1, "updated_at": "2026-01-01T00:00:00Z", "was_cancelled": False},
        {"id": 2, "updated_at": "2026-01-03T00:00:00Z", "was_cancelled": True},
        {"id": 3, "updated_at": "2026-01-02T00:00:00+00:00", "was_cancelled": False}]}
    assert latest_annotation(task)["id"] == 3
    assert latest_annotation({"annotations": [{"id": 4, "was_cancelled": True}]}) is None


def test_wanted_rounds_follow_the_decisions():
    from comcoco.records import ReviewDecision

    view = fake_view()
    assert [(r.sample_id, n) for r, n in wanted(view, "placement", {})] == [("s1", 0)]
    assert wanted(view, "expressions", {}) == []
    assert len(wanted(view, "expressions", {}, without_placement_review=True)) == 1
    view.decisions = {("s1", "placement"): ReviewDecision("s1", "placement", "adjust", "r", "t", box=(1, 1, 2, 2), task_id=40)}
    assert [n for _, n in wanted(view, "placement", {40: 2})] == [3]
    assert len(wanted(view, "expressions", {})) == 1
    view.decisions = {("s1", "placement"): ReviewDecision("s1", "placement", "reject", "r", "t", task_id=40)}
    assert wanted(view, "placement", {40: 0}) == [] and wanted(view, "expressions", {}, True) == []


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
    from comcoco.review.push import task_key

    s, sleeps = server()
    stored: list[dict] = []
    answers = [httpx.ReadTimeout("slow"), None]

    def import_tasks(id, request, return_task_ids):
        stored.extend({"id": len(stored) + 1, "data": dict(t["data"])} for t in request)
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    s._sdk = SimpleNamespace(
        projects=SimpleNamespace(import_tasks=import_tasks),
        tasks=SimpleNamespace(list=lambda project, fields: [SimpleNamespace(**t) for t in stored]))
    tasks = [{"data": {"sample_id": f"s{i}", "round": 0}} for i in range(3)]
    assert s.import_tasks(7, tasks, key=task_key) == 3
    assert [t["data"]["sample_id"] for t in stored] == ["s0", "s1", "s2"] and sleeps == [0.5]
    # Without a key the same timeout duplicates the batch: what the key is there to prevent.
    stored.clear()
    answers[:] = [httpx.ReadTimeout("slow"), None]
    s.import_tasks(7, tasks)
    assert len(stored) == 6


def test_a_partly_landed_import_sends_only_the_rest():
    from comcoco.review.push import task_key

    s, _ = server()
    stored: list[dict] = []
    calls: list[list[str]] = []

    def import_tasks(id, request, return_task_ids):
        calls.append([t["data"]["sample_id"] for t in request])
        if len(calls) == 1:  # the server stored the first task, then the connection dropped
            stored.append({"id": 1, "data": dict(request[0]["data"])})
            raise httpx.RemoteProtocolError("server disconnected")
        stored.extend({"id": len(stored) + 1, "data": dict(t["data"])} for t in request)

    s._sdk = SimpleNamespace(
        projects=SimpleNamespace(import_tasks=import_tasks),
        tasks=SimpleNamespace(list=lambda project, fields: [SimpleNamespace(**t) for t in stored]))
    tasks = [{"data": {"sample_id": f"s{i}", "round": 1}} for i in range(3)]
    assert s.import_tasks(7, tasks, key=task_key) == 3
    assert calls == [["s0", "s1", "s2"], ["s1", "s2"]]
    assert sorted(t["data"]["sample_id"] for t in stored) == ["s0", "s1", "s2"]
