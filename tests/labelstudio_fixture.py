"""Session fixture: a real Label Studio server on a free 127.0.0.1 port, for the review tests.

Enabled with ``pytest_plugins = ["labelstudio_fixture"]``. The server's virtualenv is the project's
(``.label-studio/venv``, or ``COMCOCO_LS_VENV``) and is installed on first use, then reused through its
stamp; the data directory and the document root are fresh temporary directories, so the tests never
touch a developer's own server. A failed install or start fails the tests that use the fixture, with
the script's message; nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from comcoco.review import process as ls_process
from comcoco.review import settings as ls_settings
from comcoco.review.server import client as ls_client_fn


@dataclass(frozen=True)
class LabelStudioServer:
    """What a test needs to talk to the session's server."""

    url: str
    token: str = field(repr=False)
    document_root: Path
    settings: ls_settings.ServerSettings

    def client(self) -> Any:
        return ls_client_fn(self.settings)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    base = tmp_path_factory.mktemp("label-studio")
    settings = ls_settings.ServerSettings.from_env(
        port=ls_process.free_port(),
        data_dir=base / "data",
        document_root=base / "documents",
        url_override=None,
    )
    settings.document_root.mkdir(parents=True, exist_ok=True)
    try:
        ls_process.install(settings)
    except ls_settings.LabelStudioError as exc:
        pytest.fail(f"Label Studio {ls_settings.LABEL_STUDIO_VERSION} could not be installed: {exc}", pytrace=False)
    try:
        ls_process.start(settings)
    except ls_settings.LabelStudioError as exc:
        try:
            ls_process.stop(settings)  # a server that never became ready must not outlive the session
        except ls_settings.LabelStudioError as stop_exc:
            exc = ls_settings.LabelStudioError(f"{exc}\n(stopping it failed too: {stop_exc})")
        pytest.fail(f"Label Studio could not be started: {exc}", pytrace=False)
    try:
        yield LabelStudioServer(settings.url, settings.token, settings.document_root.resolve(), settings)
    finally:
        ls_process.stop(settings)
