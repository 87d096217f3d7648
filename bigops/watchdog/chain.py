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

from bigops.watchdog.decide import CHAIN_KINDS, ChainExclude, ChainHold, ChainShrink, ChainTopUp, ChainView, \
    NotifyOnly, Policy, Restart, decide
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
    """The pass itself: load the chain, poll SLURM (or back off), classify the jobs that left the queue, then
    keep the queue topped up and the bad hosts out; ``chain.json`` is saved once, at the end."""
    from launcher.slurm import chain as chain_mod
    from launcher.slurm.runner import LocalRunner
    from trainer.rundir import load_run_config

    now = time.time() if now is None else now
    local = LocalRunner()
    if not run.chain_record.exists():
        return [], {}
    chain, findings = _load_chain(chain_mod, local, run)
    if chain is None:
        return findings, {}
    p = _Pass(run, state, now, dry_run, chain, runner or _runner_for(chain), local, chain_mod)
    k = chain.keeper
    if k.get("done"):
        return [], {"chain_done": k["done"], "calls": {}}
    if now < k.get("next_poll", 0):
        return [], {"backoff_until": k["next_poll"], "calls": {}}
    cfg = load_run_config(run, missing_ok=True)
    jobs = p.poll(cfg.watchdog.interval_s)
    if jobs is None:
        return p.findings, {"calls": p.calls()}
    from bigops.watchdog.executor import Executor
    executor = Executor(run, state, runner=p.runner)
    policy = Policy.of(cfg)
    if p.finish_holds(executor):
        p.chain.save(local)
        p.facts.update(calls=p.calls())
        return p.findings, p.facts
    records = chain_mod.job_records(local, str(run.root))
    for job_id, step, code, why, verdict in p.new_ends(records, jobs):
        p.handle_end(job_id, step, code, why, verdict, executor, policy)
    if state.restarts:
        state.save()
    live = [j for j in jobs if j.pending or j.running]
    p.upkeep(live, records, executor, policy, findings_so_far, cfg)
    p.chain.save(local)
    p.facts.update(calls=p.calls(), queued=len(live), done=k.get("done"), held=bool(k.get("held")))
    return p.findings, p.facts


def _ranks_per_node(cfg) -> int:
    from launcher.slurm import render
    from trainer.config import ConfigError
    try:
        return render.ranks_per_node(cfg)
    except ConfigError:
        return 0


def _load_chain(chain_mod, local, run):
    """The run's chain, or ``None`` with the warning to report when ``chain.json`` cannot be read."""
    from trainer.rundir import RELATIVE
    try:
        return chain_mod.Chain.load(local, str(run.root)), []
    except (OSError, ValueError) as exc:
        return None, [Finding("ChainRecordUnreadable", "warning", f"{RELATIVE.chain_record}: {exc}",
                              key="ChainRecordUnreadable")]


def job_outcome(record: dict, now: float) -> tuple[int, str] | None:
    """A finished job's exit code and why, from its record; ``None`` for a job that started under 5 s ago and may
    simply not be in squeue's answer yet. A job with no end record is a crash (scancel, node failure, limit)."""
    code = record.get("code")
    if code is not None:
        return code, record.get("message") or exitcodes.describe(code)
    if now - record.get("start", now) < 5:
        return None
    return exitcodes.FAILED, "left the queue without an end record (scancel, node failure, limit)"


def verdict_of(code: int) -> str:
    """What a job's exit code means for its chain: ``end`` (stop keeping), ``timeout`` (the next job continues),
    ``fatal`` (a restart will not help: hold) or ``crash`` (a restart under the budget)."""
    if code in (exitcodes.FINISHED, exitcodes.STOPPED_ON_REQUEST):
        return "end"
    if code == exitcodes.STOPPED_BY_SIGNAL:
        return "timeout"
    if code in (exitcodes.CONFIG_ERROR, exitcodes.CHECKPOINT_ERROR):
        return "fatal"
    return "crash"


class _Pass:
    """The state of one chain-keeping pass: what it found, what it did (``facts["actions"]``) and which SLURM
    calls it made (counted from the runner's tally at the start)."""

    def __init__(self, run, state, now, dry_run, chain, runner, local, chain_mod):
        self.run, self.state, self.now, self.dry_run = run, state, now, dry_run
        self.chain, self.runner, self.local, self.chain_mod = chain, runner, local, chain_mod
        self.k = chain.keeper
        self.before = dict(runner.calls)
        self.facts: dict = {"actions": []}
        self.findings: list[Finding] = []

    def calls(self) -> dict:
        """SLURM commands run in this pass, by program."""
        return {name: n - self.before.get(name, 0) for name, n in self.runner.calls.items()
                if n - self.before.get(name, 0)}

    def poll(self, interval_s: float):
        """The chain's jobs from one ``squeue``; ``None`` (with a warning and a longer back-off saved) when SLURM
        did not answer."""
        from launcher.slurm.runner import CommandError
        try:
            jobs = self.chain_mod.queue(self.runner, self.chain)
        except CommandError as exc:
            failures = self.k.get("failures", 0) + 1
            delay = min(MAX_BACKOFF_S, interval_s * 2 ** failures)
            self.k.update(failures=failures, next_poll=self.now + delay)
            self.chain.save(self.local)
            self.findings.append(Finding("SlurmUnreachable", "warning",
                                         f"squeue did not answer ({exc}); next try in {delay:.0f} s",
                                         key="SlurmUnreachable", evidence={"failures": failures}))
            return None
        self.k.pop("failures", None)
        self.k.pop("next_poll", None)
        return jobs

    def finish_holds(self, executor) -> bool:
        """Finish a hold or a shrink SLURM refused earlier (or that we died in) from the journal. True when a
        shrink was finished: the queue this pass polled is not the queue any more."""
        from launcher.slurm.runner import CommandError
        shrunk = False
        for intent in executor.journal.in_flight():
            if intent["action"] in ("chain-hold", "chain-shrink") and not self.dry_run:
                try:
                    line = executor.finish(intent)
                except CommandError as exc:
                    self.facts["actions"].append(f"[WARNING] {intent['action']} failed: {exc}")
                    continue
                if intent["action"] == "chain-shrink":
                    shrunk = True
                    self.reload_chain()
                    if line:
                        self.facts["actions"].append(line)
        return shrunk

    def new_ends(self, records: dict, jobs):
        """Jobs that left the queue and were not classified before, oldest first: each is entered in ``seen``
        with its verdict (an ``end`` marks the chain done); crashes and fatal ends are yielded as
        ``(job_id, step, code, why, verdict)`` for :meth:`handle_end`."""
        queued_ids = {j.job_id for j in jobs}
        seen = self.k.setdefault("seen", {})
        for job_id, record in sorted(records.items(), key=lambda kv: kv[1].get("start", 0)):
            if job_id in seen or job_id in queued_ids:
                continue
            outcome = job_outcome(record, self.now)
            if outcome is None:
                continue
            code, why = outcome
            verdict = verdict_of(code)
            if verdict == "end":
                self.k["done"] = exitcodes.describe(code)
            seen[job_id] = {"code": code, "verdict": verdict, "time": self.now}
            if verdict in ("crash", "fatal"):
                yield job_id, record.get("to_step", record.get("from_step")), code, why, verdict

    def handle_end(self, job_id: str, step, code: int, why: str, verdict: str, executor, policy) -> None:
        """A crashed or fatally ended job becomes an incident that :func:`decide` turns into a counted restart
        or a hold, unless the journal shows it was acted on before (``chain.json`` not saved then)."""
        from bigops.watchdog.executor import acted_on, view_for
        kind = "ChainJobCrashed" if verdict == "crash" else "ChainJobFatal"
        key = f"{kind}:{job_id}"
        incident = {"id": hashlib.sha1(key.encode()).hexdigest()[:12], "key": key, "kind": kind, "status": "open",
                    "severity": "critical", "summary": f"job {job_id}: {why}", "step": step, "opened": self.now,
                    "evidence": {"job_id": job_id, "code": code}}
        if acted_on(executor.journal, incident["id"]):
            self.k["seen"][job_id]["counted_before"] = True  # chain.json was not saved then: never counted twice
            return
        view = view_for(self.run, self.state, executor.journal, [incident], self.now)
        evidence = {"job_id": job_id, "code": code}
        for action in decide([incident], view, policy, kinds=CHAIN_KINDS):
            if isinstance(action, Restart):
                executor.execute(action, key=key)
                self.findings.append(Finding("ChainJobFailed", "warning", f"job {job_id} failed: {why}; the next "
                                             f"job resumes from step {step} ({action.policy})",
                                             key=f"ChainJobFailed:{job_id}", step=step, evidence=evidence))
            elif isinstance(action, ChainHold):
                self.hold(action, job_id, step, evidence, executor, key)

    def hold(self, action, job_id, step, evidence, executor, key) -> None:
        """Hold the chain after a job whose failure a restart will not mend (journaled; retried when SLURM
        refuses)."""
        from launcher.slurm.runner import CommandError
        self.findings.append(Finding("ChainStopped", "critical", f"{action.reason}: holding the chain",
                                     key=f"ChainStopped:{job_id}", step=step, evidence=evidence))
        self.k["held"] = True
        if not self.dry_run:
            try:
                executor.execute(action, key=key)
            except CommandError as exc:
                self.facts["actions"].append(f"[WARNING] chain hold failed: {exc}")
        self.facts["actions"].append(f"[CRITICAL] watchdog chain: held {self.chain.name} after job {job_id}")

    def upkeep(self, live, records, executor, policy, findings_so_far, cfg) -> None:
        """The queue's upkeep that :func:`decide` asks for: exclude bad hosts, shrink onto the nodes left (or
        say the jobs cannot run), report an empty chain, top the queue up to ``slurm.min_queued``, and cancel
        what is still pending once the chain is done."""
        from bigops.watchdog.executor import incidents_of, view_for
        k = self.k
        min_queued = cfg.slurm.min_queued
        running = sum(1 for j in live if j.running)
        view = ChainView(live=len(live), held=bool(k.get("held")), done=bool(k.get("done")),
                         exclude=tuple(self.chain.exclude), running=running, nodes=cfg.slurm.nodes,
                         usable_nodes=None if running or k.get("done") else self.usable(cfg),
                         ranks_per_node=_ranks_per_node(cfg))
        upkeep = decide(incidents_of({}, findings_so_far, self.now),
                        view_for(self.run, self.state, executor.journal, [], self.now, chain=view),
                        policy, kinds=CHAIN_KINDS)
        self.exclude([h for a in upkeep if isinstance(a, ChainExclude) for h in a.hosts])
        for note in (a for a in upkeep if isinstance(a, NotifyOnly)):
            self.findings.append(Finding("ChainNodesShort", "critical", note.reason,
                                         key=f"ChainNodesShort:{cfg.slurm.nodes}:{view.usable_nodes}"))
        shrink = next((a for a in upkeep if isinstance(a, ChainShrink)), None)
        if shrink is not None:
            self.shrink(shrink, executor)
            return
        if not k.get("done") and not live:
            last = max(records, key=lambda j: records[j].get("start", 0), default="none")
            self.findings.append(Finding("ChainEmpty", "critical", f"{self.chain.name}: neither running nor queued "
                                         f"(last job {last})", key=f"ChainEmpty:{last}"))
        top_up = next((a for a in upkeep if isinstance(a, ChainTopUp)), None)
        if top_up is not None:
            self.submit(top_up.count, min_queued)
        if k.get("done") and live and not self.dry_run:
            from launcher.slurm.runner import CommandError
            try:
                self.chain_mod.cancel(self.runner, self.chain, pending_only=True)
            except CommandError:
                pass

    def reload_chain(self) -> None:
        """After a shrink the executor rewrote chain.json (options, submitted jobs): take it, with this pass's
        keeper notes, so the save at the end of the pass does not put the old one back."""
        loaded = self.chain_mod.Chain.load(self.local, str(self.run.root))
        if loaded is not None:
            loaded.keeper = self.k
            self.chain = loaded

    def usable(self, cfg) -> int | None:
        """Usable nodes for the chain's next job (``sinfo``), None when SLURM does not answer or lists no node
        at all (a partition it does not know: nothing to conclude from)."""
        from launcher.slurm.runner import CommandError
        try:
            listed, usable = self.chain_mod.usable_nodes(self.runner, self.chain, cfg.slurm.partition)
        except CommandError:
            return None
        return len(usable) if listed else None

    def shrink(self, action: ChainShrink, executor) -> None:
        """Carry out a :class:`ChainShrink` once per (source checkpoint, node count), journaled: cancel the pending
        jobs, reshape, switch run.toml / latest / the script, resubmit. Only where the run directory is (the
        reshape reads and writes it) and once the dead job's ranks are gone."""
        from bigops.checkpoint.surgery import running_ranks
        from bigops.watchdog.journal import intent_id
        from launcher.slurm.runner import CommandError
        from trainer import checkpoint as ckpt
        if self.chain.host:
            self.findings.append(Finding("ChainNodesShort", "critical", f"{action.reason}: not done, the watchdog "
                                         f"runs away from the run directory (over SSH); run it on the cluster",
                                         key=f"ChainNodesShort:{action.nodes}"))
            return
        if running_ranks(self.run) or self.dry_run:
            self.facts["actions"].append(f"{'dry-run: would' if self.dry_run else 'waiting for the ranks to go, then'}"
                                         f" shrink: {action.reason}")
            return
        found = ckpt.find_resumable(self.run, hashes=False) if self.run.latest.exists() else None
        if found is None:
            self.findings.append(Finding("ChainNodesShort", "critical", f"{action.reason}: no checkpoint to "
                                         f"reshape", key=f"ChainNodesShort:{action.nodes}"))
            return
        try:
            line = executor.execute(action, iid=intent_id("chain-shrink", f"{found.tag}:{action.nodes}"),
                                    source_tag=found.tag)
        except CommandError as exc:  # SLURM refused: the journal finishes the rest at a later pass
            self.facts["actions"].append(f"[WARNING] chain shrink interrupted: {exc}")
            line = None
        self.reload_chain()
        if line:
            self.facts["actions"].append(line)

    def exclude(self, bad: list[str]) -> None:
        """Keep the given hosts out of the chain's next jobs."""
        from launcher.slurm.runner import CommandError
        if not bad or self.dry_run:
            return
        try:
            added = self.chain_mod.exclude_nodes(self.runner, self.chain, bad)
        except CommandError as exc:
            added = []
            self.facts["actions"].append(f"[WARNING] chain exclude failed: {exc}")
        if added:
            self.facts["actions"].append(f"[WARNING] watchdog chain: next jobs exclude {', '.join(added)}")

    def submit(self, missing: int, min_queued: int) -> None:
        """Submit ``missing`` jobs to the chain (a warning finding when sbatch fails)."""
        from launcher.slurm.runner import CommandError
        name = self.chain.name
        if self.dry_run:
            self.facts["actions"].append(f"dry-run: would submit {missing} job(s) to {name}")
            return
        try:
            ids = self.chain_mod.submit(self.runner, self.chain, missing)
            self.facts["actions"].append(f"[INFO] watchdog chain: submitted {', '.join(ids)} (keep {min_queued} "
                                         f"queued)")
        except CommandError as exc:
            self.findings.append(Finding("ChainSubmitFailed", "warning", f"sbatch failed: {exc}",
                                         key="ChainSubmitFailed"))
