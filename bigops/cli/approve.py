"""``bigops approve RUN EVENT_ID`` / ``bigops deny RUN EVENT_ID``: decide an action the watchdog asked about
(``watchdog.on_crash / on_loss_spike / on_desync = "ask"``). The page and events.jsonl give the exact
command; ``bigops status RUN`` lists what waits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bigops.cli.options import RunDirArg, existing_run

EventIdArg = Annotated[str, typer.Argument(help="The pending action's id (from the page, events.jsonl or "
                                                "`bigops status`).", show_default=False)]
NoteOpt = Annotated[Optional[str], typer.Option("--note", help="Why (kept in events.jsonl).")]
ByOpt = Annotated[Optional[str], typer.Option("--by", help="Who decides (default: user@host).")]


def _decide(run_dir: Path, event_id: str, decision: str, note: str | None, by: str | None) -> None:
    from bigops.watchdog.approvals import decide

    run = existing_run(run_dir)
    record = decide(run, event_id, decision, by=by, note=note)  # a DecisionError is one line, exit code 2
    verb = "approved" if decision == "approve" else "denied"
    typer.echo(f"{verb} {record['action']} {event_id} ({record['by']}); the watchdog acts on its next pass")


def approve(run_dir: RunDirArg, event_id: EventIdArg, note: NoteOpt = None, by: ByOpt = None) -> None:
    """Approve a pending watchdog action (restart, rollback, layer-norm sync); it is carried out once."""
    _decide(run_dir, event_id, "approve", note, by)


def deny(run_dir: RunDirArg, event_id: EventIdArg, note: NoteOpt = None, by: ByOpt = None) -> None:
    """Deny a pending watchdog action: nothing is done (a denied restart or rollback stops the supervisor,
    the run left as it is)."""
    _decide(run_dir, event_id, "deny", note, by)
