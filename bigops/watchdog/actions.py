"""What the watchdog does besides reporting, recorded the same way everywhere: one ``action`` (or
``pending``) record in events.jsonl, one line for the console, one notification.

The live layer-norm sync request lives here: ``control/sync-layernorm``, written atomically with the
event id and time; the trainer honours it at its next step (``trainer.control``) and removes it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Callable

from bigops.watchdog.approvals import command
from trainer.rundir import RunDir, append_event, atomic_write_text

APPROVAL_RUNBOOK = "runbooks/WatchdogApprovalNeeded.md"


EVENT_WRITE_ERRORS: dict[str, list[str]] = {}
"""Per run folder, why recent events.jsonl appends failed (newest last, a few kept): the next pass reports
it as a finding, then forgets it."""


def safe_append(run: RunDir, event: dict) -> bool:
    """Append to events.jsonl; False (and the reason kept) when that fails — a full disk, a read-only
    filesystem — so that the page that goes with the event still goes out."""
    try:
        append_event(run, event)
        return True
    except OSError as exc:
        errors = EVENT_WRITE_ERRORS.setdefault(str(run.root), [])
        errors.append(f"{exc.strerror or type(exc).__name__}")
        del errors[:-5]
        return False


def action_kind(action: str) -> str:
    return "Watchdog" + "".join(part.title() for part in action.split("-"))


def record_action(run: RunDir, notifier, action: str, reason: str, outcome: str, severity: str = "warning",
                  runbook: str | None = None, now: float | None = None, with_incident: bool = False,
                  **details) -> str:
    """Append an ``action`` event, notify (when the notifier wants this severity); returns the console line.

    ``with_incident``: the action was taken about an incident of the table (``incident=<id>`` in
    ``details``), which was paged when it opened and whose resolve notice lists what was done: the action is
    not paged on its own (one page per problem). Giving up is always a page of its own (a person must take
    over); so is an action about no incident (a damaged checkpoint set aside, a take-over relaunch)."""
    event = {"time": time.time() if now is None else now, "type": "action", "id": uuid.uuid4().hex[:12],
             "action": action, "reason": reason, "outcome": outcome, "severity": severity, **details}
    safe_append(run, event)
    line = f"[{severity.upper()}] watchdog {action}: {reason} -> {outcome}"
    folded = with_incident and action != "give-up"
    if notifier is not None and notifier.wanted(severity) and not folded:
        kind = action_kind(action)
        page = {"kind": kind, "severity": severity, "summary": f"{reason} -> {outcome}", "key": event["id"],
                "runbook": runbook or f"runbooks/{kind}.md", "evidence": details}
        notifier.submit(page, f"[{severity.upper()}] {kind}: {page['summary']}")
    return line


def announce_pending(run: RunDir, notifier, entry: dict, now: float | None = None) -> str:
    """The ``pending`` event and the page that tell on call exactly what to run."""
    approve, deny = command(run, "approve", entry["id"]), command(run, "deny", entry["id"])
    event = {"time": time.time() if now is None else now, "type": "pending", "id": entry["id"],
             "action": entry["action"], "reason": entry["reason"], "key": entry.get("key"), "severity": "critical",
             "approve": approve, "deny": deny, "details": entry.get("details", {}), "runbook": APPROVAL_RUNBOOK}
    safe_append(run, event)
    line = (f"[CRITICAL] WatchdogApprovalNeeded: {entry['action']} waits for a decision ({entry['reason']}); "
            f"approve: {approve}   deny: {deny}")
    if notifier is not None and notifier.wanted("critical"):
        notifier.submit({"kind": "WatchdogApprovalNeeded", "severity": "critical", "key": entry["id"],
                         "summary": f"{entry['action']} waits for a decision: {entry['reason']}. Approve: {approve} "
                                    f"-- deny: {deny}", "runbook": APPROVAL_RUNBOOK,
                         "evidence": {"id": entry["id"], "action": entry["action"], "approve": approve, "deny": deny,
                                      **entry.get("details", {})}}, line)
    return line


def find_event(run: RunDir, needle: str, match: Callable[[dict], bool]) -> dict | None:
    """The first events.jsonl record that contains ``needle`` (a cheap byte test before parsing) and for
    which ``match`` holds; None when there is none (or no log yet). How an action checks, after a restart,
    whether it was already recorded."""
    try:
        with open(run.events, "rb") as handle:
            for raw in handle:
                if needle.encode() in raw:
                    try:
                        event = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and match(event):
                        return event
    except FileNotFoundError:
        pass
    return None


def recorded_action_for(run: RunDir, pending_id: str) -> bool:
    """An ``action`` event carrying out ``pending_id`` is in events.jsonl already (we died after acting)."""
    return find_event(run, pending_id, lambda e: e.get("type") == "action" and e.get("pending_id") == pending_id) \
        is not None


def request_layernorm_sync(run: RunDir, event_id: str, now: float, reason: str, step: int | None = None) -> str:
    """Write ``control/sync-layernorm`` atomically; returns its path relative to the run."""
    path = run.sync_layernorm
    atomic_write_text(path, json.dumps({"id": event_id, "time": now, "reason": reason, "step": step}) + "\n")
    return str(path.relative_to(run.root))
