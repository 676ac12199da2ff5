"""Progress that tells the truth: counts never cut, an ETA once a rate exists, what a resume skipped.

On a terminal a bar (rich); anywhere else (a log file, a pipe, a scheduler's capture) a plain line
every few seconds, since a bar redrawn in place leaves only its last state there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Column

PLAIN_EVERY = 5.0
"""Seconds between plain progress lines when the output is not a terminal."""


@dataclass
class Meter:
    """Units done out of a total, part of it done before this run; rate and ETA from this run's part."""

    total: int
    done_before: int = 0
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def advance(self, units: int) -> None:
        """``units`` more are done."""
        self.done += units

    @property
    def count(self) -> str:
        """``12/36``, everything done so far included."""
        return f"{self.done_before + self.done}/{self.total}"

    def eta(self) -> str:
        """Time left at this run's rate so far: ``3 min``, ``40 s``; ``—`` before any rate exists."""
        elapsed = time.perf_counter() - self.started
        left = self.total - self.done_before - self.done
        if self.done == 0 or elapsed <= 0:
            return "—"
        seconds = left * elapsed / self.done
        if seconds >= 5400:
            return f"{seconds / 3600:.1f} h"
        return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


@contextmanager
def progress(
    label: str, unit: str, meter: Meter, console: Console | None = None
) -> Iterator[Callable[[int, str], None]]:
    """A progress display for ``meter``; yields ``update(units, status)`` to call as work finishes.

    ``status`` is free text (a rate, a loss) shown after the count; it is what is cut on a narrow
    terminal, never the count or the ETA.
    """
    console = console or Console(stderr=True)
    if meter.done_before:
        console.print(f"{label}: resuming, {meter.count} {unit} already done.", highlight=False)
    if not console.is_terminal:
        last, shown = time.perf_counter(), ""

        def plain(units: int, status: str) -> None:
            nonlocal last, shown
            meter.advance(units)
            now, finished = time.perf_counter(), meter.done_before + meter.done == meter.total
            if meter.count != shown and (now - last >= PLAIN_EVERY or finished):
                last, shown = now, meter.count
                left = "done" if finished else f"about {meter.eta()} left"
                console.print(f"{label}: {meter.count} {unit}, {status}, {left}", highlight=False)

        yield plain
        return
    columns: list[Any] = [
        TextColumn(f"[bold]{label}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=10)),
        TextColumn("{task.fields[count]} " + unit, table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[eta]}", table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[status]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
    ]
    with Progress(*columns, console=console, transient=False, expand=True) as bar:
        task = bar.add_task(label, total=meter.total, completed=meter.done_before, count=meter.count,
                            eta="", status="")  # fmt: skip

        def update(units: int, status: str) -> None:
            meter.advance(units)
            left = meter.eta()
            bar.update(task, completed=meter.done_before + meter.done, count=meter.count, status=status,
                       eta="" if left == "—" else f"{left} left")  # fmt: skip

        yield update
