"""The command line: every verb answers --help, and `python -m comcoco` is the same app."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from comcoco.cli import app

runner = CliRunner()


def _verbs(typer_app) -> list[list[str]]:
    """All command paths, including sub-apps (e.g. `review push`)."""
    import typer.main

    click_group = typer.main.get_command(typer_app)
    paths: list[list[str]] = []

    def walk(cmd, prefix):
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            paths.append(prefix + [name])
            walk(sub, prefix + [name])

    walk(click_group, [])
    return paths


def test_every_verb_has_help():
    verbs = _verbs(app)
    assert verbs, "no verbs registered"
    for path in verbs:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_version_and_module_entry_point():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("comcoco ")
    proc = subprocess.run([sys.executable, "-m", "comcoco", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
