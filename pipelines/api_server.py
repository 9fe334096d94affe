"""The Prefect API a run reports to: the user's (``PREFECT_API_URL``), else a temporary one owned here.

Prefect starts its own temporary API when none is configured, as a child in the caller's process
group. Ctrl-C in a terminal, or a SIGTERM to the group (a scheduler's time limit), then stops that
server at the same moment as the run, and the run's crash report retries against the dead server for
about two and a half minutes before it gives up with a traceback; a SIGTERM to the run alone, or a
SIGKILL, leaves the server running as an orphan. The server started here is the same application
(``prefect.server.api.server:create_app`` under uvicorn, ephemeral, no UI) but in its own session, so
group signals never reach it; it is stopped when the process exits however it exits, and on Linux the
kernel stops it if the process that started it dies (``PR_SET_PDEATHSIG``), SIGKILL included.
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from comcoco.errors import ComcocoError

F = TypeVar("F", bound=Callable[..., Any])
START_ATTEMPTS = 3


class ApiServerError(ComcocoError, RuntimeError):
    """The temporary Prefect API did not come up."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _start(timeout: float) -> tuple[subprocess.Popen, str]:
    """Start the server on a free port; a port taken between the choice and the bind is retried."""
    from prefect.settings import get_current_settings

    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    last = ""
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.api_server", str(os.getpid()), str(port)],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _healthy(url):
                return proc, url
            time.sleep(0.1)
        if proc.poll() is None:
            _stop(proc)
            raise ApiServerError(f"the temporary Prefect API on 127.0.0.1:{port} did not answer /health within "
                                 f"{timeout:g}s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
        last = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()[-800:]
    raise ApiServerError(f"the temporary Prefect API exited before answering, {START_ATTEMPTS} times; last "
                         f"output: {last or '(none)'}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's session (uvicorn and anything it started), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.stderr:
        proc.stderr.close()


_SERVER: list[tuple[subprocess.Popen, str]] = []  # this process's temporary API, started once


def _temporary_api() -> str:
    """This process's temporary API, started on first use and stopped at exit: after Prefect's own exit
    handlers, which send the last logs and events to it (``atexit`` runs the later-registered first)."""
    if _SERVER and _SERVER[0][0].poll() is None:
        return _SERVER[0][1]
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
    proc, url = _start(timeout)
    _SERVER[:] = [(proc, url)]
    atexit.register(_stop, proc)
    return url


@contextmanager
def prefect_api() -> Iterator[str]:
    """Within the block, flows report to ``PREFECT_API_URL`` if set, else to this process's temporary API
    (also named in the environment, so Dask workers started inside report to it too)."""
    given = os.environ.get("PREFECT_API_URL")
    if given:
        yield given
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = _temporary_api()
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def with_prefect_api(fn: F) -> F:
    """``fn`` run inside :func:`prefect_api` (nested calls reuse the outer API)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with prefect_api():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def _serve(parent: int, port: int) -> None:
    """The server process: die with ``parent`` (Linux), then serve Prefect's API app on ``port``."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above took effect
        sys.exit(0)
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                log_level="error", lifespan="on")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
