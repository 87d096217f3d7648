"""Incidents: one problem, one identity, one lifecycle — what sits between the detectors and the people.

Detectors say what is wrong *now* (a :class:`~bigops.watchdog.findings.Finding`, every pass while it lasts);
this layer decides whether that is a new problem or the one already known, and when people hear of it:

    finding, key K, no open incident of K ----------------------------------> OPEN        (notify: open)
    OPEN  --(a finding of K more severe than any before)--------------------> OPEN        (notify: escalate)
    OPEN  --(still open remind_every_s after the last notice)---------------> OPEN        (notify: remind)
    OPEN  --(a finding of K with resolved=True: the detector says it is over)-> RESOLVED  (notify: resolve)
    OPEN  --(K not seen for resolve_after_s: the quiet period)---------------> RESOLVED  (notify: resolve)
    RESOLVED, then K seen again ---------------------------------------------> a NEW incident (occurrence n+1)

A finding's ``key`` is its incident identity: the detectors keep it stable while the problem lasts (a
disk, a GPU and an XID code, a launch for a hang, a loss-spike episode of one replay segment), so a sliding
window never makes one problem look like many, and a problem that comes back after it was resolved is
paged again. Escalation is by severity only (warning -> critical); a worse summary of the same severity
is an update, not a page. Critical incidents are never rate-limited away (see the notifier).

The table is plain JSON (``watchdog/state.json["incidents"]``, by incident id). :func:`advance` is pure:
(table, findings, now, policy) -> (new table, notices); the daemon records and sends the notices.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

from bigops.watchdog.findings import SEVERITIES, Finding
from trainer.config import AlertsConfig

OPEN, RESOLVED = "open", "resolved"
NOTICES = ("open", "escalate", "remind", "resolve")
KEEP_RESOLVED = 500
"""Resolved incidents kept in the table (the newest; events.jsonl keeps them all)."""


@dataclass(frozen=True)
class IncidentPolicy:
    resolve_after_s: float = AlertsConfig.resolve_after_s
    """An open incident whose key was not seen for this long is resolved (``alerts.resolve_after_s``)."""
    remind_every_s: float = AlertsConfig.remind_every_s
    """While open, remind at most this often (``alerts.remind_every_s``); 0: never."""
    quiet_by_kind: dict[str, float] = field(default_factory=dict)
    """Per-kind quiet periods that differ from ``resolve_after_s``."""

    def quiet_for(self, kind: str) -> float:
        return self.quiet_by_kind.get(kind, self.resolve_after_s)


@dataclass(frozen=True)
class Notice:
    """One thing people are told: ``type`` in NOTICES, the incident as it is after it, the finding behind it."""

    type: str
    incident: dict
    finding: Finding | None = None

    @property
    def severity(self) -> str:
        return self.incident["severity"]


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def open_by_key(table: dict[str, dict]) -> dict[str, dict]:
    return {i["key"]: i for i in table.values() if i.get("status") == OPEN}


def advance(table: dict[str, dict], findings: Iterable[Finding], now: float,
            policy: IncidentPolicy = IncidentPolicy(), make_id: Callable[[], str] = new_id, full: bool = True
            ) -> tuple[dict[str, dict], list[Notice]]:
    """The incident table after one pass's findings, and what to tell people.

    Findings are taken in order: a spike that was confirmed and recovered between two passes arrives as
    its critical finding then its ``resolved`` one, and is opened (paged) and resolved, in that order.
    ``full``: these are all the findings of a pass (a key not among them is quiet, and reminders are due);
    False: a few findings seen outside a pass, which say nothing of the other incidents."""
    table = copy.deepcopy(table)
    by_key = open_by_key(table)
    notices: list[Notice] = []
    seen: set[str] = set()
    occurrences = _occurrences(table)
    for f in findings:
        incident = by_key.get(f.key)
        if f.resolved:
            if incident is not None:
                _update(incident, f, now)
                notices.append(Notice("resolve", _resolve(incident, now, f.summary), f))
                del by_key[f.key]
            continue
        seen.add(f.key)
        if incident is None:
            occurrences[f.key] = occurrences.get(f.key, 0) + 1
            incident = {"id": make_id(), "key": f.key, "kind": f.kind, "severity": f.severity, "status": OPEN,
                        "occurrence": occurrences[f.key], "opened": now, "last_seen": now, "step": f.step,
                        "summary": f.summary, "evidence": f.evidence, "first_summary": f.summary,
                        "escalated": [], "reminders": 0, "last_notified": now, "actions": []}
            table[incident["id"]] = by_key[f.key] = incident
            notices.append(Notice("open", dict(incident), f))
            continue
        escalates = _rank(f.severity) > _rank(incident["severity"])
        _update(incident, f, now)
        if escalates:
            incident["severity"] = f.severity
            incident["escalated"].append(now)
            incident["last_notified"] = now
            notices.append(Notice("escalate", dict(incident), f))
    for incident in list(by_key.values()) if full else []:
        if incident["key"] in seen:
            continue
        quiet = now - incident["last_seen"]
        if quiet >= policy.quiet_for(incident["kind"]):
            notices.append(Notice("resolve", _resolve(incident, now, f"not seen for {quiet / 60:.0f} min"), None))
    for incident in by_key.values() if full else []:
        if incident["status"] == OPEN and policy.remind_every_s > 0 and _rank(incident["severity"]) > 0 \
                and now - incident["last_notified"] >= policy.remind_every_s:
            incident["reminders"] += 1
            incident["last_notified"] = now
            notices.append(Notice("remind", dict(incident), None))
    return _trim(table), notices


def record_action(table: dict[str, dict], incident_id: str, action: str, outcome: str, now: float) -> None:
    """Note what was done about an incident (its resolve notice says so)."""
    incident = table.get(incident_id)
    if incident is not None:
        incident.setdefault("actions", []).append({"time": now, "action": action, "outcome": outcome})


def describe(notice: Notice) -> str:
    """The one line people read for a notice."""
    i = notice.incident
    head = f"[{i['severity'].upper()}] {i['kind']}"
    if notice.type == "open":
        return f"{head}: {i['summary']}"
    if notice.type == "escalate":
        return f"{head} (escalated): {i['summary']}"
    since = _duration(i.get("resolved_at", i["last_seen"]) - i["opened"]) if notice.type == "resolve" else \
        _duration(i["last_notified"] - i["opened"])
    done = "; ".join(f"{a['action']}: {a['outcome']}" for a in i.get("actions", [])[-3:])
    if notice.type == "remind":
        return f"{head} still open after {since}: {i['summary']}" + (f" (done: {done})" if done else "")
    return f"[RESOLVED] {i['kind']} after {since}: {i.get('resolution')}" + (f"; done: {done}" if done else "")


def _update(incident: dict, f: Finding, now: float) -> None:
    incident.update(last_seen=now, summary=f.summary, evidence=f.evidence, kind=f.kind)
    if f.step is not None:
        incident["last_step"] = f.step


def _resolve(incident: dict, now: float, why: str) -> dict:
    incident.update(status=RESOLVED, resolved_at=now, resolution=why)
    told = dict(incident)
    incident.pop("evidence", None)  # events.jsonl has it; the table keeps resolved incidents small
    return told


def _occurrences(table: dict[str, dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in table.values():
        counts[i["key"]] = max(counts.get(i["key"], 0), int(i.get("occurrence", 1)))
    return counts


def _trim(table: dict[str, dict]) -> dict[str, dict]:
    resolved = sorted((i for i in table.values() if i.get("status") == RESOLVED), key=lambda i: i["resolved_at"])
    for incident in resolved[:-KEEP_RESOLVED] if len(resolved) > KEEP_RESOLVED else []:
        del table[incident["id"]]
    return table


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
