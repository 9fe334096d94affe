"""``comcoco audit RELEASE``: how well a small detector tells the pasted objects from the scenes' own."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from comcoco.commands._common import UserError, user_errors


def audit(
    release: Path = typer.Argument(..., help="A release folder (comcoco release / download)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (auc, ci, n_pasted, n_native, "
                                 "cues, verdict, …)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the folds, the bootstrap and the sample of targets."),
    max_targets: int = typer.Option(2000, "--max-targets", min=30,
                                    help="Audit at most this many pasted targets (a seeded sample)."),
) -> None:
    """Train a small detector on crops of pasted vs native objects and report its held-out ROC AUC.

    0.5 means the pasted objects cannot be told apart; per cue family (boundary, noise, sharpness,
    shadow, colour, jpeg) it shows what gives them away. Reads the release only; writes nothing.
    """
    from comcoco.release.audit import audit_release

    with user_errors(OSError):
        if not (release / "ComCOCO" / "instances.json").is_file():
            raise UserError(f"{release}: not a comcoco release (no ComCOCO/instances.json)")
        result = audit_release(release, seed=seed, max_targets=max_targets)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    auc = "n/a" if result["auc"] is None else f"{result['auc']:.3f} [{result['ci'][0]:.3f}, {result['ci'][1]:.3f}]"
    typer.echo(f"artifact audit of {release}: ROC AUC {auc} (0.5 = pasted objects cannot be told apart)")
    typer.echo(f"  {result['n_pasted']} pasted and {result['n_native']} size-matched native objects in "
               f"{result['n_composites']} background groups ({result['targets_audited']} of "
               f"{result['targets_in_release']} targets audited)")
    for family, value in sorted(result["cues"].items()):
        typer.echo(f"  {family:<10} {'n/a' if value is None else f'{value:.3f}'}")
    typer.echo(f"verdict: {result['verdict']}")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
