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


def test_problem_lists_are_capped_with_a_count_of_the_rest(capsys):
    import pytest
    import typer

    from comcoco.commands._common import fail_with_problems

    with pytest.raises(typer.Exit) as exc:
        fail_with_problems([f"file{i}: sha256 mismatch" for i in range(60)], "R: 60 problem(s)", limit=50)
    err = capsys.readouterr().err.splitlines()
    assert exc.value.exit_code == 3
    assert err[0] == "  file0: sha256 mismatch" and err[49] == "  file49: sha256 mismatch"
    assert err[50] == "  ... and 10 more" and err[-1] == "error: R: 60 problem(s)" and len(err) == 52
