"""Where the review server is and how to reach it: one place for its environment variables.

The server runs from its own virtualenv (``scripts/label_studio.sh`` installs and starts it; its pins
would otherwise downgrade Prefect in the project's environment). This module knows the environment
variables and their defaults (the script reads the same ones), so the CLI, the flows, the process
control in ``comcoco.review.process`` and the test fixture agree on where the server is.

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
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from comcoco.errors import ComcocoError

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


class LabelStudioError(ComcocoError):
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
