"""``comcoco review push|pull|status`` and ``review users add|list|remove``: human review in Label Studio.

The server is found the way ``scripts/label_studio.sh`` starts it (``COMCOCO_LS_URL`` /
``COMCOCO_LS_PORT``, ``COMCOCO_LS_TOKEN``, ``COMCOCO_LS_DOCUMENT_ROOT``); ``--url`` and ``--token``
override. The token is never printed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from comcoco.commands._common import EXIT_PARTIAL, EXIT_USAGE, UserError, fail, user_errors
from comcoco.compose.samples import SamplesFileError
from comcoco.review.bookkeeping import STAGES, ReviewError
from comcoco.review.server import RetryPolicy, ReviewServer
from comcoco.review.settings import LabelStudioError, ServerSettings

review_app = typer.Typer(
    name="review",
    help="Human review in Label Studio: push samples, pull decisions, show progress, manage annotators.",
    no_args_is_help=True,
    add_completion=False,
)
users_app = typer.Typer(name="users", help="Annotator accounts on the review server.", no_args_is_help=True,
                        add_completion=False)

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


def _refuse_if_busy(workdir: Path, operation: str) -> None:
    """Refuse at once, before the flow and its server start, when a build (or another pull or push) holds
    the work directory; the flow's task then holds the lock for the whole operation."""
    from comcoco.workdir import Workdir

    with Workdir(workdir.resolve()).lock(operation):
        pass


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
    annotator: list[str] | None = typer.Option(
        None, "--annotator", help="An annotator's e-mail (repeat for a team; 'all' = every account but the "
        "token's own). Each task is meant for one of them. Default: the team of the last push, else anyone."),
    overlap: float | None = typer.Option(
        None, "--overlap", help="Share of samples (seeded) answered by two annotators, e.g. 0.1 [last push's, else 0]."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the overlap and the assignment [the build's seed]."),
) -> None:
    """Import the samples not yet imported (doubtful first); pushing twice creates no duplicates."""
    from comcoco.review.push import PushReport

    with user_errors(*_ERRORS):
        _check(workdir, stage)
        _connect(url, token, document_root)  # unusable settings fail here, in one line
        _refuse_if_busy(workdir, "review push")
        from pipelines.review import run_push

        rep = PushReport(**run_push(str(workdir.resolve()), stage, url, _root(document_root),
                                       without_placement_review, recreate_missing, annotator or None, overlap, seed))
    for m in rep.messages:
        typer.echo(m)
    made = " (new project)" if rep.project_created else ""
    typer.echo(f"{stage}: imported {rep.imported} task(s) into project {rep.project_id}{made}; "
               f"{rep.already} already there")
    if rep.annotators:
        typer.echo(f"{stage}: team {', '.join(rep.annotators)}; overlap {rep.overlap:g} "
                   f"({rep.second_opinions} second-opinion task(s) imported); {rep.third_looks} third look(s) imported")
    if rep.adopted:
        typer.echo(f"{stage}: {rep.adopted} task(s) found on the server were missing from tasks.json; recorded")


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
        _refuse_if_busy(workdir, "review pull")
        from pipelines.review import run_pull

        rep = PullReport(**run_pull(str(workdir.resolve()), stage, url, _root(document_root)))
    for m in rep.messages:
        typer.echo(m)
    applied = ", ".join(f"{k} {v}" for k, v in sorted(rep.applied.items())) or "none"
    typer.echo(f"{stage}: {rep.tasks} task(s); {rep.recorded} new or edited annotation(s) recorded; applied {applied}; "
               f"{rep.unchanged} already applied; {rep.pending} task(s) not yet annotated")
    if rep.recomposed or rep.sent_back:
        typer.echo(f"{stage}: recomposed {len(rep.recomposed)} sample(s); {rep.sent_back} sent back for a look")
    if rep.awaiting:
        typer.echo(f"{stage}: {rep.awaiting} sample(s) wait for their second opinion")
    for c in rep.conflicts[:20]:
        typer.echo(f"{stage}: third look for {c}")
    if rep.superseded:
        typer.echo(f"{stage}: {rep.superseded} annotation(s) of earlier rounds ignored (a later round decided)")
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
    """Counts per stage and decision, team and inter-annotator agreement (and, unless --offline, tasks
    deleted on the server)."""
    from comcoco.review.status import agreement_lines, review_status

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
        if s.awaiting_second or s.third_looks:
            typer.echo(f"{s.stage:<12} {s.awaiting_second} sample(s) wait for a second opinion; "
                       f"{s.third_looks} need a third look")
        if s.answers:
            typer.echo(f"{s.stage:<12} answers: " + ", ".join(f"{k} {v}" for k, v in s.answers.items()))
        for line in agreement_lines(s.stage, s.agreement):
            typer.echo(f"{s.stage:<12} {line}")
        if s.missing:
            typer.echo(f"{s.stage:<12} {s.missing} task(s) missing on the server (deleted in Label Studio)")


def users_add_cmd(
    email: str = typer.Argument(..., help="The annotator's e-mail (their login)."),
    password: str | None = typer.Option(None, "--password", help="Their password (asked for when not given).",
                                        show_default=False),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
) -> None:
    """Create an annotator account on the server (through the organization's invitation link)."""
    from comcoco.review.team import add_annotator

    with user_errors(*_ERRORS):
        server = _connect(url, token, None)[0]
        if password is None:
            if not sys.stdin.isatty():
                raise UserError("--password is required when not run in a terminal")
            password = typer.prompt(f"password for {email}", hide_input=True, confirmation_prompt=True)
        uid = add_annotator(server, email, password)
    typer.echo(f"created annotator {email} (user {uid}) on {server.url}; push with --annotator {email}")


def users_list_cmd(url: str | None = UrlOpt, token: str | None = TokenOpt) -> None:
    """List the server's accounts (the token's own is marked)."""
    with user_errors(*_ERRORS):
        server = _connect(url, token, None)[0]
        me = server.whoami()["id"]
        users = server.users(refresh=True)
    for uid, email in sorted(users.items()):
        typer.echo(f"{uid:>5}  {email}{'  (the token user)' if uid == me else ''}")


def users_remove_cmd(email: str = typer.Argument(..., help="The annotator's e-mail."),
                     url: str | None = UrlOpt, token: str | None = TokenOpt) -> None:
    """Delete an annotator's account; their answers stay, their open tasks go to the team at the next push."""
    from comcoco.review.team import remove_annotator

    with user_errors(*_ERRORS):
        server = _connect(url, token, None)[0]
        uid = remove_annotator(server, email)
    typer.echo(f"removed {email} (user {uid}); the next push hands their open tasks to the rest of the team")


review_app.command("push")(push_cmd)
review_app.command("pull")(pull_cmd)
review_app.command("status")(status_cmd)
users_app.command("add")(users_add_cmd)
users_app.command("list")(users_list_cmd)
users_app.command("remove")(users_remove_cmd)
review_app.add_typer(users_app, name="users")


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
