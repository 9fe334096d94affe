"""Progress of a long push or pull: a bar on a terminal, at most one line per 10 % in a log.

A 24,000-task push takes minutes; the maintainer should see it move. On a terminal (stderr is a TTY)
a tqdm bar is drawn; otherwise (a log file, a CI job, a Prefect worker) one line is written at each
tenth of the way, so a log never fills with progress.
"""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """Counts ``done`` out of ``total`` units of one step (``with Progress(...) as p: p.advance(n)``)."""

    def __init__(self, what: str, total: int, unit: str = "task", stream: TextIO | None = None,
                 tty: bool | None = None):
        self.what, self.total, self.unit = what, max(int(total), 0), unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = 0
        self._tenth = 0
        self._bar = None
        if self.tty and self.total:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=what, unit=unit, file=self.stream, leave=False,
                             dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.total:
            return
        tenth = min(10, self.done * 10 // self.total)
        if tenth > self._tenth:
            self._tenth = tenth
            print(f"{self.what}: {self.done}/{self.total} {self.unit}s ({tenth * 10} %)", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
