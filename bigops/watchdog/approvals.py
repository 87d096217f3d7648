"""Actions that wait for a person: ``watchdog.on_crash / on_loss_spike / on_desync = "ask"``.

The life of one (``WatchState.pending[id]``, in ``watchdog/state.json``; every step also in events.jsonl):

    pending --(bigops approve RUN ID)--> approved --(the watchdog acts)--> done
            --(bigops deny RUN ID)-----> denied  --(the watchdog records it)--> done

- The watchdog records a ``pending`` event with the id and the exact commands, notifies on call, and keeps
  the run in a safe state while it waits (nothing trains past a spike; a crashed run stays down).
- ``bigops approve`` / ``bigops deny`` write ``watchdog/approvals/<ID>.json`` once: written to a temporary
  file, then hard-linked to its name, which fails if it exists — atomic (a reader sees all of it or
  nothing) and the first decision wins (approve and deny cannot both land). The daemon's state is not
  touched by the CLI, so the two never race on ``state.json``.
- The watchdog claims a decision by saving the entry as approved/denied *before* acting, and done after;
  a restarted watchdog finds a pending entry still pending, and an approved one that is not done yet
  (it died while acting) it completes: every action we ask about is idempotent (write a control file
  again, plan the same rollback again, start the ranks), so it is carried out exactly once in effect.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import tempfile
import time
import uuid
from pathlib import Path

from bigops import exitcodes
from bigops.errors import BigopsError
from bigops.watchdog.state import WatchState
from trainer.rundir import RunDir

ID_PATTERN = re.compile(r"^[0-9a-f]{6,32}$")
DECISIONS = ("approve", "deny")
PAST = {"approve": "approved", "deny": "denied"}
OPEN = ("pending", "approved", "denied")
"""Statuses of an entry that is not finished yet."""


def approvals_dir(run: RunDir) -> Path:
    return run.approvals


def decision_path(run: RunDir, event_id: str) -> Path:
    if not ID_PATTERN.match(event_id):
        raise ValueError(f"{event_id!r} is not an event id (hex, as events.jsonl and the page show it)")
    return approvals_dir(run) / f"{event_id}.json"


def command(run: RunDir, verb: str, event_id: str) -> str:
    return f"bigops {verb} {run.root.resolve()} {event_id}"


# ------------------------------------------------------------------------------------- the watchdog side
def ask(state: WatchState, action: str, reason: str, now: float, key: str | None = None, **details) -> dict:
    """A new pending entry (saved). ``details`` is what carrying it out needs (e.g. the spike's step)."""
    entry = {"id": uuid.uuid4().hex[:12], "action": action, "reason": reason, "key": key, "time": now,
             "status": "pending", "details": details}
    state.pending[entry["id"]] = entry
    state.save()
    return entry


def read_decision(run: RunDir, event_id: str) -> dict | None:
    try:
        data = json.loads(decision_path(run, event_id).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("decision") not in DECISIONS or data.get("id") != event_id:
        return None
    return data


def claim(run: RunDir, state: WatchState, entry_id: str, now: float) -> dict | None:
    """If a decision on a pending entry arrived: mark it approved/denied (saved before anyone acts on it) and
    return the entry; None while it is still pending."""
    entry = state.pending.get(entry_id)
    if entry is None or entry.get("status") != "pending":
        return None
    decision = read_decision(run, entry_id)
    if decision is None:
        return None
    entry.update(status="approved" if decision["decision"] == "approve" else "denied", decided_at=now,
                 decided_by=decision.get("by"), decision_time=decision.get("time"))
    state.save()
    return entry


def finish(state: WatchState, entry_id: str, outcome: str, now: float) -> None:
    entry = state.pending[entry_id]
    entry.update(done=entry["status"], status="done", outcome=outcome, done_at=now)
    state.save()


def open_entries(state: WatchState, actions: tuple[str, ...] | None = None) -> list[dict]:
    """Entries not finished yet (pending, or decided but not carried out), oldest first."""
    return sorted((e for e in state.pending.values() if e.get("status") in OPEN
                   and (actions is None or e.get("action") in actions)), key=lambda e: e.get("time", 0))


# ------------------------------------------------------------------------------------------ the CLI side
class DecisionError(BigopsError, ValueError):
    """A decision that cannot be recorded (no such pending action, already decided): a usage error."""

    exit_code = exitcodes.USAGE


def read_pending(run: RunDir) -> dict[str, dict]:
    """The pending table of ``watchdog/state.json``, read-only (status, approve/deny)."""
    from bigops.watchdog.state import read_section
    pending = read_section(run.watchdog_state, "pending")
    return {k: v for k, v in pending.items() if isinstance(v, dict)} if isinstance(pending, dict) else {}


def waiting(run: RunDir) -> list[dict]:
    """Pending entries with no decision yet, oldest first (``bigops status``)."""
    return sorted((e for k, e in read_pending(run).items() if e.get("status") == "pending"
                   and ID_PATTERN.match(k) and read_decision(run, k) is None), key=lambda e: e.get("time", 0))


def decide(run: RunDir, event_id: str, decision: str, by: str | None = None, note: str | None = None,
           now: float | None = None) -> dict:
    """Record a person's decision on a pending action; DecisionError (one line) when it cannot be."""
    from trainer.rundir import append_event
    if decision not in DECISIONS:
        raise DecisionError(f"decision {decision!r}: use approve or deny")
    try:
        path = decision_path(run, event_id)
    except ValueError as exc:
        raise DecisionError(str(exc)) from None
    entry = read_pending(run).get(event_id)
    if entry is None:
        raise DecisionError(f"{run.root}: no pending action {event_id} (see `bigops status {run.root}`)")
    earlier = read_decision(run, event_id)
    if earlier is not None or entry.get("status") != "pending":
        what = PAST[earlier["decision"]] if earlier else entry.get("status")
        raise DecisionError(f"action {event_id} ({entry.get('action')}) is no longer pending: already {what}")
    now = time.time() if now is None else now
    record = {"id": event_id, "decision": decision, "action": entry.get("action"), "time": now,
              "by": by or f"{_user()}@{socket.gethostname()}"}
    if note:
        record["note"] = note
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{event_id}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if a decision is already there: the first one wins
        except FileExistsError:
            earlier = read_decision(run, event_id)
            raise DecisionError(f"action {event_id} is no longer pending: already "
                                f"{PAST[earlier['decision']] if earlier else 'decided'}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    append_event(run, {"type": "decision", **record})
    return record


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
