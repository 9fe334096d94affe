"""Progress of a long step: a bar on a terminal, at most one line per 10 % in a log.

A build, a release export, a SAHM run or a 24,000-task push takes minutes; whoever waits should see
it move. On a terminal (the stream is a TTY) a tqdm bar is drawn and erased when done; otherwise (a log
file, a CI job, a Prefect worker, ``make demo > log``) one line is written at each tenth of the way, so
a log never fills with carriage returns or thousands of updates. Every progress display of comcoco
goes through ``Progress`` (or ``progress_bar``, which returns ``None`` when progress is off).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """Counts ``done`` out of ``total`` units of one step (``with Progress(...) as p: p.advance(n)``)."""

    def __init__(self, what: str, total: int, unit: str = "item", stream: TextIO | None = None,
                 tty: bool | None = None, initial: int = 0, scale: bool = False, enabled: bool = True):
        self.what, self.total, self.unit = what, max(int(total), 0), unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.done = max(int(initial), 0)
        self.scale = scale  # bytes and the like: lines show the count with k/M/G
        self._tenth = min(10, self.done * 10 // self.total) if self.total else 0
        self._bar: Any = None
        self.enabled = enabled  # off: counts, shows nothing
        if self.enabled and self.tty and self.total:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=what, unit=unit, file=self.stream,
                             leave=False, dynamic_ncols=True, unit_scale=scale)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.total or not self.enabled:
            return
        tenth = min(10, self.done * 10 // self.total)
        if tenth > self._tenth:
            self._tenth = tenth
            units = self.unit if self.scale else f"{self.unit}s"
            print(f"{self.what}: {self._count(self.done)}/{self._count(self.total)} {units} ({tenth * 10} %)",
                  file=self.stream, flush=True)

    update = advance  # the name tqdm callers use

    def set_postfix(self, **values: Any) -> None:
        """Extra figures beside the bar (a terminal only: a log gets its 10 % lines and nothing more)."""
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def _count(self, n: int) -> str:
        if not self.scale:
            return str(n)
        for div, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "k")):
            if n >= div:
                return f"{n / div:.1f}{suffix}"
        return str(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or stream-like object without a terminal
        return False


def progress_bar(total: int, what: str, enabled: bool, initial: int = 0, unit: str = "item",
                 scale: bool = False) -> Progress | None:
    """A ``Progress`` on stderr, or ``None`` when ``enabled`` is false."""
    if not enabled:
        return None
    return Progress(what, total, unit=unit, initial=initial, scale=scale)


def track(items: Sequence[T], what: str, enabled: bool, unit: str = "item") -> Iterator[T]:
    """Yield ``items`` in order, advancing a ``Progress`` after each when ``enabled``."""
    if not enabled:
        yield from items
        return
    with Progress(what, len(items), unit=unit) as bar:
        for item in items:
            yield item
            bar.advance()
