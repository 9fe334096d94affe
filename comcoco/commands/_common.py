"""What every verb shares: the exit codes, and expected failures as one ``error:`` line.

Every verb ends with one of ``EXIT_CODES`` (docs/cli.md prints the same table; a test keeps the two
equal). A failure a user can act on is one line on stderr, ``error: <what>; <what to do>``, never a
traceback; only a bug (exit 1) keeps its traceback.
"""

from __future__ import annotations

import errno
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer import Abort
from typer._click import exceptions as click_errors  # the click that typer vendors and raises
from typer._click.globals import get_current_context
from typer.core import TyperGroup

from comcoco.errors import ComcocoError

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_PARTIAL = 4
EXIT_INTERRUPTED = 130
EXIT_HANGUP = 129
EXIT_TERMINATED = 143

EXIT_CODES: dict[int, tuple[str, str]] = {
    EXIT_OK: ("ok", "everything asked for was done"),
    EXIT_BUG: ("bug", "an unexpected error: the traceback is printed; please report it"),
    EXIT_USAGE: ("usage", "the command line is wrong: unknown verb or option, missing argument, "
                          "a value out of range or of the wrong form; nothing was done"),
    EXIT_REFUSED: ("refused", "the input, a path or the environment was refused: unreadable or malformed "
                              "data, a missing or read-only folder, a file where a folder belongs, a "
                              "release that does not match its manifest, no space left, a server "
                              "that does not answer; nothing was changed, or the change was rolled back"),
    EXIT_PARTIAL: ("partial", "the run finished without making everything: samples failed under "
                              "--strict, a shard crashed, samples were left not_built, nothing is ok, "
                              "or review decisions could not be applied; what was made is kept and "
                              "the message says what to run next"),
    EXIT_HANGUP: ("hangup", "stopped by SIGHUP (its terminal closed); as for 143"),
    EXIT_INTERRUPTED: ("interrupted", "stopped by Ctrl-C; a build resumes when run again"),
    EXIT_TERMINATED: ("terminated", "stopped by SIGTERM (`kill`, a scheduler's time limit): the run unwinds as "
                                    "for Ctrl-C, its temporary Prefect server and workers stop with it, what was "
                                    "finished is kept; a build resumes when run again"),
}


class UserError(ComcocoError):
    """An expected, explainable failure: printed as one line, no traceback (exit 3 unless told)."""

    def __init__(self, message: str, code: int = EXIT_REFUSED):
        super().__init__(message)
        self.code = code


class PartialResult(UserError):
    """The run ended but did not make everything; what was made is kept (exit 4)."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_PARTIAL)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system failure: the path, what went wrong, and what to do."""
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "free some space and run the same command again",
        errno.EDQUOT: "free some space and run the same command again",
        errno.EROFS: "choose a writable location",
        errno.EACCES: "check the permissions or choose another location",
        errno.EPERM: "check the permissions or choose another location",
        errno.ENAMETOOLONG: "use a shorter path",
        errno.ENOTDIR: "a file stands where a folder is expected",
        errno.EEXIST: "a file stands where a folder is expected",
        errno.EISDIR: "a folder stands where a file is expected",
    }.get(exc.errno)
    tail = f" ({hint})" if hint else ""
    return f"{where}: {what}{tail}" if where else f"{what}{tail}"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fail(message: str, code: int) -> None:
    """Print ``error: message`` on stderr and end the verb with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn expected failures into one ``error: …`` line and their exit code.

    ``UserError`` carries its code; every other ``ComcocoError`` (each wing's errors derive from it), the
    operating system's ``OSError`` and the ``kinds`` a verb names are refused input (exit 3). Usage
    errors raised by click pass through to the command line's own handler (exit 2). Anything else is a
    bug and keeps its traceback.
    """
    try:
        yield
    except click_errors.ClickException:
        raise
    except UserError as exc:
        fail(str(exc), exc.code)
    except OSError as exc:
        fail(describe_os_error(exc), EXIT_REFUSED)
    except (ComcocoError, *kinds) as exc:
        fail(str(exc), EXIT_REFUSED)


@contextmanager
def usage_errors() -> Iterator[None]:
    """Checks of option values: a refused value is a usage error (exit 2), like click's own."""
    try:
        yield
    except (ComcocoError, ValueError) as exc:
        raise click_errors.UsageError(str(exc), get_current_context(silent=True)) from None


def fail_with_problems(problems: list[str], summary: str, limit: int = 50) -> None:
    """Print up to ``limit`` problems and a summary line on stderr, then exit 3 (a release failed its check)."""
    for p in problems[:limit]:
        typer.echo(f"  {p}", err=True)
    if len(problems) > limit:
        typer.echo(f"  ... and {len(problems) - limit} more", err=True)
    fail(summary, EXIT_REFUSED)


_STOPPED_BY: list[int] = []


def _stop_like_ctrl_c(signum: int, frame: Any) -> None:
    """A termination signal unwinds the stack as Ctrl-C does, so ``finally`` blocks and ``atexit`` run:
    Prefect stops the temporary API server it started, pools shut down, locks are released. Python's
    default for SIGTERM ends the process on the spot and orphans those children. A second signal of
    the same kind ends the process at once."""
    signal.signal(signum, signal.SIG_DFL)
    _STOPPED_BY.append(signum)
    raise KeyboardInterrupt


def stop_like_ctrl_c_on_termination() -> None:
    """Install :func:`_stop_like_ctrl_c` for SIGTERM and SIGHUP (main thread only; signals a parent
    chose to ignore stay ignored)."""
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _stop_like_ctrl_c)


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _quiet_prefect_api_logs() -> None:
    """After a stop, a task thread of the run may still finish while the interpreter shuts down, when
    Prefect has stopped its log worker and can no longer start one: its last records would print a
    logging error with a traceback. They go to the console only."""
    handlers = sys.modules.get("prefect.logging.handlers")
    if handlers is None:
        return  # this verb ran no flow
    import logging

    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, handlers.APILogHandler):
                logger.removeHandler(handler)


def _interrupted() -> int:
    """One line for an interrupted verb; the exit code a shell gives a process ended by that signal."""
    _quiet_prefect_api_logs()
    signum = _STOPPED_BY[0] if _STOPPED_BY else signal.SIGINT
    typer.echo(f"error: stopped by {signal.Signals(signum).name}; what was finished is kept, "
               "a build resumes when run again", err=True)
    return 128 + signum


class OneLineErrors(TyperGroup):
    """The root command: click's own usage errors become one ``error:`` line and exit 2, like every other
    expected failure, instead of a usage screen."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK  # typer returns an Exit's code here
            if code == EXIT_INTERRUPTED or _STOPPED_BY:  # typer turns KeyboardInterrupt into a silent Exit(130)
                code = _interrupted()
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()
            code = EXIT_USAGE
        except click_errors.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            typer.echo(f"error: {exc.format_message()}{hint}", err=True)
            code = EXIT_USAGE
        except Abort:
            code = _interrupted()
        except click_errors.ClickException as exc:  # e.g. click.FileError: a path click could not open
            typer.echo(f"error: {exc.format_message()}", err=True)
            code = EXIT_REFUSED
        except Exception as exc:
            # Ctrl-C or a signal to the whole process group stops the temporary Prefect server too, and
            # the flow's crash report to it then fails: still an interruption, not a crash to print.
            if not _caused_by_interrupt(exc):
                raise
            code = _interrupted()
        if standalone_mode:
            sys.exit(code)
        return code
