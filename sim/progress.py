"""Progress of long commands on stderr: a bar on a terminal, plain lines elsewhere.

On a terminal, a rich bar (count, total, time left). When stderr is not a terminal (a
log, CI), plain lines instead of silence: one per step of work for a job of up to 20
steps, else one per tenth of the total (and one at least every 10 s), each with the
count, the total, the time so far and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


class Counter:
    """What a job calls once per item done (``counter()``); ``set_total`` when the
    total is known only later; ``describe`` to rename the current stage."""

    def __init__(self, label: str, unit: str, total: int | None, stream: TextIO) -> None:
        self.label, self.unit, self.total = label, unit, total
        self.done = 0
        self.stream = stream
        self.start = time.monotonic()
        self._printed = -1
        self._last = self.start

    def set_total(self, total: int) -> None:
        self.total = total

    def describe(self, label: str) -> None:
        self.label = label

    def __call__(self) -> None:
        self.done += 1
        total = self.total
        tenth = (10 * self.done // total) != (10 * (self.done - 1) // total) if total else True
        every = total is None or total <= 20 or tenth or self.done == total
        if every or time.monotonic() - self._last >= 10.0:
            self._line()

    def _line(self) -> None:
        if self._printed == self.done:
            return
        self._printed = self.done
        self._last = time.monotonic()
        spent = self._last - self.start
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        eta = ""
        if self.total and 0 < self.done < self.total:
            eta = f", about {spent / self.done * (self.total - self.done):.0f} s left"
        print(
            f"{self.label}: {count} {self.unit}, {spent:.0f} s{eta}", file=self.stream, flush=True
        )


class _BarCounter(Counter):
    def __init__(self, bar: Any, job: Any, label: str, unit: str, total: int | None) -> None:
        super().__init__(label, unit, total, sys.stderr)
        self.bar, self.job = bar, job

    def set_total(self, total: int) -> None:
        super().set_total(total)
        self.bar.update(self.job, total=total, shown_total=str(total))

    def describe(self, label: str) -> None:
        super().describe(label)
        self.bar.update(self.job, description=label)

    def __call__(self) -> None:
        self.done += 1
        self.bar.advance(self.job)


@contextmanager
def progress(label: str, unit: str, total: int | None, show: bool) -> Iterator[Counter | None]:
    """A :class:`Counter` (None when ``show`` is false: ``--json``)."""
    if not show:
        yield None
        return
    if not sys.stderr.isatty():
        yield Counter(label, unit, total, sys.stderr)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(),
        TextColumn(f"{{task.completed}}/{{task.fields[shown_total]}} {unit}"),
        TimeRemainingColumn(), transient=True,
    ) as bar:  # fmt: skip
        shown = "?" if total is None else str(total)  # until set_total
        job = bar.add_task(label, total=total, shown_total=shown)
        yield _BarCounter(bar, job, label, unit, total)
