"""Chain keeping for runs launched with ``bigops launch --slurm``: one pass per watchdog tick.

- One ``squeue`` for all the chain's jobs; when SLURM (or the SSH link) does not answer: a warning finding and
  an exponential back-off, never an exception.
- Each job that left the queue is classified once, from its own record (``launcher.slurm.job``) and exit code:
  FINISHED / STOPPED_ON_REQUEST end the chain; STOPPED_BY_SIGNAL (a time-out) continues it; CONFIG_ERROR /
  CHECKPOINT_ERROR hold it (a restart will not help); anything else, or a job that vanished without an end
  record (scancel, node failure, hard limit), is a crash: counted in ``WatchState.restarts`` under the same
  budget and no-progress guard as local restarts — decided by :func:`bigops.watchdog.decide.decide` and
  carried out by the executor (journaled), so a crash is counted exactly once, by job id, even when
  ``chain.json`` (whose ``seen`` table is only a cache) cannot be written; a hold is journaled too, and
  retried at the next pass when SLURM did not answer.
- At least ``slurm.min_queued`` jobs pending or running; "neither running nor queued" is a critical finding.
- Hosts with critical GPU findings are excluded from the chain's next jobs.
"""

from __future__ import annotations

import hashlib
import time

from bigops.watchdog.decide import CHAIN_KINDS, ChainExclude, ChainHold, ChainTopUp, ChainView, Policy, Restart, \
    decide
from bigops.watchdog.findings import Finding
from trainer import exitcodes

MAX_BACKOFF_S = 600.0
BAD_NODE_KINDS = ("GpuMissing", "GpuEccDoubleBit", "GpuXid", "GpuRowRemap")
_runners: dict[str, object] = {}  # one connection per run for the daemon's life


def _runner_for(chain):
    from launcher.remote import runner_for
    key = chain.host or "local"
    if key not in _runners:
        _runners[key] = runner_for(chain.host, chain.key_file, chain.known_hosts)
    return _runners[key]


def keep(run, state, now: float | None = None, dry_run: bool = False, findings_so_far=(),
         runner=None) -> tuple[list[Finding], dict]:
    """One chain-keeping pass. Returns its findings and its facts (``actions``: console lines, ``calls``:
    SLURM commands run in this pass by program). Never raises: a surprise is a warning finding."""
    try:
        return _keep(run, state, now, dry_run, findings_so_far, runner)
    except Exception as exc:  # noqa: BLE001 - chain keeping must not stop detection
        return [Finding("ChainKeeperError", "warning", f"chain keeping failed: {type(exc).__name__}: {exc}",
                        key="ChainKeeperError")], {}


def _keep(run, state, now, dry_run, findings_so_far, runner):
    from launcher.slurm import chain as chain_mod
    from launcher.slurm.runner import CommandError, LocalRunner
    from trainer.rundir import RELATIVE, load_run_config

    now = time.time() if now is None else now
    local = LocalRunner()
    if not run.chain_record.exists():
        return [], {}
    try:
        chain = chain_mod.Chain.load(local, str(run.root))
    except (OSError, ValueError) as exc:
        return [Finding("ChainRecordUnreadable", "warning", f"{RELATIVE.chain_record}: {exc}", key="ChainRecordUnreadable")], {}
    if chain is None:
        return [], {}
    runner = runner or _runner_for(chain)
    before = dict(runner.calls)
    k = chain.keeper
    facts: dict = {"actions": []}
    findings: list[Finding] = []

    def calls():
        return {name: n - before.get(name, 0) for name, n in runner.calls.items() if n - before.get(name, 0)}

    if k.get("done"):
        return [], {"chain_done": k["done"], "calls": {}}
    if now < k.get("next_poll", 0):
        return [], {"backoff_until": k["next_poll"], "calls": {}}
    cfg = load_run_config(run, missing_ok=True)
    w, s = cfg.watchdog, cfg.slurm
    try:
        jobs = chain_mod.queue(runner, chain)
    except CommandError as exc:
        failures = k.get("failures", 0) + 1
        delay = min(MAX_BACKOFF_S, w.interval_s * 2 ** failures)
        k.update(failures=failures, next_poll=now + delay)
        chain.save(local)
        return [Finding("SlurmUnreachable", "warning", f"squeue did not answer ({exc}); next try in {delay:.0f} s",
                        key="SlurmUnreachable", evidence={"failures": failures})], {"calls": calls()}
    k.pop("failures", None)
    k.pop("next_poll", None)
    from bigops.watchdog.executor import Executor, acted_on, incidents_of, view_for
    executor = Executor(run, state, runner=runner)
    policy = Policy.of(cfg)
    for intent in executor.journal.in_flight():  # a hold SLURM refused earlier (or we died in): finish it
        if intent["action"] == "chain-hold" and not dry_run:
            try:
                executor.finish(intent)
            except CommandError as exc:
                facts["actions"].append(f"[WARNING] chain hold failed: {exc}")
    queued_ids = {j.job_id for j in jobs}
    seen = k.setdefault("seen", {})
    records = chain_mod.job_records(local, str(run.root))
    for job_id, record in sorted(records.items(), key=lambda kv: kv[1].get("start", 0)):
        if job_id in seen or job_id in queued_ids:
            continue
        code = record.get("code")
        if code is None:
            if now - record.get("start", now) < 5:  # just started, not yet in squeue's answer? look next time
                continue
            code, why = exitcodes.FAILED, "left the queue without an end record (scancel, node failure, limit)"
        else:
            why = record.get("message") or exitcodes.describe(code)
        step = record.get("to_step", record.get("from_step"))
        if code == exitcodes.FINISHED or code == exitcodes.STOPPED_ON_REQUEST:
            verdict = "end"
            k["done"] = exitcodes.describe(code)
        elif code == exitcodes.STOPPED_BY_SIGNAL:
            verdict = "timeout"
        elif code in (exitcodes.CONFIG_ERROR, exitcodes.CHECKPOINT_ERROR):
            verdict = "fatal"
        else:
            verdict = "crash"
        seen[job_id] = {"code": code, "verdict": verdict, "time": now}
        if verdict not in ("crash", "fatal"):
            continue
        kind = "ChainJobCrashed" if verdict == "crash" else "ChainJobFatal"
        key = f"{kind}:{job_id}"
        incident = {"id": hashlib.sha1(key.encode()).hexdigest()[:12], "key": key, "kind": kind, "status": "open",
                    "severity": "critical", "summary": f"job {job_id}: {why}", "step": step, "opened": now,
                    "evidence": {"job_id": job_id, "code": code}}
        if acted_on(executor.journal, incident["id"]):
            seen[job_id]["counted_before"] = True  # chain.json was not saved then: never counted twice
            continue
        view = view_for(run, state, executor.journal, [incident], now)
        for action in decide([incident], view, policy, kinds=CHAIN_KINDS):
            if isinstance(action, Restart):
                executor.execute(action, key=key)
                findings.append(Finding("ChainJobFailed", "warning", f"job {job_id} failed: {why}; the next job "
                                        f"resumes from step {step} ({action.policy})", key=f"ChainJobFailed:{job_id}",
                                        step=step, evidence={"job_id": job_id, "code": code}))
            elif isinstance(action, ChainHold):
                findings.append(Finding("ChainStopped", "critical", f"{action.reason}: holding the chain",
                                        key=f"ChainStopped:{job_id}", step=step,
                                        evidence={"job_id": job_id, "code": code}))
                k["held"] = True
                if not dry_run:
                    try:
                        executor.execute(action, key=key)
                    except CommandError as exc:
                        facts["actions"].append(f"[WARNING] chain hold failed: {exc}")
                facts["actions"].append(f"[CRITICAL] watchdog chain: held {chain.name} after job {job_id}")
    if state.restarts:
        state.save()
    live = [j for j in jobs if j.pending or j.running]
    view = ChainView(live=len(live), held=bool(k.get("held")), done=bool(k.get("done")), exclude=tuple(chain.exclude))
    upkeep = decide(incidents_of({}, findings_so_far, now), view_for(run, state, executor.journal, [], now, chain=view),
                    policy, kinds=CHAIN_KINDS)
    bad = [h for a in upkeep if isinstance(a, ChainExclude) for h in a.hosts]
    if bad and not dry_run:
        try:
            added = chain_mod.exclude_nodes(runner, chain, bad)
        except CommandError as exc:
            added = []
            facts["actions"].append(f"[WARNING] chain exclude failed: {exc}")
        if added:
            facts["actions"].append(f"[WARNING] watchdog chain: next jobs exclude {', '.join(added)}")
    if not k.get("done") and not live:
        last = max(records, key=lambda j: records[j].get("start", 0), default="none")
        findings.append(Finding("ChainEmpty", "critical", f"{chain.name}: neither running nor queued (last job "
                                f"{last})", key=f"ChainEmpty:{last}"))
    top_up = next((a for a in upkeep if isinstance(a, ChainTopUp)), None)
    if top_up is not None:
        missing = top_up.count
        if dry_run:
            facts["actions"].append(f"dry-run: would submit {missing} job(s) to {chain.name}")
        else:
            try:
                ids = chain_mod.submit(runner, chain, missing)
                facts["actions"].append(f"[INFO] watchdog chain: submitted {', '.join(ids)} (keep {s.min_queued} "
                                        f"queued)")
            except CommandError as exc:
                findings.append(Finding("ChainSubmitFailed", "warning", f"sbatch failed: {exc}",
                                        key="ChainSubmitFailed"))
    if k.get("done") and live and not dry_run:
        try:
            chain_mod.cancel(runner, chain, pending_only=True)
        except CommandError:
            pass
    chain.save(local)
    facts.update(calls=calls(), queued=len(live), done=k.get("done"), held=bool(k.get("held")))
    return findings, facts
