"""Installing, starting and stopping the local Label Studio server from Python.

The server runs from its own virtualenv (``scripts/label_studio.sh`` installs and starts it; its pins
would otherwise downgrade Prefect in the project's environment); this is the Python side of that
script, used by the test fixture and anyone scripting a review round. Settings come from
``comcoco.review.settings``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from comcoco.review.settings import REPO, LabelStudioError, ServerSettings

SCRIPT = REPO / "scripts" / "label_studio.sh"


def health_ok(url: str, timeout: float = 3.0) -> bool:
    """True when ``GET <url>/health`` answers 200 (Label Studio's unauthenticated readiness probe)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until_ready(url: str, timeout: float = 120.0, interval: float = 0.5) -> float:
    """Poll ``/health`` until it answers; return the seconds waited, raise LabelStudioError on timeout."""
    start = time.monotonic()
    while True:
        if health_ok(url):
            return time.monotonic() - start
        waited = time.monotonic() - start
        if waited >= timeout:
            raise LabelStudioError(f"Label Studio at {url} not ready after {timeout:g}s (GET /health)")
        time.sleep(min(interval, max(0.0, timeout - waited)))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the server binds it right after; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_script(action: str, settings: ServerSettings, timeout: float | None = None) -> str:
    """Run ``scripts/label_studio.sh ACTION`` with ``settings``; return its output (token masked).

    ``status`` returns normally whether or not the server runs (exit 0 or 3); any other failure raises
    LabelStudioError quoting the script's last lines.
    """
    if action not in ("install", "start", "stop", "status"):
        raise ValueError(f"unknown action {action!r}")
    if not SCRIPT.is_file():
        raise LabelStudioError(f"{SCRIPT} is missing")
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), action],
            env=settings.script_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabelStudioError(f"{SCRIPT.name} {action} did not finish within {timeout:g}s") from None
    output = settings.mask((proc.stdout or "") + (proc.stderr or ""))
    if proc.returncode == 0 or (action == "status" and proc.returncode == 3):
        return output
    tail = "\n".join(output.strip().splitlines()[-30:])
    raise LabelStudioError(f"{SCRIPT.name} {action} failed (exit {proc.returncode}):\n{tail}")


def install(settings: ServerSettings, timeout: float = 900.0) -> str:
    """Install label-studio into its own virtualenv unless the stamp says it already is."""
    return run_script("install", settings, timeout=timeout)


def start(settings: ServerSettings) -> str:
    """Start the server (no-op when it runs) and return once ``/health`` answers."""
    out = run_script("start", settings, timeout=settings.start_timeout + 60)
    wait_until_ready(settings.url, timeout=30.0)
    return out


def stop(settings: ServerSettings) -> str:
    """Stop the server by its recorded pid and process group."""
    return run_script("stop", settings, timeout=90.0)


def running_pid(settings: ServerSettings) -> int | None:
    """The recorded server pid if that process is alive, else None."""
    try:
        pid = int(settings.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:
        # Field 3 of /proc/<pid>/stat is the state; a zombie has exited and only awaits reaping.
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except (OSError, IndexError):
        pass
    return pid


@contextmanager
def running_server(settings: ServerSettings) -> Iterator[ServerSettings]:
    """Install and start the server for the duration of the block, then stop it."""
    install(settings)
    start(settings)
    try:
        yield settings
    finally:
        stop(settings)
