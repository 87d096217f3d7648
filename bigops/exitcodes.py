"""Exit codes of the ``bigops`` command: one table, read by ``bigops.errors`` (each error's code), by
``bigops.cli.main`` (the one place that turns errors into codes) and by the README (printed from it, checked
by ``tests/unit/test_exit_codes.py``).

A training run's own exit codes (what the ranks record in ``telemetry/exit.json``) are another protocol,
``trainer/exitcodes.py``: ``bigops launch`` passes those through when training ends early.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExitCode:
    """One row of the table: the number, its constant's name, and what it tells the caller."""

    code: int
    name: str
    meaning: str


TABLE: tuple[ExitCode, ...] = (
    ExitCode(0, "OK", "success"),
    ExitCode(1, "FAILURE", "a known failure not covered below (a channel or a check failed, SLURM did not answer)"),
    ExitCode(2, "USAGE", "bad configuration or command line (also Typer's own usage errors)"),
    ExitCode(3, "CHECKPOINT", "a checkpoint is missing, partial or unreadable"),
    ExitCode(4, "OUTPUT_EXISTS", "the destination exists; nothing was overwritten"),
    ExitCode(5, "RUN_IN_USE", "the run is training: stop it first (`bigops surgery --stop-run` does)"),
    ExitCode(20, "WATCHDOG_GAVE_UP", "`bigops launch --watch`: restart budget exhausted or no progress; "
                                     "on call was paged"),
    ExitCode(130, "INTERRUPTED", "Ctrl-C (or a prompt aborted)"),
)

OK = 0
FAILURE = 1
USAGE = 2
CHECKPOINT = 3
OUTPUT_EXISTS = 4
RUN_IN_USE = 5
WATCHDOG_GAVE_UP = 20
INTERRUPTED = 130


def markdown_table() -> str:
    """The table as the README prints it (between its ``exit-codes`` markers)."""
    rows = ["| code | name | meaning |", "| --- | --- | --- |"]
    rows += [f"| {row.code} | `{row.name}` | {row.meaning} |" for row in TABLE]
    return "\n".join(rows)


if __name__ == "__main__":  # `python -m bigops.exitcodes`: the README's block, to paste
    print(markdown_table())
