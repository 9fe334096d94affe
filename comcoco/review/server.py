"""The local Label Studio server for human review: settings, readiness, start and stop from Python.

The server runs from its own virtualenv (``scripts/label_studio.sh`` installs and starts it; its pins
would otherwise downgrade Prefect in the project's environment). This module is the Python side of that
script: one place that knows the environment variables and their defaults, so the CLI, the flows and
the test fixture agree on where the server is and how to reach it.

Environment variables (defaults in brackets; the script reads the same ones):

=========================== =============================================================
``COMCOCO_LS_URL``          base URL of the server [``http://127.0.0.1:$COMCOCO_LS_PORT``]
``COMCOCO_LS_PORT``         port on 127.0.0.1 [8080]
``COMCOCO_LS_TOKEN``        API token, 40 hex [:data:`DEFAULT_TOKEN`, for local development]
``COMCOCO_LS_USERNAME``     admin e-mail [admin@comcoco.local]
``COMCOCO_LS_PASSWORD``     admin password [comcoco-review]
``COMCOCO_LS_HOME``         state directory [``<repo>/.label-studio``]
``COMCOCO_LS_VENV``         server virtualenv [``$COMCOCO_LS_HOME/venv``]
``COMCOCO_LS_DATA_DIR``     database, media, pid and log [``$COMCOCO_LS_HOME/data``]
``COMCOCO_LS_DOCUMENT_ROOT`` directory served as local files [``<repo>/runs``]
``COMCOCO_LS_PYTHON``       interpreter for the virtualenv [python3.11]
``COMCOCO_LS_START_TIMEOUT`` seconds to wait for ``/health`` on start [240]
=========================== =============================================================

The token is never printed: it is excluded from ``repr`` and masked in every error message.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

LABEL_STUDIO_VERSION = "1.23.2"
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "label_studio.sh"

DEFAULT_PORT = 8080
# A fixed development token so a fresh checkout works without configuration. It only guards a server
# bound to 127.0.0.1; set COMCOCO_LS_TOKEN to your own 40-hex value anywhere the machine is shared.
DEFAULT_TOKEN = "c0c0de7e1c0c0de7e1c0c0de7e1c0c0de7e1c0c0"
DEFAULT_USERNAME = "admin@comcoco.local"
DEFAULT_PASSWORD = "comcoco-review"
DEFAULT_START_TIMEOUT = 240.0

_TOKEN_RE = re.compile(r"^[0-9a-f]{40}$")


class LabelStudioError(Exception):
    """The review server could not be installed, started, stopped or reached."""


@dataclass(frozen=True)
class ServerSettings:
    """Where the review server lives and how to reach it (see the module docstring for the env vars)."""

    port: int
    home: Path
    venv: Path
    data_dir: Path
    document_root: Path
    url_override: str | None = None
    username: str = DEFAULT_USERNAME
    password: str = field(default=DEFAULT_PASSWORD, repr=False)
    token: str = field(default=DEFAULT_TOKEN, repr=False)
    python: str = "python3.11"
    start_timeout: float = DEFAULT_START_TIMEOUT

    @property
    def url(self) -> str:
        """Base URL without a trailing slash."""
        return (self.url_override or f"http://127.0.0.1:{self.port}").rstrip("/")

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "label-studio.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "label-studio.log"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Settings from ``env`` (default ``os.environ``) and defaults; ``overrides`` win over both."""
        env = os.environ if env is None else env
        home = Path(env.get("COMCOCO_LS_HOME") or REPO / ".label-studio")
        port_text = env.get("COMCOCO_LS_PORT") or str(DEFAULT_PORT)
        try:
            port = int(port_text)
        except ValueError:
            raise LabelStudioError(f"COMCOCO_LS_PORT must be a port number, got {port_text!r}") from None
        timeout_text = env.get("COMCOCO_LS_START_TIMEOUT") or str(DEFAULT_START_TIMEOUT)
        try:
            start_timeout = float(timeout_text)
        except ValueError:
            raise LabelStudioError(f"COMCOCO_LS_START_TIMEOUT must be seconds, got {timeout_text!r}") from None
        values: dict[str, Any] = {
            "port": port,
            "home": home,
            "venv": Path(env.get("COMCOCO_LS_VENV") or home / "venv"),
            "data_dir": Path(env.get("COMCOCO_LS_DATA_DIR") or home / "data"),
            "document_root": Path(env.get("COMCOCO_LS_DOCUMENT_ROOT") or REPO / "runs"),
            "url_override": env.get("COMCOCO_LS_URL") or None,
            "username": env.get("COMCOCO_LS_USERNAME") or DEFAULT_USERNAME,
            "password": env.get("COMCOCO_LS_PASSWORD") or DEFAULT_PASSWORD,
            "token": env.get("COMCOCO_LS_TOKEN") or DEFAULT_TOKEN,
            "python": env.get("COMCOCO_LS_PYTHON") or "python3.11",
            "start_timeout": start_timeout,
        }
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject settings the server would refuse later with a less clear message."""
        if not 0 < self.port < 65536:
            raise LabelStudioError(f"port must be in 1..65535, got {self.port}")
        if not _TOKEN_RE.match(self.token):
            raise LabelStudioError("COMCOCO_LS_TOKEN must be 40 lowercase hex characters")
        if self.start_timeout <= 0:
            raise LabelStudioError(f"start timeout must be positive, got {self.start_timeout}")

    def with_overrides(self, **changes: Any) -> ServerSettings:
        settings = replace(self, **changes)
        settings.validate()
        return settings

    def script_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for ``scripts/label_studio.sh``: ``base`` plus these settings."""
        env = dict(os.environ if base is None else base)
        env.update(
            {
                "COMCOCO_LS_PORT": str(self.port),
                "COMCOCO_LS_HOME": str(self.home),
                "COMCOCO_LS_VENV": str(self.venv),
                "COMCOCO_LS_DATA_DIR": str(self.data_dir),
                "COMCOCO_LS_DOCUMENT_ROOT": str(self.document_root),
                "COMCOCO_LS_USERNAME": self.username,
                "COMCOCO_LS_PASSWORD": self.password,
                "COMCOCO_LS_TOKEN": self.token,
                "COMCOCO_LS_PYTHON": self.python,
                "COMCOCO_LS_START_TIMEOUT": str(int(self.start_timeout)),
            }
        )
        return env

    def mask(self, text: str) -> str:
        """``text`` with the token and password replaced, for messages that quote server output."""
        out = text.replace(self.token, "<token>")
        return out.replace(self.password, "<password>") if self.password else out


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


def local_files_url(path: str | os.PathLike[str], document_root: str | os.PathLike[str]) -> str:
    """The ``/data/local-files/?d=…`` URL under which the server shows ``path``.

    The file must lie under the document root; the project also needs a local storage covering its
    folder (``import_storage.local.create``) before the server will serve it.
    """
    root = Path(document_root).resolve()
    target = Path(path).resolve()
    try:
        relative = target.relative_to(root)
    except ValueError:
        raise LabelStudioError(f"{target} is not under the document root {root}") from None
    return "/data/local-files/?d=" + urllib.parse.quote(relative.as_posix(), safe="/")


def client(settings: ServerSettings) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client for the server (imported lazily: it is heavy)."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=settings.url, api_key=settings.token)
