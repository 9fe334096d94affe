"""The review server: settings, the control script, and both labeling configs on a real Label Studio.

Tests marked ``labelstudio`` use the session fixture, which installs (once) and starts the real server.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from comcoco.review import process as ls_process
from comcoco.review import settings as ls_settings
from comcoco.text.spatial import propose_spatial_phrases

REPO = Path(__file__).resolve().parents[1]
ANNOTATIONS = REPO / "annotations"
COCO_REAL = REPO.parent / "shared" / "fixtures" / "coco_real"


# --- settings, without a server ------------------------------------------------------------------


def test_settings_defaults_and_env(tmp_path: Path) -> None:
    defaults = ls_settings.ServerSettings.from_env({})
    assert defaults.port == 8080
    assert defaults.url == "http://127.0.0.1:8080"
    assert defaults.token == ls_settings.DEFAULT_TOKEN
    assert defaults.venv == ls_settings.REPO / ".label-studio" / "venv"
    assert defaults.document_root == ls_settings.REPO / "runs"

    token = "ab" * 20
    env = {
        "COMCOCO_LS_PORT": "9123",
        "COMCOCO_LS_TOKEN": token,
        "COMCOCO_LS_HOME": str(tmp_path / "home"),
        "COMCOCO_LS_DOCUMENT_ROOT": str(tmp_path / "docs"),
    }
    s = ls_settings.ServerSettings.from_env(env)
    assert s.url == "http://127.0.0.1:9123"
    assert s.data_dir == tmp_path / "home" / "data"
    assert s.venv == tmp_path / "home" / "venv"
    assert s.document_root == tmp_path / "docs"
    assert token not in repr(s) and s.password not in repr(s)
    script_env = s.script_env({})
    assert script_env["COMCOCO_LS_TOKEN"] == token and script_env["COMCOCO_LS_PORT"] == "9123"
    assert s.mask(f"Authorization: Token {token}") == "Authorization: Token <token>"
    assert ls_settings.ServerSettings.from_env({"COMCOCO_LS_URL": "http://127.0.0.1:1/"}).url == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"COMCOCO_LS_TOKEN": "not-a-token"}, "COMCOCO_LS_TOKEN"),
        ({"COMCOCO_LS_PORT": "eighty"}, "COMCOCO_LS_PORT"),
        ({"COMCOCO_LS_PORT": "70000"}, "port"),
        ({"COMCOCO_LS_START_TIMEOUT": "soon"}, "COMCOCO_LS_START_TIMEOUT"),
    ],
)
def test_settings_reject_bad_values(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ls_settings.LabelStudioError, match=needle):
        ls_settings.ServerSettings.from_env(env)


def test_local_files_url(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run 1").mkdir(parents=True)
    image = root / "run 1" / "a.jpg"
    image.write_bytes(b"x")
    assert ls_settings.local_files_url(image, root) == "/data/local-files/?d=run%201/a.jpg"
    with pytest.raises(ls_settings.LabelStudioError, match="not under the document root"):
        ls_settings.local_files_url(tmp_path / "elsewhere.jpg", root)


def test_wait_until_ready_times_out_on_a_closed_port() -> None:
    url = f"http://127.0.0.1:{ls_process.free_port()}"
    start = time.monotonic()
    with pytest.raises(ls_settings.LabelStudioError, match="not ready after"):
        ls_process.wait_until_ready(url, timeout=0.6, interval=0.2)
    assert time.monotonic() - start < 10


def test_wait_until_ready_returns_once_health_answers() -> None:
    """A stand-in server that answers /health only from its third request on."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            hits.append(self.path)
            ok = self.path == "/health" and len(hits) >= 3
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b'{"status": "UP"}' if ok else b"starting")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        waited = ls_process.wait_until_ready(f"http://127.0.0.1:{httpd.server_port}", timeout=20, interval=0.05)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert waited >= 0
    assert hits[:3] == ["/health"] * 3


# --- the control script, without a server ----------------------------------------------------------


def _script_settings(tmp_path: Path) -> ls_settings.ServerSettings:
    return ls_settings.ServerSettings.from_env(
        port=ls_process.free_port(), data_dir=tmp_path / "data", document_root=tmp_path / "docs"
    )


def test_script_status_and_stop_when_not_running(tmp_path: Path) -> None:
    settings = _script_settings(tmp_path)
    assert "not running" in ls_process.run_script("status", settings)
    assert "not running" in ls_process.stop(settings)
    assert ls_process.running_pid(settings) is None


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (an init that never reaps keeps those)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_script_stop_ends_the_recorded_process_group(tmp_path: Path) -> None:
    """stop kills the recorded pid's whole group (children too) and removes the pid file."""
    settings = _script_settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    leader = subprocess.Popen(
        ["bash", "-c", "sleep 300 & sleep 300 & wait"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )  # pytest stays its parent, so after stop it is a zombie until reaped: stop must not wait on it
    try:
        settings.pid_file.write_text(str(leader.pid))
        assert ls_process.running_pid(settings) == leader.pid
        deadline = time.monotonic() + 10
        while len(_live_group_members(leader.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_live_group_members(leader.pid)) == 3  # the leader and its two sleeping children
        assert "running (pid" in ls_process.run_script("status", settings)
        out = ls_process.stop(settings)
        assert f"stopped (pid {leader.pid})" in out
        assert leader.wait(timeout=30) is not None
        assert not settings.pid_file.exists()
        assert _live_group_members(leader.pid) == [], "children of the stopped server are still running"
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait()


def test_script_refuses_unknown_action_and_start_without_install(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ls_process.run_script("restart", _script_settings(tmp_path))
    env = dict(os.environ, COMCOCO_LS_TOKEN="short", COMCOCO_LS_DATA_DIR=str(tmp_path / "d"),
               COMCOCO_LS_VENV=str(tmp_path / "no-venv"))
    proc = subprocess.run(["bash", str(ls_process.SCRIPT), "start"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "not installed" in proc.stderr


def test_script_never_traces_or_prints_the_token() -> None:
    text = ls_process.SCRIPT.read_text()
    assert "set -x" not in text.replace("`set -x`", "")
    assert "printenv" not in text and "\nenv\n" not in text
    assert ls_settings.DEFAULT_TOKEN in text  # the documented default lives in one place in the script


# --- the labeling configs, parsed locally ------------------------------------------------------------


def _tags(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {el.get("name"): el for el in root.iter() if el.get("name")}


def test_placement_config_structure() -> None:
    tags = _tags(ANNOTATIONS / "placement.xml")
    assert tags["image"].tag == "Image" and tags["image"].get("value") == "$image"
    assert tags["box"].tag == "RectangleLabels" and tags["box"].get("toName") == "image"
    assert [lab.get("value") for lab in tags["box"]] == ["object"]
    assert tags["expressions"].get("value") == "$expressions"
    assert tags["score"].get("value") == "$score"
    decision = tags["decision"]
    assert decision.tag == "Choices" and decision.get("required") == "true"
    assert [c.get("alias") for c in decision] == ["accept", "reject", "adjust"]
    # the meaning is the visible text, not a hover hint
    assert all(c.get("value").startswith(c.get("alias") + ": ") and len(c.get("value")) > 25 for c in decision)
    assert tags["reason"].tag == "TextArea" and tags["reason"].get("required") == "true"
    root = ET.parse(ANNOTATIONS / "placement.xml").getroot()
    assert any(el.tag == "Header" and el.get("value") == "$look" for el in root.iter())  # the round, shown


def test_expressions_config_structure() -> None:
    tags = _tags(ANNOTATIONS / "expressions.xml")
    assert tags["image"].get("value") == "$image"
    assert tags["object"].tag == "RectangleLabels"
    keep = tags["keep"]
    assert keep.tag == "Choices" and keep.get("choice") == "multiple"
    assert keep.get("value") == "$expression_options"
    assert tags["spatial"].tag == "TextArea" and tags["spatial"].get("editable") == "true"
    assert tags["more"].tag == "TextArea"


# --- against the real server ---------------------------------------------------------------------------


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _export(client, project_id: int) -> list[dict]:
    chunks = client.projects.exports.download_sync(id=project_id, export_type="JSON", download_all_tasks=True)
    return json.loads(b"".join(chunks))


def _publish_image(label_studio, name: str) -> tuple[Path, str]:
    """Copy a real COCO image under the document root; return its folder and local-files URL."""
    folder = label_studio.document_root / "review-test" / name
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "composite.jpg"
    shutil.copyfile(COCO_REAL / "000000000785.jpg", image)
    return folder, ls_settings.local_files_url(image, label_studio.document_root)


def _percent_box(box: tuple[float, float, float, float], w: int, h: int) -> dict[str, float]:
    x, y, bw, bh = box
    return {"x": 100 * x / w, "y": 100 * y / h, "width": 100 * bw / w, "height": 100 * bh / h, "rotation": 0}


@pytest.mark.labelstudio
def test_server_is_up_token_works_and_is_not_logged(label_studio) -> None:
    assert ls_process.health_ok(label_studio.url)
    assert ls_process.running_pid(label_studio.settings) is not None
    me = label_studio.client().users.whoami()
    assert me.email == label_studio.settings.username
    status, _ = _get(label_studio.url + "/api/projects", "0" * 40)
    assert status == 401
    status, _ = _get(label_studio.url + "/api/projects", label_studio.token)
    assert status == 200
    log = label_studio.settings.log_file.read_text(errors="replace")
    assert label_studio.token not in log
    out = ls_process.run_script("status", label_studio.settings)
    assert "healthy" in out and label_studio.token not in out
    assert "already running" in ls_process.start(label_studio.settings)


@pytest.mark.labelstudio
def test_server_validates_labeling_configs(label_studio) -> None:
    """projects.create refuses a broken config, so accepting ours below means something."""
    from label_studio_sdk.core.api_error import ApiError

    broken = (ANNOTATIONS / "placement.xml").read_text().replace('toName="image"', 'toName="nowhere"', 1)
    with pytest.raises(ApiError) as err:
        label_studio.client().projects.create(title="broken", label_config=broken)
    assert err.value.status_code == 400


@pytest.mark.labelstudio
def test_placement_stage_round_trip(label_studio) -> None:
    client = label_studio.client()
    folder, url = _publish_image(label_studio, "placement")
    project = client.projects.create(
        title="stage 1 test", label_config=(ANNOTATIONS / "placement.xml").read_text()
    )
    client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True)
    status, body = _get(label_studio.url + url, label_studio.token)
    assert status == 200 and body[:2] == b"\xff\xd8"  # the JPEG itself, served from the document root
    assert _get(label_studio.url + url, None)[0] == 401

    w, h = 640, 425
    placed = (96.0, 170.0, 160.0, 200.0)
    prediction = {
        "model_version": "sampler",
        "score": 0.73,
        "result": [
            {
                "id": "placed",
                "from_name": "box",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": w,
                "original_height": h,
                "value": {**_percent_box(placed, w, h), "rectanglelabels": ["object"]},
            }
        ],
    }
    data = {"image": url, "expressions": "1. man in a black jacket\n2. skier", "score": "0.73", "sample_id": "s-1"}
    imported = client.projects.import_tasks(
        id=project.id, request=[{"data": data, "predictions": [prediction]}], return_task_ids=True
    )
    assert imported.task_count == 1 and imported.prediction_count == 1
    (task,) = list(client.tasks.list(project=project.id, fields="all"))
    assert task.data["sample_id"] == "s-1"
    (stored,) = task.predictions
    assert stored.result[0]["value"]["rectanglelabels"] == ["object"]
    assert stored.result[0]["value"]["x"] == pytest.approx(100 * placed[0] / w)

    adjusted = (120.0, 170.0, 160.0, 200.0)
    client.annotations.create(
        id=task.id,
        result=[
            {
                "from_name": "box",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": w,
                "original_height": h,
                "value": {**_percent_box(adjusted, w, h), "rectanglelabels": ["object"]},
            },
            {"from_name": "decision", "to_name": "image", "type": "choices", "value": {"choices": ["adjust"]}},
            {"from_name": "reason", "to_name": "image", "type": "textarea", "value": {"text": ["slightly off"]}},
        ],
    )
    (exported,) = _export(client, project.id)
    assert exported["data"]["sample_id"] == "s-1"
    by_name = {r["from_name"]: r for r in exported["annotations"][0]["result"]}
    assert by_name["decision"]["value"]["choices"] == ["adjust"]
    assert by_name["reason"]["value"]["text"] == ["slightly off"]
    rect = by_name["box"]
    px = rect["value"]["x"] * rect["original_width"] / 100
    assert px == pytest.approx(adjusted[0])
    assert rect["value"]["width"] * rect["original_width"] / 100 == pytest.approx(adjusted[2])


@pytest.mark.labelstudio
def test_expression_stage_round_trip_with_spatial_proposals(label_studio) -> None:
    client = label_studio.client()
    folder, url = _publish_image(label_studio, "expressions")
    project = client.projects.create(
        title="stage 2 test", label_config=(ANNOTATIONS / "expressions.xml").read_text()
    )
    client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True)

    w, h = 640, 425
    box = (40.0, 250.0, 90.0, 150.0)
    objects = [("person", (281.0, 45.0, 219.0, 347.0))]  # the real annotation of COCO 785
    phrases = propose_spatial_phrases(box, (w, h), objects)
    texts = [p.text for p in phrases]
    assert texts == ["at the bottom left", "left of the person"]
    options = [{"value": "man in a black jacket", "alias": "101"}, {"value": "skier", "alias": "102"}]
    prediction = {
        "model_version": "spatial-proposals",
        "result": [
            {
                "from_name": "object",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": w,
                "original_height": h,
                "value": {**_percent_box(box, w, h), "rectanglelabels": ["object"]},
            },
            {"from_name": "keep", "to_name": "image", "type": "choices", "value": {"choices": ["101", "102"]}},
            {"from_name": "spatial", "to_name": "image", "type": "textarea", "value": {"text": texts}},
        ],
    }
    client.projects.import_tasks(
        id=project.id,
        request=[{"data": {"image": url, "expression_options": options}, "predictions": [prediction]}],
        return_task_ids=True,
    )
    (task,) = list(client.tasks.list(project=project.id, fields="all"))
    assert task.data["expression_options"] == options
    assert task.predictions[0].result[2]["value"]["text"] == texts
    client.annotations.create(
        id=task.id,
        result=[
            {"from_name": "keep", "to_name": "image", "type": "choices", "value": {"choices": ["102"]}},
            {"from_name": "spatial", "to_name": "image", "type": "textarea",
             "value": {"text": ["left of the man"]}},
            {"from_name": "more", "to_name": "image", "type": "textarea",
             "value": {"text": ["the skier at the bottom left"]}},
        ],
    )
    (exported,) = _export(client, project.id)
    by_name = {r["from_name"]: r for r in exported["annotations"][0]["result"]}
    assert by_name["keep"]["value"]["choices"] == ["102"]
    assert by_name["spatial"]["value"]["text"] == ["left of the man"]
    assert by_name["more"]["value"]["text"] == ["the skier at the bottom left"]


# --- the port: free again right after stop, and a refusal that keeps server and clients together ------


def _get_until_server_closes(port: int, path: str, token: str) -> bytes:
    """A GET with ``Connection: close``, read until the server closes the connection, then closed here:
    the server closes first, so the TIME_WAIT is on the server's port (a client that closes first, as
    urllib may when it has read the body, leaves it on its own port instead)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Token {token}\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def _bind_plain(port: int) -> bool:
    """True when the port binds without SO_REUSEADDR (what the old port check did)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.labelstudio
def test_restart_right_after_stop_on_the_same_port(label_studio, tmp_path: Path) -> None:
    """The stopped server's TIME_WAIT connections must not make its own port look taken."""
    settings = ls_settings.ServerSettings.from_env(
        port=ls_process.free_port(), data_dir=tmp_path / "data", document_root=tmp_path / "docs",
        venv=label_studio.settings.venv, url_override=None)
    ls_process.start(settings)
    try:
        for _ in range(5):  # each read to the server's close: it closes first, TIME_WAIT on its side of the port
            assert _get_until_server_closes(settings.port, "/api/projects", settings.token).startswith(b"HTTP/1.1 200")
    finally:
        ls_process.stop(settings)
    assert not _bind_plain(settings.port), "no TIME_WAIT left behind: the test would prove nothing"
    try:
        out = ls_process.start(settings)  # at once, same port
        assert "ready at" in out and ls_process.health_ok(settings.url)
    finally:
        ls_process.stop(settings)


def test_a_taken_port_is_refused_with_a_message_for_server_and_clients(label_studio, tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = ls_settings.ServerSettings.from_env(
            port=port, data_dir=tmp_path / "data", document_root=tmp_path / "docs",
            venv=label_studio.settings.venv, url_override=None)
        with pytest.raises(ls_settings.LabelStudioError) as err:
            ls_process.start(settings)
    msg = str(err.value)
    assert f"port {port} on 127.0.0.1 is in use by another program" in msg
    assert "export COMCOCO_LS_PORT" in msg and "comcoco review" in msg and "make label-studio" in msg
    assert not settings.pid_file.exists()
