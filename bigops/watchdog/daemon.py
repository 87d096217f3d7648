"""The watchdog loop: scan, keep what is new, record it in ``events.jsonl``, remember it.

Actions (notify, restart, roll back, sync) plug in after the record; this loop never lets one of them, or
a malformed record, stop detection.
"""

from __future__ import annotations

import time
from pathlib import Path

from bigops.watchdog.findings import Finding
from bigops.watchdog.scan import WatchConfig, scan_run
from bigops.watchdog.state import WatchState
from trainer.rundir import RunDir, append_jsonl

RUNBOOKS = "runbooks"


def runbook_for(finding: Finding) -> str:
    return f"{RUNBOOKS}/{finding.kind}.md"


def state_path(run: RunDir) -> Path:
    return run.root / "watchdog" / "state.json"


def events_path(run: RunDir) -> Path:
    return run.root / "events.jsonl"


def tick(run: RunDir, state: WatchState, now: float | None = None, dry_run: bool = False,
         config: WatchConfig = WatchConfig(), notifier=None) -> tuple[list[Finding], dict]:
    """One pass; returns the findings that are new (and were recorded), and the facts of the pass.

    New findings are written to events.jsonl, then handed to the notifier (which only enqueues: a slow or
    dead receiver never delays the next pass)."""
    now = time.time() if now is None else now
    findings, facts = scan_run(run, now=now, config=config)
    new = [f for f in findings if state.is_new(f)]
    for f in new:
        event = {"time": now, "type": "finding", "kind": f.kind, "severity": f.severity, "summary": f.summary,
                 "key": f.key, "step": f.step, "evidence": f.evidence, "runbook": runbook_for(f)}
        notify = notifier is not None and notifier.channels and notifier.wanted(f.severity)
        event["action"] = ("dry-run: " if dry_run else "") + (
            "notify " + ", ".join(c.name for c in notifier.channels) if notify else "none")
        append_jsonl(events_path(run), event)
        if notify:
            notifier.submit(event, one_line(f))
        state.remember(f, now)
    if new:
        state.save()
    return new, facts


def one_line(f: Finding) -> str:
    return f"[{f.severity.upper()}] {f.kind}: {f.summary} (runbook: {runbook_for(f)})"
