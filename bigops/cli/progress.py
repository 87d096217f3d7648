"""Progress of a long operation, for a person or for a log: a live line on a terminal, and otherwise a plain
line at most every ``PLAIN_EVERY_S`` seconds plus the last one (a CI log or a pipe gets lines, not escapes)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console

PLAIN_EVERY_S = 10.0


@contextmanager
def progress_reporter(console: Console, label: str, every_s: float = PLAIN_EVERY_S) -> Iterator[Callable[[str], None]]:
    """Yield ``report(text)``: the operation's state now, as often as it likes."""
    if console.is_terminal:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn(f"{label} {{task.description}}"), TimeElapsedColumn(),
                      console=console, transient=False) as bar:
            task = bar.add_task("", total=None)
            yield lambda text: bar.update(task, description=text)
        return
    last = {"text": "", "at": time.monotonic()}

    def report(text: str) -> None:
        last["text"] = text
        if time.monotonic() - last["at"] >= every_s:
            console.print(f"{label}: {text}", markup=False)
            last["at"] = time.monotonic()

    yield report
    if last["text"]:
        console.print(f"{label}: {last['text']}", markup=False)
