"""The running review server's API: projects, local storage, tasks, exports — with retries on transient
errors (``ReviewServer``).

Every call goes through :meth:`ReviewServer.call`, which retries only what a restart or a busy server
produces (connection failures, timeouts, HTTP 502/503/504) with exponential backoff, and turns
everything else — and the last failed try — into one clear :class:`LabelStudioError` whose message
never contains the token. Other HTTP errors (401, 400, ...) are not retried: trying again would not
help. A 404 on a project or task is reported as "missing" (a reviewer or an admin may delete things
in the UI) rather than raised.

The backoff schedule is configurable (``COMCOCO_LS_RETRIES`` tries, first delay
``COMCOCO_LS_BACKOFF`` seconds, doubling up to ``COMCOCO_LS_BACKOFF_MAX``), so tests and scripts can
fail fast and a long server restart can be waited out.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from comcoco.review.settings import LabelStudioError, ServerSettings

T = TypeVar("T")

TRANSIENT_STATUS: frozenset[int] = frozenset({502, 503, 504})
IMPORT_BATCH = 200


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    ``attempts`` tries in all; the delay before try n+1 is ``base_delay * factor**(n-1)`` capped at
    ``max_delay``. The defaults ride out a Label Studio restart (about 5 s) with room to spare.
    """

    attempts: int = 6
    base_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be at least 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0 or self.factor < 1:
            raise ValueError("retry delays must be non-negative and the factor at least 1")

    def delays(self) -> list[float]:
        """The sleeps between tries (``attempts - 1`` of them)."""
        return [min(self.base_delay * self.factor**i, self.max_delay) for i in range(self.attempts - 1)]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        env = os.environ if env is None else env
        try:
            return cls(
                attempts=int(env.get("COMCOCO_LS_RETRIES") or cls.attempts),
                base_delay=float(env.get("COMCOCO_LS_BACKOFF") or cls.base_delay),
                max_delay=float(env.get("COMCOCO_LS_BACKOFF_MAX") or cls.max_delay),
            )
        except ValueError as exc:
            raise LabelStudioError(f"bad retry setting (COMCOCO_LS_RETRIES / COMCOCO_LS_BACKOFF*): {exc}") from None


class ServerUnavailable(LabelStudioError):
    """The server did not answer (or answered 502/503/504) on every try."""


class NotFound(LabelStudioError):
    """HTTP 404: the project or task does not exist (any more) on the server."""


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an SDK error, if it carries one."""
    code = getattr(exc, "status_code", None)
    return int(code) if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry can cure: no connection, timeouts, a gateway or a restarting server."""
    import httpx

    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    return status_code(exc) in TRANSIENT_STATUS


def _describe(exc: BaseException) -> str:
    code = status_code(exc)
    if code is not None:
        body = getattr(exc, "body", None)
        detail = ""
        if isinstance(body, dict):
            detail = str(body.get("detail") or body.get("validation_errors") or "")
        elif body:
            detail = str(body)
        return f"HTTP {code}" + (f": {detail[:200]}" if detail else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class ReviewServer:
    """A Label Studio server reached through the SDK, every call retried per ``retry``."""

    url: str
    token: str = field(repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    timeout: float = 60.0
    _sdk: Any = field(default=None, repr=False)
    _users: dict[int, str] | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: ServerSettings, retry: RetryPolicy | None = None) -> ReviewServer:
        return cls(settings.url, settings.token, retry or RetryPolicy.from_env())

    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            from label_studio_sdk import LabelStudio

            # The SDK's own retries are off: they would also repeat non-idempotent imports after a
            # 409 or 500; retrying is decided here, on a whitelist (see is_transient).
            self._sdk = LabelStudio(base_url=self.url, api_key=self.token, timeout=self.timeout, max_retries=0)
        return self._sdk

    def _mask(self, text: str) -> str:
        return text.replace(self.token, "<token>") if self.token else text

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried on transient errors; LabelStudioError naming ``what`` otherwise."""
        delays = self.retry.delays()
        for attempt in range(self.retry.attempts):
            try:
                return fn(*args, **kwargs)
            except LabelStudioError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    kind = NotFound if status_code(exc) == 404 else LabelStudioError
                    raise kind(self._mask(f"Label Studio at {self.url}: {what} failed: {_describe(exc)}")) from None
                if attempt + 1 >= self.retry.attempts:
                    raise ServerUnavailable(self._mask(
                        f"Label Studio at {self.url} is unreachable: {what} failed {self.retry.attempts} times "
                        f"(last: {_describe(exc)}); start it with `make label-studio` or check --url"
                    )) from None
                self.sleep(delays[attempt])
        raise AssertionError("unreachable")  # the loop returns or raises

    def _missing_ok(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Like :meth:`call`, but a 404 answers None (the object was deleted on the server)."""
        try:
            return self.call(what, fn, *args, **kwargs)
        except NotFound:
            return None

    # --- users ---------------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        me = self.call("whoami", self.sdk.users.whoami)
        return {"id": int(me.id), "email": str(getattr(me, "email", "") or "")}

    def reviewer_name(self, user: Any) -> str:
        """A stable reviewer id for an annotation's ``completed_by`` (user id or user object): the e-mail."""
        if isinstance(user, dict):
            email = user.get("email")
            if email:
                return str(email)
            user = user.get("id")
        if user is None:
            return "unknown"
        if self._users is None:
            users = self.call("list users", self.sdk.users.list)
            self._users = {int(u.id): str(getattr(u, "email", "") or "") for u in users}
        return self._users.get(int(user)) or f"user:{int(user)}"

    # --- projects --------------------------------------------------------------------------------

    def project_exists(self, project_id: int) -> bool:
        return self._missing_ok(f"get project {project_id}", self.sdk.projects.get, id=project_id) is not None

    def find_projects(self, title: str) -> list[int]:
        """Ids of projects with exactly this title, oldest first."""
        found = self.call("list projects", lambda: list(self.sdk.projects.list()))
        return sorted(int(p.id) for p in found if getattr(p, "title", None) == title)

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        p = self.call(f"create project {title!r}", self.sdk.projects.create,
                      title=title, label_config=label_config, description=description)
        return int(p.id)

    def delete_project(self, project_id: int) -> None:
        self._missing_ok(f"delete project {project_id}", self.sdk.projects.delete, id=project_id)

    def add_local_storage(self, project_id: int, path: str, title: str = "") -> int:
        """Authorise ``/data/local-files/?d=…`` URLs under ``path`` for the project (not synced)."""
        s = self.call(f"register local storage {path}", self.sdk.import_storage.local.create,
                      project=project_id, path=path, use_blob_urls=True, title=title or "comcoco work directory")
        return int(s.id)

    # --- tasks -----------------------------------------------------------------------------------

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]],
                     key: Callable[[Mapping[str, Any]], Hashable] | None = None) -> int:
        """Import tasks in batches, in the given order; returns how many were imported.

        With ``key`` (task data → identity), a retried batch first asks the server which of its tasks
        a timed-out attempt already stored and imports only the others, so a timeout that the server
        survived leaves no duplicate tasks.
        """
        n = 0
        for i in range(0, len(tasks), IMPORT_BATCH):
            batch = [dict(t) for t in tasks[i : i + IMPORT_BATCH]]
            size, attempts = len(batch), 0

            def attempt(batch: list[dict[str, Any]] = batch) -> None:
                nonlocal attempts
                attempts += 1
                if attempts > 1 and key is not None:  # an earlier attempt may have landed
                    stored = {key(t["data"]) for t in self.list_tasks(project_id)}
                    batch[:] = [t for t in batch if key(t["data"]) not in stored]
                    if not batch:
                        return
                self.sdk.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)

            self.call(f"import {size} tasks into project {project_id}", attempt)
            n += size
        return n

    def list_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project as ``{"id", "data"}``, by id."""
        def fetch() -> list[dict[str, Any]]:
            return [{"id": int(t.id), "data": dict(t.data or {})}
                    for t in self.sdk.tasks.list(project=project_id, fields="all")]

        return sorted(self.call(f"list tasks of project {project_id}", fetch), key=lambda t: t["id"])

    def delete_task(self, task_id: int) -> None:
        self._missing_ok(f"delete task {task_id}", self.sdk.tasks.delete, id=task_id)

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with its annotations (Label Studio's JSON export), by task id."""
        def fetch() -> list[dict[str, Any]]:
            chunks = self.sdk.projects.exports.download_sync(id=project_id, export_type="JSON",
                                                             download_all_tasks=True)
            raw = chunks if isinstance(chunks, bytes | str) else b"".join(chunks)
            return json.loads(raw)

        data = self.call(f"export project {project_id}", fetch)
        if not isinstance(data, list):
            raise LabelStudioError(f"Label Studio at {self.url}: export of project {project_id} is not a task list")
        return sorted(data, key=lambda t: int(t["id"]))

    def annotate(self, task_id: int, result: Iterable[Mapping[str, Any]]) -> int:
        """Create an annotation as the token's user (what an annotator's submit does)."""
        a = self.call(f"annotate task {task_id}", self.sdk.annotations.create, id=task_id, result=list(result))
        return int(a.id)

    def update_annotation(self, annotation_id: int, result: Iterable[Mapping[str, Any]]) -> None:
        self.call(f"update annotation {annotation_id}", self.sdk.annotations.update, id=annotation_id,
                  result=list(result))


def client(settings: ServerSettings) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client for the server (imported lazily: it is heavy)."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=settings.url, api_key=settings.token)
