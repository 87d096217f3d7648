"""``events.jsonl``: the run's append-only audit log (every finding, decision, action and its outcome, from
the watchdog, the CLI's checkpoint tools and the trainer's live syncs). One writer function, so that every
record is one line written with a single ``write``."""

from __future__ import annotations

from typing import Any

from trainer.rundir.files import append_jsonl
from trainer.rundir.paths import RunDir


def append_event(run: RunDir, record: dict[str, Any]) -> None:
    """Append ``record`` to the run's events.jsonl (OSError on a full disk or a read-only filesystem: the
    watchdog's ``safe_append`` keeps the reason and pages anyway)."""
    append_jsonl(run.events, record)
