"""Review flows: push a stage's tasks to Label Studio, pull and apply its decisions.

Thin Prefect faces over ``comcoco.review.push`` and ``comcoco.review.pull``: one task each, taking
paths and names and returning small dicts. The token is read from the environment inside the task
(``COMCOCO_LS_TOKEN``), never passed as a flow parameter, so it is not recorded with the flow run.
Retries against an unreachable or restarting server happen in the library (``RetryPolicy``), not
here, so a failure is reported once, clearly.

A build may stop after composing; these flows then run whenever reviewers have worked, and the
release takes whatever the decisions say at that moment.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.api_server import with_prefect_api
from pipelines.runners import configure_prefect

configure_prefect()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from comcoco.review.server import RetryPolicy, ReviewServer  # noqa: E402
from comcoco.review.settings import ServerSettings  # noqa: E402


def _server(url: str | None, document_root: str | None) -> tuple[ReviewServer, Path]:
    overrides: dict[str, Any] = {}
    if url:
        overrides["url_override"] = url
    if document_root:
        overrides["document_root"] = Path(document_root)
    settings = ServerSettings.from_env(**overrides)
    return ReviewServer.from_settings(settings, RetryPolicy.from_env()), settings.document_root


@task(name="review-push", cache_policy=NO_CACHE)
def push_task(workdir: str, stage: str, url: str | None, document_root: str | None,
              without_placement_review: bool, recreate_missing: bool = False, annotators: list[str] | None = None,
              overlap: float | None = None, seed: int | None = None) -> dict[str, Any]:
    from comcoco.review.push import push

    server, root = _server(url, document_root)
    return asdict(push(workdir, stage, server, root, without_placement_review=without_placement_review,
                       recreate_missing=recreate_missing, annotators=annotators, overlap=overlap, seed=seed))


@task(name="review-pull", cache_policy=NO_CACHE)
def pull_task(workdir: str, stage: str, url: str | None, document_root: str | None) -> dict[str, Any]:
    from comcoco.review.pull import pull

    server, root = _server(url, document_root)
    return asdict(pull(workdir, stage, server, root))


@flow(name="comcoco-review-push", log_prints=False)
def review_push(workdir: str, stage: str, url: str | None = None, document_root: str | None = None,
                without_placement_review: bool = False, recreate_missing: bool = False,
                annotators: list[str] | None = None, overlap: float | None = None,
                seed: int | None = None) -> dict[str, Any]:
    """Import the stage's samples not yet in Label Studio (idempotent); annotators, overlap and seed set
    the stage's team (None keeps the recorded one)."""
    rep = push_task(str(workdir), stage, url, document_root, without_placement_review, recreate_missing,
                    annotators, overlap, seed)
    logger = get_run_logger()
    for m in rep["messages"]:
        logger.info("%s", m)
    logger.info("%s: imported %d task(s) into project %s; %d already there", stage, rep["imported"],
                rep["project_id"], rep["already"])
    if rep["missing"]:
        logger.warning("%s: %d task(s) missing on the server (deleted in Label Studio)", stage, len(rep["missing"]))
    return rep


@flow(name="comcoco-review-pull", log_prints=False)
def review_pull(workdir: str, stage: str, url: str | None = None, document_root: str | None = None) -> dict[str, Any]:
    """Apply the stage's finished annotations to the work directory (idempotent, resumable)."""
    rep = pull_task(str(workdir), stage, url, document_root)
    logger = get_run_logger()
    for m in rep["messages"]:
        logger.info("%s", m)
    applied = ", ".join(f"{k} {v}" for k, v in sorted(rep["applied"].items())) or "none"
    logger.info("%s: %d task(s); applied %s; %d already applied; %d not yet annotated", stage, rep["tasks"],
                applied, rep["unchanged"], rep["pending"])
    for e in rep["errors"]:
        logger.error("%s: not applied: %s", stage, e)
    return rep


@with_prefect_api
def run_push(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``review_push`` against the configured or a temporary Prefect API (``pipelines.api_server``)."""
    return review_push(*args, **kwargs)


@with_prefect_api
def run_pull(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``review_pull`` against the configured or a temporary Prefect API (``pipelines.api_server``)."""
    return review_pull(*args, **kwargs)
