"""The watchdog loop: scan, keep what is new, record it in ``events.jsonl``, remember it.

Actions (notify, restart, roll back, sync) plug in after the record; this loop never lets one of them, or
a malformed record, stop detection. The pass itself owns the live layer-norm sync (``watchdog.on_desync``:
sync, notify, or ask and wait for ``bigops approve``); restarts and rollbacks belong to the supervisor,
which owns the ranks (``bigops.watchdog.supervisor``).
"""

from __future__ import annotations

import time
from pathlib import Path

from bigops.watchdog import approvals
from bigops.watchdog.actions import SYNC_LAYERNORM, record_action
from bigops.watchdog.chain import keep as keep_chain
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
    """One pass; returns the findings that are new (and were recorded), and the facts of the pass
    (``facts["actions"]``: one console line per action taken or asked for in this pass).

    New findings are written to events.jsonl, then handed to the notifier (which only enqueues: a slow or
    dead receiver never delays the next pass)."""
    now = time.time() if now is None else now
    findings, facts = scan_run(run, now=now, config=config)
    # SLURM chain keeping (bigops.watchdog.chain): only runs launched with --slurm; it never raises.
    chain_findings, facts["chain"] = keep_chain(run, state, now=now, dry_run=dry_run, findings_so_far=findings)
    findings = [*findings, *chain_findings]
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
    lines = []
    for f in findings:
        if f.kind == "TPDesync" and f.key not in state.handled:
            lines += act_on_desync(run, state, f, config.on_desync, now, dry_run, notifier)
    lines += carry_out_decisions(run, state, now, dry_run, notifier)
    lines += facts["chain"].get("actions", [])
    facts["actions"] = lines
    facts["pending_approvals"] = sum(1 for e in state.pending.values() if e.get("status") == "pending")
    return new, facts


SYNC_ACTION = "sync-layernorm"


def act_on_desync(run: RunDir, state: WatchState, f: Finding, mode: str, now: float, dry_run: bool,
                  notifier, facts: dict | None = None) -> list[str]:
    """Once per incident (by incident id, through the executor's journal): request a live sync (``sync``),
    or ask for one (``ask``); ``notify``: the finding's own notification is all."""
    from bigops.watchdog.executor import act_on_desync_incidents, incident_of_finding
    return act_on_desync_incidents(run, state, [incident_of_finding(facts or {}, f, now)], mode, now, dry_run,
                                   notifier)


def carry_out_decisions(run: RunDir, state: WatchState, now: float, dry_run: bool, notifier) -> list[str]:
    """Decisions on the pending actions this pass owns (the sync): act once (journaled), record, finish."""
    from bigops.watchdog.decide import Sync
    from bigops.watchdog.executor import executor_for
    from bigops.watchdog.journal import intent_id
    lines = []
    for entry in approvals.open_entries(state, (SYNC_ACTION,)):
        if entry["status"] == "pending" and approvals.claim(run, state, entry["id"], now) is None:
            continue
        who = entry.get("decided_by") or "someone"
        if entry["status"] == "denied":
            lines.append(record_action(run, notifier, SYNC_ACTION, entry["reason"], f"denied by {who}: not synced",
                                       now=now, key=entry.get("key"), pending_id=entry["id"]))
            approvals.finish(state, entry["id"], "denied", now)
            continue
        if dry_run:
            lines.append(record_action(run, notifier, SYNC_ACTION, entry["reason"], f"approved by {who}; dry-run: "
                                       f"would write control/{SYNC_LAYERNORM}", now=now, pending_id=entry["id"]))
            approvals.finish(state, entry["id"], "dry-run", now)
            continue
        executor = executor_for(run, state, notifier)
        line = executor.execute(Sync(entry.get("details", {}).get("incident"), entry["reason"],
                                     entry["details"].get("step")), iid=intent_id(SYNC_ACTION, f"pending:{entry['id']}"),
                                request_id=entry["id"], pending_id=entry["id"], approved_by=who,
                                key=entry.get("key"), time=now, finish="synced")
        if line:
            lines.append(line)
        if state.pending[entry["id"]].get("status") != "done":  # done before a restart of ours
            approvals.finish(state, entry["id"], "synced", now)
    return lines


def one_line(f: Finding) -> str:
    return f"[{f.severity.upper()}] {f.kind}: {f.summary} (runbook: {runbook_for(f)})"
