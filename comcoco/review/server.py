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
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from comcoco.review.settings import LabelStudioError, ServerSettings

T = TypeVar("T")

TRANSIENT_STATUS: frozenset[int] = frozenset({502, 503, 504})
IMPORT_BATCH = 500  # tasks per import request (one progress step)
LIST_PAGE = 1000  # tasks per page when listing
EXPORT_CHUNK = 100  # task ids per export request (they travel in the query string)


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


class TokenRefused(LabelStudioError):
    """HTTP 401: the token is wrong, expired or was reset; nothing a retry could cure."""


class HttpError(Exception):
    """A non-2xx answer to a request made without the SDK (paged listings, exports, sign-up)."""

    def __init__(self, status_code: int, body: Any):
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.body = body


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
    _http: Any = field(default=None, repr=False)

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
                    code = status_code(exc)
                    if code == 401:
                        raise TokenRefused(self._mask(
                            f"Label Studio at {self.url} refused the API token ({what}: HTTP 401): it is wrong, "
                            "expired or was reset; set COMCOCO_LS_TOKEN (or --token) to the token of a user on "
                            "that server (web UI: Account & Settings)")) from None
                    kind = NotFound if code == 404 else LabelStudioError
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

    # --- raw HTTP (paged listings, exports by id, sign-up), through the same retries --------------

    @property
    def http(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"},
                                      timeout=self.timeout, follow_redirects=False)
        return self._http

    def get_json(self, path: str, params: Any = None) -> Any:
        """``GET path`` answered with JSON (one try; wrap it in :meth:`call`)."""
        r = self.http.get(path, params=params)
        if r.status_code >= 400:
            raise HttpError(r.status_code, _body(r))
        return r.json()

    # --- users ---------------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        me = self.call("whoami", self.sdk.users.whoami)
        return {"id": int(me.id), "email": str(getattr(me, "email", "") or "")}

    def users(self, refresh: bool = False) -> dict[int, str]:
        """The organization's users: id → e-mail (cached; ``refresh`` asks again)."""
        if self._users is None or refresh:
            users = self.call("list users", self.sdk.users.list)
            self._users = {int(u.id): str(getattr(u, "email", "") or "") for u in users}
        return self._users

    def reviewer_name(self, user: Any) -> str:
        """A stable reviewer id for an annotation's ``completed_by`` (user id or user object): the e-mail,
        ``user:<id>`` for an id the server no longer lists, ``removed`` when the account was deleted."""
        if isinstance(user, dict):
            email = user.get("email")
            if email:
                return str(email)
            user = user.get("id")
        if user is None:
            return "removed"
        return self.users().get(int(user)) or f"user:{int(user)}"

    def invite_path(self) -> str:
        """The organization's sign-up link (path and token), as the web UI's *Invite people* shows it."""
        return str(self.call("get the invitation link", self.get_json, "/api/invite")["invite_url"])

    def sign_up(self, email: str, password: str) -> int:
        """Create an account through the invitation link (what a person does in the sign-up form);
        returns the new user's id. LabelStudioError with the form's complaint when it is refused."""
        import httpx

        invite = self.invite_path()

        def attempt() -> None:
            with httpx.Client(base_url=self.url, timeout=self.timeout, follow_redirects=False) as c:
                form = c.get(invite)
                if form.status_code >= 400:
                    raise HttpError(form.status_code, _body(form))
                r = c.post(invite, data={"email": email, "password": password,
                                         "csrfmiddlewaretoken": c.cookies.get("csrftoken", "")},
                           headers={"Referer": self.url + invite})
                if r.status_code == 302:
                    return
                if r.status_code >= 400:
                    raise HttpError(r.status_code, _body(r))
                raise LabelStudioError(f"Label Studio at {self.url} refused the account {email}: "
                                       f"{_form_errors(r.text) or 'the sign-up form was not accepted'}")

        self.call(f"sign up {email}", attempt)
        found = [uid for uid, e in self.users(refresh=True).items() if e.lower() == email.lower()]
        if not found:
            raise LabelStudioError(f"Label Studio at {self.url}: {email} signed up but is not listed as a user")
        return found[0]

    def delete_user(self, user_id: int) -> None:
        self._missing_ok(f"delete user {user_id}", self.sdk.users.delete, id=user_id)
        self._users = None

    # --- projects --------------------------------------------------------------------------------

    def project_exists(self, project_id: int) -> bool:
        return self._missing_ok(f"get project {project_id}", self.sdk.projects.get, id=project_id) is not None

    def project_counts(self, project_id: int) -> dict[str, int] | None:
        """``tasks`` and ``annotated`` (tasks with a submitted annotation) of a project; None if deleted."""
        p = self._missing_ok(f"get project {project_id}", self.get_json, f"/api/projects/{project_id}")
        if p is None:
            return None
        return {"tasks": int(p.get("task_number") or 0),
                "annotated": int(p.get("num_tasks_with_annotations") or 0)}

    def find_projects(self, title: str) -> list[int]:
        """Ids of projects with exactly this title, oldest first."""
        found = self.call("list projects", lambda: list(self.sdk.projects.list()))
        return sorted(int(p.id) for p in found if getattr(p, "title", None) == title)

    def create_project(self, title: str, label_config: str, description: str = "", instruction: str = "") -> int:
        """A project whose instruction (HTML) is shown before labeling and behind *Instructions*."""
        p = self.call(f"create project {title!r}", self.sdk.projects.create, title=title, label_config=label_config,
                      description=description, expert_instruction=instruction, show_instruction=bool(instruction))
        return int(p.id)

    def update_project(self, project_id: int, **fields: Any) -> None:
        self.call(f"update project {project_id}", self.sdk.projects.update, id=project_id, **fields)

    def project(self, project_id: int) -> dict[str, Any]:
        return dict(self.call(f"get project {project_id}", self.get_json, f"/api/projects/{project_id}"))

    def delete_project(self, project_id: int) -> None:
        self._missing_ok(f"delete project {project_id}", self.sdk.projects.delete, id=project_id)

    def add_local_storage(self, project_id: int, path: str, title: str = "") -> int:
        """Authorise ``/data/local-files/?d=…`` URLs under ``path`` for the project (not synced)."""
        s = self.call(f"register local storage {path}", self.sdk.import_storage.local.create,
                      project=project_id, path=path, use_blob_urls=True, title=title or "comcoco work directory")
        return int(s.id)

    # --- Data Manager tabs -----------------------------------------------------------------------------

    def tabs(self, project_id: int) -> dict[str, int]:
        """The project's Data Manager tabs: title → id."""
        views = self.call(f"list tabs of project {project_id}", self.sdk.views.list, project=project_id)
        return {str((v.data or {}).get("title", "")): int(v.id) for v in views}

    def create_tab(self, project_id: int, title: str, field: str, value: str) -> int:
        """A tab showing only the tasks whose ``data.<field>`` equals ``value``."""
        data = {"title": title, "filters": {"conjunction": "and", "items": [
            {"filter": f"filter:tasks:data.{field}", "operator": "equal", "type": "String", "value": value}]}}
        v = self.call(f"create tab {title!r}", self.sdk.views.create, project=project_id, data=data)
        return int(v.id)

    def delete_tab(self, tab_id: int) -> None:
        self._missing_ok(f"delete tab {tab_id}", self.sdk.views.delete, id=str(tab_id))

    # --- tasks -----------------------------------------------------------------------------------

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]],
                     key: Callable[[Mapping[str, Any]], Hashable] | None = None,
                     progress: Callable[[int], None] | None = None) -> dict[Hashable, int]:
        """Import tasks in batches, in the given order; returns key → task id (index when no ``key``).

        With ``key`` (task data → identity), a retried batch first asks the server which of its tasks
        a timed-out attempt already stored and imports only the others, so a timeout that the server
        survived leaves no duplicate tasks.
        """
        ids: dict[Hashable, int] = {}
        for i in range(0, len(tasks), IMPORT_BATCH):
            batch = [dict(t) for t in tasks[i : i + IMPORT_BATCH]]
            keys = [key(t["data"]) if key is not None else i + n for n, t in enumerate(batch)]
            size, attempts = len(batch), 0

            def attempt(batch: list[dict[str, Any]] = batch, keys: list[Hashable] = keys) -> None:
                nonlocal attempts
                attempts += 1
                if attempts > 1 and key is not None:  # an earlier attempt may have landed
                    stored = {key(t["data"]): t["id"] for t in self.list_tasks(project_id)}
                    ids.update({k: stored[k] for k in keys if k in stored})
                    rest = [(t, k) for t, k in zip(batch, keys, strict=True) if k not in stored]
                    batch[:], keys[:] = [t for t, _ in rest], [k for _, k in rest]
                    if not batch:
                        return
                r = self.sdk.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)
                got = list(getattr(r, "task_ids", None) or [])
                if len(got) == len(keys):
                    ids.update(zip(keys, (int(t) for t in got), strict=True))

            self.call(f"import {size} tasks into project {project_id}", attempt)
            if key is not None and any(k not in ids for k in keys):  # an answer without ids: ask the list
                stored = {key(t["data"]): t["id"] for t in self.list_tasks(project_id)}
                ids.update({k: stored[k] for k in keys if k in stored})
            if progress is not None:
                progress(size)
        return ids

    def list_tasks(self, project_id: int, include: str = "id,data", query: Mapping[str, Any] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """The project's tasks (only the ``include`` fields; filtered by a Data Manager ``query``), by id.

        Paged (``LIST_PAGE`` a request, each retried on its own); ``progress(done, total)`` after each page.
        """
        out: list[dict[str, Any]] = []
        page, total = 1, None
        params: dict[str, Any] = {"project": project_id, "include": include, "fields": "task_only",
                                  "page_size": LIST_PAGE}
        if query:
            params["query"] = json.dumps(query)
        while total is None or len(out) < total:
            answer = self.call(f"list tasks of project {project_id} (page {page})", self.get_json, "/api/tasks",
                               {**params, "page": page})
            tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
            total = int(answer.get("total", len(tasks))) if isinstance(answer, dict) else len(tasks)
            out.extend({**t, "id": int(t["id"]), "data": dict(t.get("data") or {})} for t in tasks)
            if progress is not None:
                progress(len(out), total)
            if len(tasks) < LIST_PAGE:
                break
            page += 1
        return sorted(out, key=lambda t: t["id"])

    def update_task_data(self, task_id: int, data: Mapping[str, Any]) -> bool:
        """Replace a task's data; False when the task no longer exists."""
        return self._missing_ok(f"update task {task_id}", self.sdk.tasks.update, id=str(task_id),
                                data=dict(data)) is not None

    def delete_task(self, task_id: int) -> None:
        self._missing_ok(f"delete task {task_id}", self.sdk.tasks.delete, id=task_id)

    def export(self, project_id: int, task_ids: Sequence[int] | None = None,
               progress: Callable[[int], None] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Tasks with their annotations (Label Studio's JSON export), ``EXPORT_CHUNK`` ids per request,
        yielded chunk by chunk (bounded memory); every task of the project when ``task_ids`` is None."""
        if task_ids is None:
            task_ids = [t["id"] for t in self.list_tasks(project_id, include="id")]
        ids = sorted(int(t) for t in task_ids)
        for i in range(0, len(ids), EXPORT_CHUNK):
            chunk = ids[i : i + EXPORT_CHUNK]
            data = self.call(f"export {len(chunk)} tasks of project {project_id}", self.get_json,
                             f"/api/projects/{project_id}/export",
                             {"exportType": "JSON", "download_all_tasks": "true", "ids[]": chunk})
            if not isinstance(data, list):
                raise LabelStudioError(f"Label Studio at {self.url}: export of project {project_id} is not a task list")
            if progress is not None:
                progress(len(chunk))
            yield sorted(data, key=lambda t: int(t["id"]))

    def annotate(self, task_id: int, result: Iterable[Mapping[str, Any]]) -> int:
        """Create an annotation as the token's user (what an annotator's submit does)."""
        a = self.call(f"annotate task {task_id}", self.sdk.annotations.create, id=task_id, result=list(result))
        return int(a.id)

    def update_annotation(self, annotation_id: int, result: Iterable[Mapping[str, Any]]) -> None:
        self.call(f"update annotation {annotation_id}", self.sdk.annotations.update, id=annotation_id,
                  result=list(result))


def _body(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:300]


def _form_errors(page: str) -> str:
    """The error texts a Django form page shows (``<ul class="errorlist">`` items), joined."""
    import html
    import re

    items = re.findall(r'<ul class="errorlist[^"]*">(.*?)</ul>', page, flags=re.S)
    texts = [html.unescape(re.sub(r"<[^>]+>", " ", t)) for t in items]
    return "; ".join(" ".join(t.split()) for t in texts if t.strip())


def client(settings: ServerSettings) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client for the server (imported lazily: it is heavy)."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=settings.url, api_key=settings.token)
