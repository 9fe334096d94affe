"""`make prefect-server PREFECT_PORT=N` serves a UI that calls its own API on port N, whatever else the
environment says (an exported PREFECT_API_URL for another server, the default port 4200)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_prefect_server_serves_a_ui_that_calls_its_own_api(tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_API_URL": "http://127.0.0.1:4200/api"}  # a stale export must not win
    # `-o setup`: the shared virtualenv of this interpreter is used as it is, never rebuilt
    proc = subprocess.Popen(["make", "-s", "-o", "setup", "prefect-server", f"PREFECT_PORT={port}",
                             f"VENV={sys.prefix}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        settings = httpx.get(f"{base}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"{base}/api", settings
        page = httpx.get(f"{base}/", timeout=10, follow_redirects=True)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
