"""``comcoco review push|pull|status``: human review of a work directory in Label Studio.

The server is found the way ``scripts/label_studio.sh`` starts it (``COMCOCO_LS_URL`` /
``COMCOCO_LS_PORT``, ``COMCOCO_LS_TOKEN``, ``COMCOCO_LS_DOCUMENT_ROOT``); ``--url`` and ``--token``
override. The token is never printed.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from comcoco.commands._common import EXIT_PARTIAL, EXIT_USAGE, UserError, fail, user_errors
from comcoco.compose.samples import SamplesFileError
from comcoco.review.push import STAGES, ReviewError
from comcoco.review.server import RetryPolicy, ReviewServer
from comcoco.review.settings import LabelStudioError, ServerSettings

review_app = typer.Typer(
    name="review",
    help="Human review in Label Studio: push samples, pull decisions, show progress.",
    no_args_is_help=True,
    add_completion=False,
)

_ERRORS = (LabelStudioError, ReviewError, SamplesFileError)

WorkdirArg = typer.Argument(..., help="Work directory made by `comcoco build`.")
StageOpt = typer.Option(..., "--stage", help="placement (stage 1) or expressions (stage 2).")
UrlOpt = typer.Option(None, "--url", help="Label Studio URL [COMCOCO_LS_URL, else http://127.0.0.1:$COMCOCO_LS_PORT].")
TokenOpt = typer.Option(None, "--token", help="API token, 40 hex [COMCOCO_LS_TOKEN].", show_default=False)
RootOpt = typer.Option(None, "--document-root", help="The server's local-files root [COMCOCO_LS_DOCUMENT_ROOT].")


def _connect(url: str | None, token: str | None, document_root: Path | None) -> tuple[ReviewServer, Path]:
    overrides: dict[str, object] = {}
    if url:
        overrides["url_override"] = url
    if token:
        overrides["token"] = token
    if document_root is not None:
        overrides["document_root"] = document_root
    settings = ServerSettings.from_env(**overrides)
    if token:  # the flows read the token from the environment, so it is never recorded with a flow run
        os.environ["COMCOCO_LS_TOKEN"] = token
    return ReviewServer.from_settings(settings, RetryPolicy.from_env()), settings.document_root


def _root(document_root: Path | None) -> str | None:
    return str(document_root.resolve()) if document_root is not None else None


def _check(workdir: Path, stage: str | None = None) -> None:
    if stage is not None and stage not in STAGES:
        raise UserError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}", EXIT_USAGE)
    if not workdir.is_dir():
        raise UserError(f"{workdir}: no such work directory" if not workdir.exists()
                        else f"{workdir}: not a folder (a work directory made by `comcoco build`)")


def _missing_line(stage: str, missing: list[int]) -> str:
    shown = ", ".join(str(t) for t in missing[:10]) + (" ..." if len(missing) > 10 else "")
    return f"{stage}: {len(missing)} task(s) missing on the server (deleted in Label Studio): {shown}"


def push_cmd(
    workdir: Path = WorkdirArg,
    stage: str = StageOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    document_root: Path | None = RootOpt,
    without_placement_review: bool = typer.Option(
        False, "--without-placement-review",
        help="Stage 2 only: push every built sample not rejected, not just those accepted or adjusted in stage 1."),
    recreate_missing: bool = typer.Option(False, "--recreate-missing", help="Import again tasks deleted on the server."),
) -> None:
    """Import the samples not yet imported (doubtful first); pushing twice creates no duplicates."""
    from comcoco.review.push import PushReport

    with user_errors(*_ERRORS):
        _check(workdir, stage)
        _connect(url, token, document_root)  # unusable settings fail here, in one line
        from pipelines.review import review_push

        rep = PushReport(**review_push(str(workdir.resolve()), stage, url, _root(document_root),
                                       without_placement_review, recreate_missing))
    for m in rep.messages:
        typer.echo(m)
    made = " (new project)" if rep.project_created else ""
    typer.echo(f"{stage}: imported {rep.imported} task(s) into project {rep.project_id}{made}; "
               f"{rep.already} already there")
    if rep.adopted:
        typer.echo(f"{stage}: {rep.adopted} task(s) found on the server were missing from tasks.json; recorded")
    if rep.missing:
        typer.echo(_missing_line(stage, rep.missing))


def pull_cmd(
    workdir: Path = WorkdirArg,
    stage: str = StageOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    document_root: Path | None = RootOpt,
) -> None:
    """Fetch finished annotations and apply the new ones; pulling again changes nothing."""
    from comcoco.review.pull import PullReport

    with user_errors(*_ERRORS):
        _check(workdir, stage)
        _connect(url, token, document_root)
        from pipelines.review import review_pull

        rep = PullReport(**review_pull(str(workdir.resolve()), stage, url, _root(document_root)))
    for m in rep.messages:
        typer.echo(m)
    applied = ", ".join(f"{k} {v}" for k, v in sorted(rep.applied.items())) or "none"
    typer.echo(f"{stage}: {rep.tasks} task(s); applied {applied}; {rep.unchanged} already applied; "
               f"{rep.pending} not yet annotated")
    if rep.recomposed:
        typer.echo(f"{stage}: recomposed {len(rep.recomposed)} sample(s); {rep.sent_back} sent back for a look")
    if rep.superseded:
        typer.echo(f"{stage}: {rep.superseded} annotation(s) of earlier rounds ignored (a later round decided)")
    if rep.missing:
        typer.echo(_missing_line(stage, rep.missing))
    for e in rep.errors:
        typer.echo(f"{stage}: not applied: {e}", err=True)
    if rep.errors:
        fail(f"{stage}: {len(rep.errors)} decision(s) not applied (listed above); pulling again retries them",
             EXIT_PARTIAL)


def status_cmd(
    workdir: Path = WorkdirArg,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    offline: bool = typer.Option(False, "--offline", help="Do not contact the server (no check for deleted tasks)."),
) -> None:
    """Counts per stage and decision (and, unless --offline, tasks deleted on the server)."""
    from comcoco.review.status import review_status

    with user_errors(*_ERRORS):
        _check(workdir)
        server = None if offline else _connect(url, token, None)[0]
        try:
            stages = review_status(workdir, server)
        except LabelStudioError as exc:
            typer.echo(f"warning: server not checked: {exc}", err=True)
            stages = review_status(workdir, None)
    for s in stages:
        decided = ", ".join(f"{k} {v}" for k, v in s.decisions.items()) or "none"
        project = f"project {s.project_id}" if s.project_id is not None else "not pushed"
        typer.echo(f"{s.stage:<12} {project}: {s.eligible} eligible, {s.pushed} pushed, "
                   f"{s.undecided} awaiting review; decisions: {decided}")
        if s.missing:
            typer.echo(f"{s.stage:<12} {s.missing} task(s) missing on the server (deleted in Label Studio)")


review_app.command("push")(push_cmd)
review_app.command("pull")(pull_cmd)
review_app.command("status")(status_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
