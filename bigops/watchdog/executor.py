"""The watchdog's one executor: journal the intent, act in idempotent steps, record the outcome.

``Executor.execute(action)`` writes the intent (``bigops.watchdog.journal``) with everything needed to
finish it — a rollback's target, the tags to set aside and the skip range are decided before anything
moves — then runs the action's steps in order, recording each in the intent as it completes, then the
outcome. ``Executor.roll_forward()`` (on start: supervisor, daemon) finishes every intent in flight from
its first step not recorded; every step is idempotent (it checks what is already there), so a process
killed at any instant leaves an action that completes exactly once.

Steps (``STEPS``):

- rollback: skip-range (merged into ``control/skip-ranges``), latest (-> the target), set-aside (later
  checkpoints into ``checkpoints/.rolled-back/<intent>/``), record;
- restart: count (one entry in the restart ledger, ``WatchState.restarts``, by intent id), record; the
  relaunch itself is the supervisor's loop (or the chain's next job);
- kill: kill (the live ranks, or on roll-forward the recorded process group), record;
- shrink: convert (``bigops.checkpoint.reshape``: the source tag decided up front -> ``universal-<tag>`` on the
  target layout; not again if that tag is there on the target), switch (run.toml's layout and ``latest``),
  record; the relaunch on the new world size is the supervisor's;
- sync-layernorm: request (``control/sync-layernorm``; not again if the trainer already did it), record;
- chain-hold: hold (``scontrol hold``, idempotent in SLURM), record;
- prune: remove (``bigops.checkpoint.prune.apply_prune`` over the tags decided up front), record;
- ask: ask (the pending entry), announce (its event and page); give-up: record.

"record" appends one ``action`` event carrying the intent id, and notifies; a roll-forward first looks
for that event, so neither is doubled. ``hook(intent, step, when)`` (``when``: "before" a step, "applied"
after its effect and before it is recorded, "done" before the outcome is) lets the crash-point tests stop
the executor at every instant.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from bigops.checkpoint import rollback as rb
from bigops.watchdog import approvals
from bigops.watchdog.actions import announce_pending, find_event, record_action, request_layernorm_sync
from bigops.watchdog.decide import Ask, ChainHold, ChainShrink, Checkpoint, GiveUp, NotifyOnly, Policy, Restart, \
    Rollback, Shrink, StateView, Sync, decide
from bigops.watchdog.journal import DONE, Journal, intent_id
from trainer.rundir import RELATIVE, RunDir

ACTED = ("kill", "restart", "rollback", "shrink", "sync-layernorm", "ask", "give-up", "chain-hold")
"""The actions whose intent marks an incident as acted on."""


@dataclass(frozen=True)
class Prune:
    """Remove these checkpoints (a person's ``bigops ckpt prune``, decided by ``prune.plan_prune``)."""
    remove: tuple[str, ...]
    reason: str = "prune"
    incident: str | None = None
    name = "prune"


# --------------------------------------------------------------------------------------- incident ids
def incident_id_for(facts: dict, finding) -> str:
    """The incident a finding belongs to: the incident layer's (``facts["incident_of"]``) when it gave one,
    else derived from the finding's key (its incident identity)."""
    of = facts.get("incident_of") if isinstance(facts, dict) else None
    if isinstance(of, dict) and isinstance(of.get(finding.key), str):
        return of[finding.key]
    return hashlib.sha1(finding.key.encode()).hexdigest()[:12]


def incident_of_finding(facts: dict, finding, now: float) -> dict:
    """An incident record for a finding (until the incident layer returns ``facts["incidents"]``)."""
    return {"id": incident_id_for(facts, finding), "key": finding.key, "kind": finding.kind,
            "severity": finding.severity, "status": "resolved" if getattr(finding, "resolved", False) else "open",
            "step": finding.step, "summary": finding.summary, "evidence": finding.evidence, "opened": now}


def incidents_of(facts: dict, findings, now: float) -> list[dict]:
    """The open incidents of a pass: the incident layer's, else one per finding."""
    given = facts.get("incidents") if isinstance(facts, dict) else None
    if isinstance(given, list):
        return [i for i in given if isinstance(i, dict)]
    if isinstance(given, dict):
        return [i for i in given.values() if isinstance(i, dict)]
    return [incident_of_finding(facts, f, now) for f in findings]


def acted_on(journal: Journal, iid: str) -> bool:
    return any(journal.exists(intent_id(name, iid)) for name in ACTED)


# ------------------------------------------------------------------------------------------ the view
def view_for(run: RunDir, state, journal: Journal, incidents: list[dict], now: float, checkpoint_step=None,
             with_checkpoints: bool = False, chain=None) -> StateView:
    """What ``decide`` needs, read from the run: only what the incidents at hand need (cheap every pass)."""
    handled = frozenset(i["id"] for i in incidents if isinstance(i.get("id"), str) and acted_on(journal, i["id"]))
    pending = frozenset(e.get("details", {}).get("incident") for e in approvals.open_entries(state)
                        if e.get("details", {}).get("incident"))
    checkpoints, rollbacks, skips = (), (), ()
    if with_checkpoints:
        checkpoints = tuple(Checkpoint(t, s, c) for t, s, c in rb.checkpoints_with_samples(run))
        rollbacks = tuple(i["params"] for i in journal.intents("rollback"))
        skips = tuple(rb.read_skip_ranges(run.root))
    return StateView(now=now, restarts=tuple(state.restarts), rollbacks=rollbacks, handled=handled,
                     pending=pending, checkpoints=checkpoints, checkpoint_step=checkpoint_step, skip_ranges=skips,
                     chain=chain)


# -------------------------------------------------------------------------------------- the executor
def _params(action, extra: dict) -> dict:
    if isinstance(action, Rollback):
        p = {"spike_step": action.spike_step, "target_tag": action.target_tag, "target_step": action.target_step,
             "aside_tags": list(action.aside_tags),
             "skip_range": list(action.skip_range) if action.skip_range is not None else None,
             "skip_batches": action.skip_batches, "attempt": action.attempt}
    elif isinstance(action, Restart):
        p = {"from_step": action.from_step, "policy": action.policy, "job_id": action.job_id}
    elif isinstance(action, Sync):
        p = {"step": action.step}
    elif isinstance(action, Shrink):
        p = {"target": list(action.target), "lost": action.lost}
    elif isinstance(action, Ask):
        p = {"asked": action.action, "details": dict(action.details)}
    elif isinstance(action, GiveUp):
        p = {"outcome": action.outcome}
    elif isinstance(action, ChainHold):
        p = {"job_id": action.job_id}
    elif isinstance(action, ChainShrink):
        p = {"nodes": action.nodes, "target": list(action.target)}
    elif isinstance(action, Prune):
        p = {"remove": list(action.remove)}
    else:
        p = {}
    return {"reason": action.reason, "time": time.time(), **p, **extra}


class Executor:
    def __init__(self, run: RunDir, state, notifier=None, hook: Callable | None = None, runner=None):
        self.run, self.state, self.notifier, self.runner = run, state, notifier, runner
        self.journal = Journal(run.root)
        self.hook = hook or (lambda intent, step, when: None)
        self.kill_now: Callable[[], None] | None = None
        """The live ranks' killer (the supervisor's), used by a kill step run in this process."""

    # ---------------------------------------------------------------------------------------- public
    def execute(self, action, iid: str | None = None, **extra) -> str | None:
        """Carry ``action`` out once (journaled); the console line, or None when it was done before."""
        if isinstance(action, NotifyOnly):
            return None
        if iid is None and isinstance(action, Prune):  # one prune decision, carried out once
            iid = intent_id("prune", ",".join(sorted(action.remove)))
        intent, fresh = self.journal.begin(action.name, _params(action, extra), incident=action.incident, iid=iid)
        if intent["status"] == DONE:
            return None
        self.hook(intent, "begin", "applied")
        return self._carry_out(intent, resumed=not fresh)

    def roll_forward(self) -> list[str]:
        """Finish every intent in flight (an earlier process died in it): each exactly once."""
        return [line for intent in self.journal.in_flight()
                if (line := self._carry_out(intent, resumed=True)) is not None]

    def finish(self, intent: dict) -> str | None:
        """Finish one intent in flight (e.g. a chain hold SLURM refused at an earlier pass)."""
        return self._carry_out(intent, resumed=True)

    def steps(self, action: str) -> list[str]:
        return [name for name, _ in STEPS[action]]

    def done(self, iid: str) -> dict | None:
        intent = self.journal.get(iid)
        return intent if intent is not None and intent.get("status") == DONE else None

    # -------------------------------------------------------------------------------------- internal
    def _carry_out(self, intent: dict, resumed: bool) -> str | None:
        for name, step in STEPS[intent["action"]]:
            if name in intent["steps"]:
                continue
            self.hook(intent, name, "before")
            result = step(self, intent, resumed) or {}
            self.hook(intent, name, "applied")
            self.journal.step(intent, name, **result)
        self.hook(intent, "done", "before")
        self.journal.done(intent, _outcome(self, intent))
        return intent["steps"].get("record", intent["steps"].get("announce", {})).get("line")

    def recorded(self, iid: str) -> str | None:
        """The console line of the ``action`` event of intent ``iid`` already in events.jsonl, if any."""
        event = find_event(self.run, iid, lambda e: e.get("intent") == iid and e.get("type") in ("action", "pending"))
        if event is None:
            return None
        return f"[{str(event.get('severity', 'warning')).upper()}] watchdog " \
               f"{event.get('action')}: {event.get('reason')} -> {event.get('outcome')}"


def _outcome(ex: Executor, intent: dict) -> str:
    p = intent["params"]
    approved = f" (approved by {p['approved_by']})" if p.get("approved_by") else ""
    action = intent["action"]
    if action == "rollback":
        aside = rb.aside_dir(ex.run, intent["id"]).relative_to(ex.run.root)
        skip = f"; skip samples {p['skip_range'][0]}-{p['skip_range'][1]}" if p.get("skip_range") else ""
        return (f"latest -> {p['target_tag']}; set aside {p['aside_tags'] or 'nothing'} in {aside}{skip}" + (
                f" (recurrence {p['attempt']}: "
                f"{p['skip_batches']} batches)" if p.get("attempt", 1) > 1 else "") + approved)
    if action == "restart":
        if p.get("job_id"):
            return f"job {p['job_id']} counted as a restart; the next job resumes from step {p['from_step']}"
        if p.get("approved_by"):
            return f"approved by {p['approved_by']}: relaunching from checkpoint step {p['from_step']}"
        return f"relaunching from checkpoint step {p['from_step']}" + (f" ({p['policy']})" if p.get("policy") else "")
    if action == "kill":
        return p.get("outcome", "killed the ranks")
    if action in ("shrink", "chain-shrink"):
        return _shrink_outcome(intent) + approved
    if action == "sync-layernorm":
        done = intent["steps"].get("request", {})
        if done.get("skipped"):
            return done["skipped"]
        prefix = f"approved by {p['approved_by']}: requested a live sync, wrote" if p.get("approved_by") else \
            "requested a live sync: wrote"
        return f"{prefix} {done.get('path', str(RELATIVE.sync_layernorm))}"
    if action == "give-up":
        return p["outcome"]
    if action == "chain-hold":
        return f"held the chain's pending jobs {intent['steps'].get('hold', {}).get('held', [])}"
    if action == "prune":
        return f"removed {intent['steps'].get('remove', {}).get('removed', [])}"
    if action == "ask":
        return f"waiting for a decision: {intent['steps'].get('ask', {}).get('pending_id')}"
    return "done"


def _shrink_outcome(intent: dict) -> str:
    """What a (chain-)shrink did: the new tag and layout, and for a chain the jobs it replaced."""
    p, steps = intent["params"], intent["steps"]
    tp, pp, dp = p["target"]
    done = steps.get("convert", {})
    chain = intent["action"] == "chain-shrink"
    if done.get("failed"):
        return f"could not reshape {p.get('source_tag')}: {done['failed']}" + ("; no job is queued" if chain else "")
    head = f"reshaped {p.get('source_tag')} into {done.get('new_tag')} (TP{tp} x PP{pp} x DP{dp})"
    if not chain:
        return f"{head}; run.toml and latest follow it: the restart runs {tp * pp * dp} rank(s)"
    return (f"{head}; run.toml, latest and the job script follow it; cancelled "
            f"{steps.get('cancel', {}).get('cancelled', [])}, submitted {steps.get('resubmit', {}).get('submitted', [])}"
            f" on {p['nodes']} node(s)")


# ------------------------------------------------------------------------------------------- steps
def _record(ex: Executor, intent: dict, resumed: bool) -> dict:
    if resumed:
        line = ex.recorded(intent["id"])
        if line is not None:
            return {"line": line}
    p = intent["params"]
    action = intent["action"]
    severity = p.get("severity") or {"rollback": "critical", "shrink": "critical", "chain-shrink": "critical",
                                     "give-up": "critical", "chain-hold": "critical",
                                     "kill": p.get("severity", "critical"), "prune": "info"}.get(action, "warning")
    runbook = "runbooks/RestartBudgetExhausted.md" if action == "give-up" else None
    details = {k: p[k] for k in ("pending_id", "key", "checkpoint_step", "job_id", "unusable") if p.get(k) is not None}
    if action == "rollback":
        details["target"] = p["target_tag"]
        if p.get("skip_range"):
            details.update(skip_range=list(p["skip_range"]), spike_step=p["spike_step"])
    elif action == "restart":
        details["checkpoint_step"] = p["from_step"]
    elif action == "sync-layernorm":
        details["request_id"] = p.get("request_id", intent["id"])
    table = getattr(ex.state, "incidents", None)
    known = bool(intent.get("incident")) and isinstance(table, dict) and intent["incident"] in table
    line = record_action(ex.run, ex.notifier, action, p["reason"], _outcome(ex, intent), severity, runbook=runbook,
                         intent=intent["id"], incident=intent.get("incident"), with_incident=known, **details)
    if known:
        from bigops.watchdog import incidents
        incidents.record_action(table, intent["incident"], action, _outcome(ex, intent), time.time())
        try:
            ex.state.save()
        except OSError:
            pass  # the action is recorded in events.jsonl and the journal; the note is for the resolve page
    if p.get("pending_id") and p.get("finish"):
        entry = ex.state.pending.get(p["pending_id"])
        if entry is not None and entry.get("status") != "done":
            approvals.finish(ex.state, p["pending_id"], p["finish"], time.time())
    return {"line": line}


def _skip_range(ex: Executor, intent: dict, resumed: bool) -> dict:
    p = intent["params"]
    if not p.get("skip_range"):
        return {"skipped": "no data to skip"}
    start, end = p["skip_range"]
    added = rb.add_skip_range(ex.run.root, start, end, f"rollback {intent['id']} to {p['target_tag']}")
    return {"added": added}


def _latest(ex: Executor, intent: dict, resumed: bool) -> dict:
    rb.point_latest(ex.run, intent["params"]["target_tag"])
    return {}


def _set_aside(ex: Executor, intent: dict, resumed: bool) -> dict:
    return {"moved": rb.set_aside(ex.run, intent["params"]["aside_tags"], intent["id"])}


def _count(ex: Executor, intent: dict, resumed: bool) -> dict:
    """One ledger entry per restart intent (a second run of this step finds it)."""
    from bigops.watchdog.state import WatchState
    if resumed:  # what is on disk, not what this process remembers
        ex.state.restarts[:] = WatchState.load(ex.state.path).restarts
    if not any(r.get("intent") == intent["id"] for r in ex.state.restarts):
        p = intent["params"]
        entry = {"time": p["time"], "from_step": p["from_step"], "reason": p["reason"], "intent": intent["id"]}
        if p.get("job_id"):
            entry["job_id"] = p["job_id"]
        ex.state.restarts.append(entry)
        ex.state.save()
    return {}


def _kill(ex: Executor, intent: dict, resumed: bool) -> dict:
    if ex.kill_now is not None and not resumed:
        ex.kill_now()
        return {}
    pgid = intent["params"].get("pgid")
    if isinstance(pgid, int) and pgid > 1:
        try:
            if os.getpgid(pgid) == pgid:
                os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return {}


def _shrink_convert(ex: Executor, intent: dict, resumed: bool) -> dict:
    """The universal checkpoint of the source on the target layout, once: a tag derived from the source with the
    target topology already there (an earlier run of this step published it) is reused."""
    from bigops.checkpoint import reshape
    from trainer import checkpoint as ckpt
    p = intent["params"]
    target = reshape.Layout(*p["target"])
    for tag in ckpt.complete_tags(ex.run):
        manifest = ckpt.read_manifest(ex.run.checkpoint(tag))
        if (manifest.get(ckpt.UNIVERSAL) or {}).get("source_tag") == p["source_tag"] \
                and manifest.get("topology") == target.as_dict():
            return {"new_tag": tag, "reused": True}
    from bigops.errors import BigopsError
    try:
        source = reshape.prepare(ex.run.root, target, p["source_tag"])
        new_tag, rng = reshape.write_universal(source, target)
    except BigopsError as exc:  # refused (desynced, ZeRO-0, damaged): nothing written; the supervisor gives up
        return {"failed": str(exc)}
    return {"new_tag": new_tag, "rng": rng}


def _shrink_switch(ex: Executor, intent: dict, resumed: bool) -> dict:
    """run.toml on the target layout (unless it is already) and ``latest`` -> the new tag."""
    from bigops.checkpoint import reshape
    from trainer.rundir import atomic_write_text, load_run_config
    target = reshape.Layout(*intent["params"]["target"])
    if intent["steps"]["convert"].get("failed"):
        return {"skipped": "nothing converted"}
    new_tag = intent["steps"]["convert"]["new_tag"]
    if reshape.layout_of(load_run_config(ex.run)) != target:
        reshape.update_run_toml(ex.run, new_tag, target)
    atomic_write_text(ex.run.latest, new_tag + "\n")
    return {}


def _sync_consumed(ex: Executor, request_id: str) -> bool:
    """The trainer already honoured the request (its own ``action`` event names it)."""
    return find_event(ex.run, request_id, lambda e: e.get("source") == "trainer"
                      and request_id in str(e.get("request", ""))) is not None


def _sync_request(ex: Executor, intent: dict, resumed: bool) -> dict:
    p = intent["params"]
    rid = p.get("request_id", intent["id"])
    if resumed and _sync_consumed(ex, rid):
        return {"skipped": "the trainer had synced already"}
    return {"path": request_layernorm_sync(ex.run, rid, p["time"], p["reason"], p.get("step"))}


def _chain_hold(ex: Executor, intent: dict, resumed: bool) -> dict:
    from launcher.slurm import chain as chain_mod
    from launcher.slurm.runner import LocalRunner
    chain = chain_mod.Chain.load(LocalRunner(), str(ex.run.root))
    if chain is None:
        return {"held": []}
    from bigops.watchdog.chain import _runner_for
    return {"held": chain_mod.hold(ex.runner or _runner_for(chain), chain)}


def _local_chain(ex: Executor):
    from launcher.slurm import chain as chain_mod
    from launcher.slurm.runner import LocalRunner
    return chain_mod, LocalRunner(), chain_mod.Chain.load(LocalRunner(), str(ex.run.root))


def _chain_runner(ex: Executor, chain):
    from bigops.watchdog.chain import _runner_for
    return ex.runner or _runner_for(chain)


def _chain_cancel(ex: Executor, intent: dict, resumed: bool) -> dict:
    """The pending jobs go: they were submitted with the old script and node count."""
    chain_mod, _, chain = _local_chain(ex)
    return {"cancelled": chain_mod.cancel(_chain_runner(ex, chain), chain, pending_only=True) if chain else []}


def _chain_shrink_switch(ex: Executor, intent: dict, resumed: bool) -> dict:
    """run.toml on the target layout and node count (the previous file kept), ``latest`` -> the new tag, the
    job script and the chain's sbatch options rendered anew from it."""
    import shutil

    from bigops.checkpoint import reshape
    from launcher.slurm import render
    from trainer import config as config_mod
    from trainer.rundir import atomic_write_text, load_run_config
    p = intent["params"]
    converted = intent["steps"]["convert"]
    if converted.get("failed"):
        return {"skipped": "nothing converted"}
    cfg = load_run_config(ex.run)
    cfg.slurm.nodes = p["nodes"]
    cfg = reshape.target_config(cfg, reshape.Layout(*p["target"]))
    before = ex.run.run_toml_before(converted["new_tag"])
    if not before.exists():
        shutil.copy2(ex.run.run_toml, before)
    atomic_write_text(ex.run.run_toml, config_mod.dumps_toml(cfg))
    atomic_write_text(ex.run.latest, converted["new_tag"] + "\n")
    _, local, chain = _local_chain(ex)
    local.write_text(chain.script, render.render_script(cfg, chain.run_dir, job_name=chain.name,
                                                        workdir=cfg.slurm.workdir), mode=0o755)
    chain.options = render.sbatch_options(cfg, chain.run_dir, chain.name)
    chain.save(local)
    return {}


def _chain_resubmit(ex: Executor, intent: dict, resumed: bool) -> dict:
    """As many jobs as were cancelled (at least ``slurm.min_queued``), on the new node count: those a crash
    of this step already submitted (pending now) count, so none is submitted twice."""
    from trainer.rundir import load_run_config
    if intent["steps"]["convert"].get("failed"):
        return {"skipped": "nothing converted"}
    chain_mod, local, chain = _local_chain(ex)
    runner = _chain_runner(ex, chain)
    wanted = max(len(intent["steps"]["cancel"].get("cancelled", [])), load_run_config(ex.run).slurm.min_queued)
    already = [j.job_id for j in chain_mod.queue(runner, chain) if j.pending] if resumed else []
    submitted = chain_mod.submit(runner, chain, wanted - len(already)) if wanted > len(already) else []
    chain.save(local)
    return {"submitted": [*already, *submitted]}


def _prune_remove(ex: Executor, intent: dict, resumed: bool) -> dict:
    from bigops.checkpoint.inventory import DELETING, scan
    from bigops.checkpoint.prune import Plan, apply_prune
    wanted = set(intent["params"]["remove"])
    inv = scan(ex.run)
    plan = Plan(remove=[e for e in inv.live() if e.tag in wanted and e.complete],
                leftovers=[e for e in inv.entries if e.state == DELETING])
    # prune's own event goes beside the intent: the record step writes the one event of this prune
    apply_prune(ex.run, plan, events=ex.journal.dir / f"{intent['id']}.prune.jsonl")
    return {"removed": sorted(t for t in wanted if not ex.run.checkpoint(t).exists())}


def _ask(ex: Executor, intent: dict, resumed: bool) -> dict:
    p = intent["params"]
    for entry in ex.state.pending.values():
        if entry.get("details", {}).get("intent") == intent["id"]:
            return {"pending_id": entry["id"]}
    details = {**p["details"], "intent": intent["id"], "incident": intent.get("incident")}
    entry = approvals.ask(ex.state, p["asked"], p["reason"], p["time"], key=p.get("key"), **details)
    return {"pending_id": entry["id"]}


def _announce(ex: Executor, intent: dict, resumed: bool) -> dict:
    entry = ex.state.pending[intent["steps"]["ask"]["pending_id"]]
    if resumed and _pending_announced(ex, entry["id"]):
        return {"line": f"[CRITICAL] WatchdogApprovalNeeded: {entry['action']} waits for a decision "
                        f"({entry['reason']})"}
    return {"line": announce_pending(ex.run, ex.notifier, entry, intent["params"]["time"])}


def _pending_announced(ex: Executor, pending_id: str) -> bool:
    return find_event(ex.run, pending_id, lambda e: e.get("type") == "pending" and e.get("id") == pending_id) \
        is not None


STEPS: dict[str, list[tuple[str, Callable]]] = {
    "rollback": [("skip-range", _skip_range), ("latest", _latest), ("set-aside", _set_aside), ("record", _record)],
    "restart": [("count", _count), ("record", _record)],
    "kill": [("kill", _kill), ("record", _record)],
    "shrink": [("convert", _shrink_convert), ("switch", _shrink_switch), ("record", _record)],
    "sync-layernorm": [("request", _sync_request), ("record", _record)],
    "chain-hold": [("hold", _chain_hold), ("record", _record)],
    "chain-shrink": [("cancel", _chain_cancel), ("convert", _shrink_convert), ("switch", _chain_shrink_switch),
                     ("resubmit", _chain_resubmit), ("record", _record)],
    "prune": [("remove", _prune_remove), ("record", _record)],
    "give-up": [("record", _record)],
    "ask": [("ask", _ask), ("announce", _announce)],
}


# ------------------------------------------------------------------------------------ the daemon's part
_rolled_forward: set[str] = set()


def executor_for(run: RunDir, state, notifier=None) -> Executor:
    """An executor for a daemon pass; its first use in this process rolls forward what is in flight."""
    ex = Executor(run, state, notifier)
    root = str(run.root.resolve())
    if root not in _rolled_forward:
        _rolled_forward.add(root)
        ex.roll_forward()
    return ex


def act_on_incidents(run: RunDir, state, incidents: list[dict], config, now: float, dry_run: bool,
                     notifier) -> list[str]:
    """The daemon's actions in one pass (the live layer-norm sync: ``config.on_desync``), then the decisions
    people made on the ones it asked about. One call per pass; the supervisor acts on the rest."""
    lines = act_on_desync_incidents(run, state, incidents, config.on_desync, now, dry_run, notifier)
    from bigops.watchdog.daemon import carry_out_decisions
    return lines + carry_out_decisions(run, state, now, dry_run, notifier)


def act_on_desync_incidents(run: RunDir, state, incidents: list[dict], mode: str, now: float, dry_run: bool,
                            notifier) -> list[str]:
    candidates = [i for i in incidents if i.get("kind") == "TPDesync" and i.get("status", "open") == "open"]
    if not candidates:
        return []
    ex = executor_for(run, state, notifier)
    view = view_for(run, state, ex.journal, candidates, now)
    lines = []
    for action in decide(candidates, view, Policy(on_desync=mode), kinds=("TPDesync",)):
        key = next((i.get("key") for i in candidates if i.get("id") == action.incident), None)
        if dry_run:
            if isinstance(action, NotifyOnly):
                continue
            verb = "ask for" if isinstance(action, Ask) else "write"
            from trainer.rundir import SYNC_LAYERNORM
            intent, fresh = ex.journal.begin(action.name, {"reason": action.reason, "dry_run": True},
                                             incident=action.incident)
            if fresh:
                ex.journal.done(intent, "dry-run")
                lines.append(record_action(run, notifier, "sync-layernorm", action.reason,
                                           f"dry-run: would {verb} control/{SYNC_LAYERNORM}", now=now, key=key))
            continue
        line = ex.execute(action, key=key, time=now)
        if line:
            lines.append(line)
    return lines
