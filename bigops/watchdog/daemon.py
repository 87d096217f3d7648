"""The watchdog loop: scan, keep what is new, record it in ``events.jsonl``, remember it.

Actions (notify, restart, roll back, sync) plug in after the record; this loop never lets one of them, or
a malformed record, stop detection. The pass itself owns the live layer-norm sync (``watchdog.on_desync``:
sync, notify, or ask and wait for ``bigops approve``); restarts and rollbacks belong to the supervisor,
which owns the ranks (``bigops.watchdog.supervisor``).
"""

from __future__ import annotations

import time
from typing import Iterable
from pathlib import Path

from bigops.watchdog import approvals, incidents
from bigops.watchdog.actions import record_action, safe_append
from bigops.watchdog.chain import keep as keep_chain
from bigops.watchdog.findings import Finding
from bigops.watchdog.scan import ScanStream, WatchConfig, scan_run
from bigops.watchdog.state import WatchState
from trainer.rundir import SYNC_LAYERNORM, RunDir

RUNBOOKS = "runbooks"


def runbook_for(finding: Finding) -> str:
    return f"{RUNBOOKS}/{finding.kind}.md"


def state_path(run: RunDir) -> Path:
    return run.watchdog_state


def tick(run: RunDir, state: WatchState, now: float | None = None, dry_run: bool = False,
         config: WatchConfig = WatchConfig(), notifier=None, observe: bool = False,
         extra: Iterable[Finding] = ()) -> tuple[list[Finding], dict]:
    """One pass; returns the findings that opened or escalated an incident, and the facts of the pass
    (``facts["actions"]``: one console line per action taken or asked for in this pass;
    ``facts["incidents"]``: the open incidents; ``facts["incident_of"]``: finding key -> incident id).

    Findings go through the incident layer (``bigops.watchdog.incidents``): people hear of an incident when
    it opens, escalates, is resolved, or at most every ``remind_every_s`` while open. Each notice is written
    to events.jsonl, then handed to the notifier (which only enqueues: a slow or dead receiver never delays
    the next pass; a full disk under events.jsonl never stops the page).

    ``extra``: findings the caller saw itself (the supervisor: its ranks crashed) that belong to this pass.
    ``observe``: this process is not the run's writer (``bigops.watchdog.lock``): detect and report facts,
    but write nothing, notify nobody, act on nothing."""
    now = time.time() if now is None else now
    stream = ScanStream.from_json(state.stream, config)
    findings, facts = scan_run(run, now=now, config=config, stream=stream)
    state.stream = stream.to_json()  # saved with the state (never when observing)
    if not observe:
        # SLURM chain keeping (bigops.watchdog.chain): only runs launched with --slurm; it never raises.
        chain_findings, facts["chain"] = keep_chain(run, state, now=now, dry_run=dry_run, findings_so_far=findings)
        findings = [*findings, *chain_findings]
    else:
        facts["chain"] = {}
    findings += [*extra, *_watchdog_health(run, state)]
    new, incident_of, notices = _incident_pass(run, state, findings, now, config.incidents, notifier, dry_run,
                                               observe)
    facts["notices"] = [(n.type, n.incident["id"]) for n in notices]
    facts["incidents"] = [i for i in state.incidents.values() if i["status"] == incidents.OPEN]
    facts["incident_of"] = incident_of
    facts["pending_approvals"] = sum(1 for e in state.pending.values() if e.get("status") == "pending")
    if observe:
        facts["actions"] = []
        return new, facts
    lines = []
    for f in findings:
        if f.kind == "TPDesync" and not f.resolved and incident_of.get(f.key) not in state.handled:
            lines += act_on_desync(run, state, f, config.on_desync, now, dry_run, notifier,
                                   incident=incident_of.get(f.key, f.key))
    lines += carry_out_decisions(run, state, now, dry_run, notifier)
    lines += dump_slurm_hangs(run, state, facts["incidents"], now, dry_run, notifier)
    lines += facts["chain"].get("actions", [])
    facts["actions"] = lines
    facts["pending_approvals"] = sum(1 for e in state.pending.values() if e.get("status") == "pending")
    return new, facts


def report(run: RunDir, state: WatchState, findings: Iterable[Finding], notifier=None, now: float | None = None,
           policy: incidents.IncidentPolicy = incidents.IncidentPolicy(), dry_run: bool = False) -> dict[str, str]:
    """Findings seen outside a pass (the supervisor's own: its ranks exited) through the incident layer:
    opened (paged), escalated or resolved like any other, and saved. Returns finding key -> incident id.
    Other incidents are left as they are (no quiet-period resolution, no reminders: that is a pass's job)."""
    now = time.time() if now is None else now
    _, incident_of, _ = _incident_pass(run, state, list(findings), now, policy, notifier, dry_run, False, full=False)
    return incident_of


SAVE_EVERY_S = 60.0
"""Incidents' last-seen times are saved at least this often (notices and actions are saved at once)."""


def _incident_pass(run: RunDir, state: WatchState, findings: list[Finding], now: float,
                   policy: incidents.IncidentPolicy, notifier, dry_run: bool, observe: bool, full: bool = True
                   ) -> tuple[list[Finding], dict[str, str], list[incidents.Notice]]:
    state.incidents, notices = incidents.advance(state.incidents, findings, now, policy, full=full)
    new = []
    for notice in notices:
        if notice.type in ("open", "escalate") and notice.finding is not None:
            new.append(notice.finding)
        if not observe:
            _tell(run, notice, now, dry_run, notifier)
    incident_of = {i["key"]: i["id"] for i in state.incidents.values() if i["status"] == incidents.OPEN}
    incident_of.update({n.incident["key"]: n.incident["id"] for n in notices if n.type in ("open", "escalate")
                        and n.incident["key"] not in incident_of})
    if not observe and (notices or now - state.extra.get("saved_at", 0) >= SAVE_EVERY_S):
        state.extra["saved_at"] = now
        save_state(state)
    return new, incident_of, notices


STATE_WRITE_ERRORS: dict[str, list[str]] = {}
"""Per state file, why its last saves failed (cleared by the next save that works)."""


def save_state(state: WatchState) -> bool:
    """Save; False (reason kept for the next pass's WatchdogStateUnwritable finding) when the disk refuses."""
    try:
        state.save()
        STATE_WRITE_ERRORS.pop(str(state.path), None)
        return True
    except OSError as exc:
        errors = STATE_WRITE_ERRORS.setdefault(str(state.path), [])
        errors.append(exc.strerror or type(exc).__name__)
        del errors[:-5]
        return False


def _watchdog_health(run: RunDir, state: WatchState) -> list[Finding]:
    """The watchdog's own troubles as findings (so they page like any other problem): it cannot write its
    state (restart budget and incidents would be lost on a restart) or its audit log."""
    from bigops.watchdog.actions import EVENT_WRITE_ERRORS
    out = []
    state_errors = STATE_WRITE_ERRORS.get(str(state.path))
    if state_errors:
        out.append(Finding("WatchdogStateUnwritable", "critical", f"cannot write {state.path.name}: "
                           f"{state_errors[-1]}", key="WatchdogStateUnwritable", evidence={"errors": list(state_errors)}))
    event_errors = EVENT_WRITE_ERRORS.pop(str(run.root), None)
    if event_errors:
        out.append(Finding("WatchdogEventsUnwritable", "critical", f"cannot append to events.jsonl: "
                           f"{event_errors[-1]} (pages still go out)", key="WatchdogEventsUnwritable",
                           evidence={"errors": event_errors}))
    return out


def _tell(run: RunDir, notice: incidents.Notice, now: float, dry_run: bool, notifier) -> None:
    """Record one notice in events.jsonl and send it (the record may fail; the page still goes)."""
    i, f = notice.incident, notice.finding
    notify = notifier is not None and bool(notifier.channels) and notifier.wanted(i["severity"])
    action = ("dry-run: " if dry_run else "") + ("notify " + ", ".join(c.name for c in notifier.channels)
                                                   if notify else "none")
    runbook = f"{RUNBOOKS}/{i['kind']}.md"
    if notice.type in ("open", "escalate"):
        event = {"time": now, "type": "finding", "notice": notice.type, "incident": i["id"], "kind": f.kind,
                 "severity": f.severity, "summary": f.summary, "key": f.key, "step": f.step,
                 "evidence": f.evidence, "runbook": runbook, "action": action}
    else:
        event = {"time": now, "type": "incident", "notice": notice.type, "incident": i["id"], "kind": i["kind"],
                 "severity": i["severity"], "summary": incidents.describe(notice), "key": i["key"],
                 "step": i.get("last_step", i.get("step")), "opened": i["opened"], "runbook": runbook,
                 "actions": i.get("actions", []), "action": action}
        if notice.type == "resolve":
            event["resolution"] = i.get("resolution")
            event["duration_s"] = i.get("resolved_at", now) - i["opened"]
        else:
            event["reminder"] = i["reminders"]
    safe_append(run, event)
    if notify:
        notifier.submit(event, incidents.describe(notice) + f" (runbook: {runbook})")


SYNC_ACTION = "sync-layernorm"


def act_on_desync(run: RunDir, state: WatchState, f: Finding, mode: str, now: float, dry_run: bool,
                  notifier, incident: str | None = None) -> list[str]:
    """Once per incident (``incident``: its id; by incident id, through the executor's journal): request a
    live sync (``sync``), or ask for one (``ask``); ``notify``: the incident's own notification is all."""
    from bigops.watchdog.executor import act_on_desync_incidents, incident_of_finding
    facts = {"incident_of": {f.key: incident}} if incident else {}
    return act_on_desync_incidents(run, state, [incident_of_finding(facts, f, now)], mode, now, dry_run, notifier)


STACKS_HANDLED = "stacks:"
"""``state.handled`` key prefix of a hang incident whose stacks were dumped (once per incident)."""


def dump_slurm_hangs(run: RunDir, state: WatchState, open_incidents: list[dict], now: float, dry_run: bool,
                     notifier) -> list[str]:
    """The evidence of a hang on SLURM, once per open ``TrainingHang`` incident: every rank's Python stacks
    from every node of the running job (``srun --overlap``: ``bigops.watchdog.stacks``), kept in the run
    directory, recorded as a ``stacks`` action naming the ranks whose stack differs. Local runs: their
    supervisor does it before it kills (it owns the ranks)."""
    if not run.chain_record.exists() or dry_run:
        return []
    from bigops.errors import BigopsError
    from bigops.watchdog import stacks
    lines = []
    for inc in open_incidents:
        if inc.get("kind") != "TrainingHang" or STACKS_HANDLED + inc["id"] in state.handled:
            continue
        state.handled[STACKS_HANDLED + inc["id"]] = {"time": now}  # first: a dump that fails is not retried
        state.save()
        try:
            dumps = stacks.dump_slurm_job(run)
        except BigopsError as exc:
            dumps, outcome = None, f"stacks not dumped: {exc}"
        else:
            outcome = "stacks not dumped: no job of the chain is running"
        details = {}
        if dumps:
            folder, groups = stacks.write_dumps(run, dumps, "hang", now)
            outcome = stacks.summary_line(groups, folder.relative_to(run.root))
            details = {"folder": str(folder.relative_to(run.root)), "odd_ranks": stacks.odd_ranks(groups)}
        incidents.record_action(state.incidents, inc["id"], "stacks", outcome, now)
        lines.append(record_action(run, notifier, "stacks", f"hang: {inc.get('summary', '')}", outcome, "warning",
                                   now=now, with_incident=True, incident=inc["id"], key=inc.get("key"), **details))
    return lines


def carry_out_decisions(run: RunDir, state: WatchState, now: float, dry_run: bool, notifier) -> list[str]:
    """Decisions on the pending actions this pass owns (the sync): act once (journaled), record, finish."""
    from bigops.watchdog.decide import Sync
    from bigops.watchdog.executor import executor_for
    from bigops.watchdog.journal import intent_id
    if not dry_run:
        executor_for(run, state, notifier)  # the first pass of this process finishes what an earlier one left
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


def watch_run(run: RunDir, interval: float | None = None, *, once: bool = False, dry_run: bool = False,
              collector=None, on_pass=lambda new, facts: None, say=print) -> None:
    """``bigops watch``: passes over ``run`` every ``interval`` seconds (default: its ``watchdog.interval_s``)
    until Ctrl-C (one pass with ``once``). The process that holds the run's writer lock notifies and acts; one
    that does not observes (detects, exports, prints) and becomes the writer once the holder is gone.
    ``on_pass(new, facts)`` gets each pass's new findings and facts; ``collector`` (a ``RunCollector``) is
    updated from them; ``say`` tells the writer changes."""
    from bigops.watchdog.lock import LockHeld, WriterLock, describe
    from bigops.watchdog.settings import watch_config
    from bigops.watchdog.verifier import Verifier
    from trainer.rundir import load_run_config, pid_alive
    lock = WriterLock(run, "watch")
    try:
        lock.acquire()
    except LockHeld as held:
        say(f"observing: {describe(held.holder) if held.holder else 'another watchdog'} is the writer of "
            f"{run.root} (this watch detects and exports, and neither notifies nor acts)")
    run_config = load_run_config(run, missing_ok=True)
    interval = run_config.watchdog.interval_s if interval is None else interval
    config = watch_config(run_config, alive=pid_alive)  # standalone: nobody else watches the pids
    state, notifier = _as_writer(run) if lock.held else (WatchState.load(state_path(run)), None)
    verifier = Verifier(run, "watchdog")
    while True:
        now = time.time()
        if not lock.held:
            try:
                lock.acquire(now)
                say(f"the writer of {run.root} is gone: this watch is the writer now")
                state, notifier = _as_writer(run)
            except LockHeld:
                pass
        lock.renew(now)
        if lock.held and not once:  # the writer verifies new checkpoints in the background; an observer writes nothing
            verifier.poll()
        new, facts = tick(run, state, now=now, dry_run=dry_run, notifier=notifier, config=config,
                          observe=not lock.held)
        if collector is not None:
            collector.update(facts, facts["findings"], new, now)
        on_pass(new, facts)
        if once:
            if notifier is not None:
                notifier.drain()
            lock.release()
            return
        time.sleep(interval)


def _as_writer(run: RunDir) -> tuple:
    """What the writer works with: the watchdog state as on disk now (another writer may have left it) and a
    notifier that first resends what the previous writer left undelivered."""
    from bigops.notify.notifier import for_run
    from trainer.rundir import load_run_config
    notifier = for_run(run, load_run_config(run, missing_ok=True).alerts)
    notifier.resend_pending()
    return WatchState.load(state_path(run)), notifier
