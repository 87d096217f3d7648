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


@contextmanager
def bar_reporter(console: Console, label: str,
                 every_s: float = PLAIN_EVERY_S) -> Iterator[Callable[[str, int | None, int | None, str], None]]:
    """Yield ``report(phase, done, total, detail)``: a bar per phase on a terminal (its counter when it has
    one, ``detail`` such as bytes written and bytes/s beside it); otherwise plain lines as
    :func:`progress_reporter` prints them, plus one at each new phase."""
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn(f"{label} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as bar:
            tasks: dict[str, int] = {}

            def update(phase: str, done: int | None, total: int | None, detail: str) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total, detail=detail)
                bar.update(tasks[phase], completed=done or 0, total=total, detail=detail)

            yield update
        return
    with progress_reporter(console, label, every_s) as plain:
        phases: list[str] = []

        def update_plain(phase: str, done: int | None, total: int | None, detail: str) -> None:
            counted = f" {done}/{total}" if total else ""
            if phase not in phases:
                phases.append(phase)
                console.print(f"{label}: {phase}{counted} {detail}", markup=False)
            plain(f"{phase}{counted} {detail}")

        yield update_plain
