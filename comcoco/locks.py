"""One writer at a time: an exclusive lock on a file, refused at once (never waited for) when taken.

A work directory has one writer (a build, a review pull or push) and a release version one builder;
readers that must not see a half-written state (a release reading its work directory) take the lock
shared. The lock is ``fcntl.flock`` on a small file that says who holds it (pid, since when, for
what), so the second comer is refused with "in use by pid N since T (build)". The kernel releases a
flock when its holder dies, even by ``kill -9``, so a crashed run never leaves a stale lock.

The lock file is removed on release only by a holder that can take it exclusively, and a comer checks
after locking that the file it holds is still the one at the path, so removing never lets two in.
Within one process the same thread may take a lock it already holds (a build's review-free steps, a
pull's recompositions); another thread of the process is refused like another process.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from comcoco.errors import ComcocoError


class BusyError(ComcocoError):
    """Another run holds the lock: the message names the pid, since when and what it is doing."""

    def __init__(self, message: str, holder: dict[str, object] | None = None):
        super().__init__(message)
        self.holder = holder or {}


@dataclass
class _Held:
    fd: int
    shared: bool
    thread: int
    depth: int


_HELD: dict[str, _Held] = {}
_REGISTRY = threading.Lock()


def _holder(path: Path) -> dict[str, object]:
    """What the lock file says about its holder (empty while the holder is still writing it)."""
    for _ in range(20):
        try:
            text = path.read_text()
        except OSError:
            return {}
        if text.strip():
            try:
                data = json.loads(text)
                return data if isinstance(data, dict) else {}
            except ValueError:
                return {}
        time.sleep(0.01)
    return {}


def _busy(path: Path, what: str) -> BusyError:
    h = _holder(path)
    who = f"pid {h.get('pid', '?')} since {h.get('since', '?')}" if h else "another process"
    doing = f" ({h['operation']})" if h.get("operation") else ""
    return BusyError(f"{what} is in use by {who}{doing}; wait for it to finish, or stop it "
                     f"(its lock is {path})", h)


def _acquire(path: Path, shared: bool, operation: str, what: str) -> int:
    """Open and lock ``path``; retry when the file was replaced between open and lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(path, what) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed it: lock the new one
    if not shared or os.fstat(fd).st_size == 0:
        note = json.dumps({"pid": os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds"),
                           "operation": operation}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
    return fd


def _release(path: Path, fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # only the last holder removes the file
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass
    except OSError:
        pass  # another shared holder is still in: it removes the file when it leaves
    finally:
        os.close(fd)


@contextmanager
def exclusive(path: str | os.PathLike[str], operation: str, what: str | None = None,
              shared: bool = False) -> Iterator[None]:
    """Hold the lock ``path`` for the block; refuse at once (``BusyError``) when someone else holds it.

    ``operation`` says what the holder does ("build", "review pull", "release 1.2.0"); ``what`` names
    the thing locked in the refusal (default: the lock file's folder). ``shared`` admits other shared
    holders and refuses only an exclusive one (and is refused by one).
    """
    path = Path(path).absolute()
    key = str(path)
    what = what or str(path.parent)
    me = threading.get_ident()
    with _REGISTRY:
        held = _HELD.get(key)
        if held is not None:
            if held.thread != me or (held.shared and not shared):
                raise _busy(path, what)
            held.depth += 1
        else:
            held = _HELD[key] = _Held(_acquire(path, shared, operation, what), shared, me, 1)
    try:
        yield
    finally:
        with _REGISTRY:
            held.depth -= 1
            if held.depth == 0:
                del _HELD[key]
                _release(path, held.fd)


__all__ = ["BusyError", "exclusive"]
