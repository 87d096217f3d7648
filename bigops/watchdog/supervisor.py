"""Keep a local run alive: start its ranks, watch them, and act when they crash, hang or spike.

The loop (``bigops launch --watch``):

- ranks exit FINISHED / STOPPED_ON_REQUEST / STOPPED_BY_SIGNAL: done, with that code;
- ranks exit with a crash (FAILED), or a hang is detected (the stuck processes are killed first): restart
  from the last good checkpoint, within the restart budget and the no-progress guard, else page and stop;
  with ``watchdog.on_crash = "notify"`` a hung rank is never killed (it is the evidence, for py-spy): the
  incident's page is all;
- a persistent loss spike is confirmed, or the ranks exit NONFINITE_LIMIT: kill, roll back to the last
  checkpoint before the spike (later ones set aside), skip the data that fed it, restart; a spike that
  comes back in the region of its rollback is rolled back once more with a wider skip, then the supervisor
  gives up; no checkpoint before the spike: give up (a stop, nothing restarts);
- configuration or checkpoint errors: page and stop (restarting cannot help);
- GPUs of the run lost (critical GpuMissing/GpuXid/GpuEccDoubleBit/GpuRowRemap) with
  ``watchdog.on_node_lost = "shrink"``: kill, reshape the newest checkpoint to the most data-parallel replicas
  the devices left hold (DeepSpeed's universal checkpoint, a new tag), restart on that world size; ``"ask"``
  waits for a decision first; ``"notify"`` (the default) pages only.

What to do is decided by :func:`bigops.watchdog.decide.decide` (the rules, pure) and carried out by
:class:`bigops.watchdog.executor.Executor`: each action is journaled before it is taken (``watchdog/intents/``)
and a supervisor that starts finishes whatever its predecessor died doing, so each action happens exactly
once; an incident is acted on at most once, by incident id.

With ``watchdog.on_crash = "ask"`` / ``watchdog.on_loss_spike = "ask"`` the restart (after a crash or a
hang) and the rollback wait for a person (``bigops approve RUN ID`` / ``bigops deny RUN ID``), the run kept
safe meanwhile: after a crash nothing runs; a spike's ranks are killed at once (they must not train on past
it); a hung rank is left as it is (for py-spy) until the restart is approved. A denied restart or rollback
stops the supervisor (exit code WATCHDOG_GAVE_UP) with the run as it is; a denied kill of hung ranks leaves
them running. A supervisor started while an earlier one's action is still open waits for it first.

Every decision and its outcome is an ``action`` record in events.jsonl; the restart ledger (every restart,
whoever recorded it) and the pending actions live in ``watchdog/state.json``, the actions taken in the
journal. While it runs, ``watchdog/supervisor.json`` names it: a standalone ``bigops watch`` then leaves dead
ranks to it.

A supervisor that was killed (``supervisor.json`` left behind, naming a dead process) may leave its ranks
running: they are in their own session. The next supervisor never trains beside them: it asks them to save
and stop (SIGTERM: the trainer saves, then exits), waits while their heartbeats move, kills their process
group if they do not go, and records a ``kill`` action; then it records the relaunch as a ``restart``
(counted in the budget, once). It refuses to start while another live supervisor owns the run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from typing import Callable

from bigops.exitcodes import WATCHDOG_GAVE_UP as SUPERVISOR_GAVE_UP
from bigops.errors import ConfigError
from bigops.watchdog import approvals
from bigops.watchdog.actions import record_action
from bigops.watchdog.daemon import one_line, report, state_path, tick
from bigops.watchdog.findings import Finding
from bigops.watchdog.decide import BAD_NODE_KINDS, SUPERVISOR_KINDS, Ask, GiveUp, Kill, NotifyOnly, Policy, Restart, \
    Rollback, Shrink, decide, plan_rollback
from bigops.watchdog.executor import Executor, acted_on, incidents_of, view_for
from bigops.watchdog.journal import intent_id
from bigops.watchdog.settings import watch_config
from bigops.watchdog.verifier import Verifier
from bigops.watchdog.state import WatchState
from trainer import checkpoint as ckpt
from trainer import exitcodes
from trainer.config import RunConfig
from trainer.rundir import RunDir, atomic_write_text, pid_alive, read_heartbeats, read_tail


def kill_group(proc, sig: int = signal.SIGKILL) -> None:
    """Kill the launch's ranks (``launcher.ranks.RankGroup``: their process group, a SIGSTOPped rank included)."""
    from launcher.ranks import signal_launch
    signal_launch(proc, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        signal_launch(proc, signal.SIGKILL)
        proc.wait()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _is_rank_of(pid: int, run: RunDir) -> bool:
    """``pid`` runs ``trainer.train --run-dir`` this run, or is a spare of it (``trainer.spare``: a rank once
    handed over), not a reused pid of something else."""
    args = _cmdline(pid).split(b"\0")
    if not (b"trainer.train" in args or b"trainer.spare" in args) or b"--run-dir" not in args:
        return False
    index = args.index(b"--run-dir") + 1
    if index >= len(args):
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    from pathlib import Path
    return (Path(cwd) / os.fsdecode(args[index])).resolve() == run.root.resolve()


class Stop(Exception):
    """A person denied what the supervisor asked for: stop with this exit code, the run left as it is."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class Supervisor:
    def __init__(self, run: RunDir, cfg: RunConfig, spawn: Callable[[], subprocess.Popen], notifier=None,
                 say: Callable[[str], None] = print, on_tick: Callable[[dict], None] | None = None, spares=None):
        self.run, self.cfg, self.spawn, self.notifier, self.say = run, cfg, spawn, notifier, say
        self.spares = spares
        """The warm spares of the next launch (``launcher.ranks.SparePool``), refilled once a launch trains."""
        self._spares_for: str | None = None
        """The launch whose spares are being warmed (for the launch after it)."""
        self._spares_wanted = 0
        self._spares_shown: tuple | None = None
        self.on_tick = on_tick or (lambda facts: None)
        self.state = WatchState.load(state_path(run))
        self.config = watch_config(cfg)
        self.approved: dict | None = None
        """The approved entry whose restart comes next (no second question, no budget check)."""
        self.executor = Executor(run, self.state, notifier)
        self.policy = Policy.of(cfg)
        self.launch_id: str = uuid.uuid4().hex[:12]
        """This launch of the ranks (a crash or a hang of the next launch is a new incident)."""
        self.next_restart: Restart | GiveUp | None = None
        """What ``decide`` said follows the action ``watch`` took (the relaunch, or giving up)."""
        self.dumped: set[str] = set()
        """Hang incidents whose ranks' stacks were dumped (once each, before anything is killed)."""
        self.notified: set[str] = set()
        """Incidents we only notify about (``on_* = "notify"``): not decided again every pass."""
        self.own: dict[str, Finding] = {}
        """Our own findings (ranks that crashed or stopped on NaN/Inf), by key, kept open until a later
        launch trains again."""
        self.verifier = Verifier(run, "watchdog")
        """Hashes each new ``latest`` once, off the training path, and stamps it (``bigops.watchdog.verifier``)."""

    # -------------------------------------------------------------------------------------------- records
    def action(self, action: str, reason: str, outcome: str, severity: str = "warning", **details) -> None:
        runbook = "runbooks/RestartBudgetExhausted.md" if action == "give-up" else None
        known = details.get("incident") in self.state.incidents
        if known:
            from bigops.watchdog import incidents
            incidents.record_action(self.state.incidents, details["incident"], action, outcome, time.time())
        self.say(record_action(self.run, self.notifier, action, reason, outcome, severity, runbook=runbook,
                               with_incident=known, **details))

    @contextmanager
    def supervising(self):
        """``watchdog/supervisor.json`` names this process while it owns the ranks."""
        path = self.run.supervisor
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                            "started": time.time()}) + "\n")
        try:
            yield
        finally:
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink()
            except (OSError, ValueError, AttributeError):
                pass

    # ------------------------------------------------------------------------------ an earlier supervisor
    def previous_supervisor(self) -> dict | None:
        """What ``supervisor.json`` says of an earlier supervisor that did not exit cleanly (None: none).
        Raises ConfigError while that supervisor is alive on this host (two must never drive one run)."""
        try:
            data = json.loads(self.run.supervisor.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or isinstance(data["pid"], bool):
            return None
        if data.get("host") == socket.gethostname() and data["pid"] != os.getpid() and pid_alive(data["pid"]) \
                and b"bigops" in _cmdline(data["pid"]):
            raise ConfigError(f"another watchdog (pid {data['pid']}) supervises {self.run.root}: stop it first")
        return data

    def kill_ranks(self, proc: subprocess.Popen) -> None:
        """SIGKILL torchrun's process group, then every rank of this run still alive here: torchrun starts each
        worker in its own session, so a rank it cannot stop (a SIGSTOPped one ignores its SIGTERM) would
        otherwise outlive the launch, stopped, holding memory and its port."""
        kill_group(proc)
        idle = self.spares.pids() if self.spares is not None else set()
        left = {pid: group for pid, group in self.orphans().items() if pid not in idle}
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while any(pid_alive(pid) for pid in left) and time.time() < deadline:
            time.sleep(0.05)

    def orphans(self) -> dict[int, int]:
        """{pid: process group} of this run's rank processes still alive on this host (an earlier launch's)."""
        host, found = socket.gethostname(), {}
        pids = [beat.get("pid") for beat in read_heartbeats(self.run).values() if beat.get("host") == host]
        # ranks still starting up have no heartbeat yet, and torchrun none at all: look at this host's processes
        pids += [int(p) for p in os.listdir("/proc") if p.isdigit()] if os.path.isdir("/proc") else []
        for pid in set(p for p in pids if isinstance(p, int) and not isinstance(p, bool)):
            if pid <= 1 or pid == os.getpid() or not pid_alive(pid) or not _is_rank_of(pid, self.run):
                continue
            try:
                found[pid] = os.getpgid(pid)
            except ProcessLookupError:
                continue
        return found

    def take_over(self, previous: dict | None) -> None:
        """Stop the ranks an earlier (killed) supervisor left running, then record the relaunch: once."""
        left = self.orphans()
        if left:
            names = ", ".join(f"pid {pid}" for pid in sorted(left))
            for pid in left:
                try:
                    os.kill(pid, signal.SIGTERM)  # the trainer saves at its next step, then exits
                except ProcessLookupError:
                    pass
            grace = max(1.0, self.cfg.watchdog.hang_min_timeout_s)
            cap = time.time() + max(grace, self.cfg.watchdog.hang_checkpoint_timeout_s)
            deadline, last_beat = time.time() + grace, None
            while any(pid_alive(p) for p in left) and time.time() < min(deadline, cap):
                beat = max((float(b["time"]) for b in read_heartbeats(self.run).values()), default=None)
                if beat != last_beat:  # still making progress (saving): keep waiting
                    deadline, last_beat = time.time() + grace, beat
                time.sleep(0.2)
            alive = [p for p in left if pid_alive(p)]
            if alive:
                for group in {left[p] for p in alive} - {os.getpgid(0)}:
                    try:
                        os.killpg(group, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                outcome = f"they did not stop within {grace:g} s: killed (resuming from checkpoint {self.run.latest_tag()})"
            else:
                outcome = f"asked them to save and stop (SIGTERM): they did; checkpoint {self.run.latest_tag()}"
            who = f"watchdog pid {previous['pid']}" if previous else "an earlier launch"
            self.action("kill", f"ranks of {who} still running without a watchdog ({names})", outcome, "warning")
        if previous is not None:
            # counted in the budget like any restart, once even if two supervisors take over from it in turn
            step = self.checkpoint_step()
            incident = f"takeover:{previous.get('host')}:{previous['pid']}:{previous.get('started')}"
            line = self.executor.execute(Restart(incident, f"the previous watchdog (pid {previous['pid']}) ended "
                                                           f"without a clean exit", step, "taking over"))
            if line:
                self.say(line)

    def set_aside_unusable(self) -> None:
        """Before a launch: when ``latest`` names a damaged checkpoint (truncated, bit-flipped), point ``latest``
        at the newest older one that verifies and move the damaged one to ``checkpoints/.rolled-back/<id>/``
        (kept, never deleted), so that re-saving its step later writes a good copy instead of colliding with
        the bad one. Recorded as a ``rollback`` action.

        Damaged as far as sizes and the verified stamp tell, plus the files changed since the stamp (a small
        checkpoint not stamped yet is hashed whole): ``Verifier.before_launch``, never a second full read of a
        large checkpoint. What is left unvouched, the ranks hash before loading (``trainer.resume_check``)."""
        try:
            found = ckpt.find_resumable(self.run, checker=self.verifier.before_launch) \
                if self.run.latest.exists() else None
        except ckpt.CheckpointError:
            return  # nothing verifies: the ranks exit CHECKPOINT_ERROR with the reason, and we give up
        if found is None or not found.fell_back_from:
            return
        # journaled like a spike's rollback (no data to skip): latest first, then the damaged one set aside
        bad = found.fell_back_from
        incident = f"unusable:{bad}:{found.manifest.get('created')}:{found.tag}"
        self.execute(Rollback(incident, f"checkpoint {bad} is unusable ({found.reason})", -1, found.tag,
                              found.manifest.get("step", -1), (bad,), None, 0), severity="warning", unusable=bad)

    # ------------------------------------------------------------------------------------------- the loop
    def run_until_done(self) -> int:
        """Own the run (its writer lock: a second supervisor refuses, a ``bigops watch`` beside us observes)
        until the ranks are done or we give up."""
        from bigops.watchdog.lock import LockHeld, WriterLock
        self.lock = WriterLock(self.run, "supervisor")
        try:
            self.lock.acquire()
        except LockHeld as held:
            raise ConfigError(f"{held}: stop it first (one watchdog acts on a run; `bigops watch` observes "
                              f"beside a supervisor)") from None
        try:
            if self.notifier is not None and hasattr(self.notifier, "resend_pending"):
                self.notifier.resend_pending()  # pages a killed watchdog left undelivered
            previous = self.previous_supervisor()
            with self.supervising():
                try:
                    for line in self.executor.roll_forward():  # what an earlier supervisor died doing: finish it
                        self.say(line)
                    self.take_over(previous)
                    self.resume_pending()
                    return self.loop()
                except Stop as stop:
                    return stop.code
        finally:
            self.lock.release()

    def loop(self) -> int:
        while True:
            self.run.exit_record.unlink(missing_ok=True)
            self.set_aside_unusable()
            self.retire_heartbeats()
            try:
                self._log_offset = self.run.ranks_log.stat().st_size
            except OSError:
                self._log_offset = 0
            self.launch_id, self.next_restart = uuid.uuid4().hex[:12], None
            proc = self.spawn()
            reason = self.watch(proc)
            code = exitcodes.read(self.run.exit_record, proc.returncode)[0] if reason is None else exitcodes.FAILED
            if reason is None:
                if code in (exitcodes.FINISHED, exitcodes.STOPPED_ON_REQUEST, exitcodes.STOPPED_BY_SIGNAL):
                    return code
                if code in (exitcodes.CONFIG_ERROR, exitcodes.CHECKPOINT_ERROR):
                    self.action("give-up", exitcodes.describe(code), "not restarting: it cannot help", "critical")
                    return code
                if code == exitcodes.NONFINITE_LIMIT:
                    reason = "spike"
                    step = self.first_bad_step()
                    self.act([self.incident("NonFiniteLimit", "too many NaN/Inf steps in a row", step=step,
                                            evidence={"start_step": step})], None)
                    if isinstance(self.next_restart, GiveUp):  # not rolled back: the ranks' own code says why
                        self.execute(self.next_restart)
                        return code
                else:
                    message = self.first_error() or exitcodes.read(self.run.exit_record, proc.returncode)[1]
                    reason = f"crash ({message})" if message else f"crash ({exitcodes.describe(code)})"
                    self.act([self.incident("RankCrash", reason)], None)
            if self.approved is not None:
                entry, self.approved = self.approved, None
                self.record_restart(reason, entry)
                continue
            follow, self.next_restart = self.next_restart, None
            if follow is None or isinstance(follow, GiveUp):
                if follow is not None:
                    self.execute(follow)
                return SUPERVISOR_GAVE_UP
            # decided while the ranks ran: they may have saved once more before they died (the shrink reshaped
            # that one); the record names what the relaunch resumes from
            import dataclasses
            self.execute(dataclasses.replace(follow, from_step=self.checkpoint_step()))

    def retire_heartbeats(self) -> None:
        """Before a launch: the heartbeats of ranks that are gone become ``exit`` beats, else the hang
        detector takes their age for a hang of the new launch while it starts up (and kills it)."""
        host = socket.gethostname()
        for rank, beat in read_heartbeats(self.run).items():
            pid = beat.get("pid")
            if beat.get("host") == host and beat.get("phase") != "exit" and isinstance(pid, int) \
                    and not isinstance(pid, bool) and not pid_alive(pid):
                path = self.run.heartbeat(rank)
                if path.is_file():
                    atomic_write_text(path, json.dumps({**beat, "phase": "exit", "retired": time.time()}) + "\n")

    def first_error(self) -> str | None:
        """The error that started a crash (e.g. ``OSError: [Errno 28] No space left on device``), from what
        this launch wrote to ``logs/ranks.log``: exit.json holds the last writer's, often a survivor's
        collective error ("connection closed by peer"), which comes after the cause."""
        try:
            with open(self.run.ranks_log, "rb") as handle:
                handle.seek(getattr(self, "_log_offset", 0))
                text = handle.read(1 << 20).decode(errors="replace")
        except OSError:
            return None
        import re
        found = re.findall(r"^\[rank(\d+)\]: ([A-Za-z_.]*(?:Error|Exception|Crash)\b: [^\n]{0,300})$", text, re.M)
        causes = [f for f in found if not re.search(r"by peer|gloo|NCCL|Socket Timeout", f[1])] or found
        return f"rank {causes[0][0]}: {causes[0][1]}" if causes else None

    def dead_ranks(self, since: float) -> list[dict]:
        """Ranks of this launch (heartbeat written after ``since``) on this host whose process is gone."""
        host = socket.gethostname()
        return [b for b in read_heartbeats(self.run).values()
                if b.get("host") == host and float(b["time"]) >= since and b.get("phase") != "exit"
                and isinstance(b.get("pid"), int) and not pid_alive(b["pid"])]

    def watch(self, proc: subprocess.Popen) -> str | None:
        """Poll until the ranks exit (None) or the watchdog kills them (the reason)."""
        spawned = time.time()  # heartbeats older than this are the previous launch's (same host, same clock)
        while proc.poll() is None:
            time.sleep(min(self.cfg.watchdog.interval_s, 1.0))
            if proc.poll() is not None:
                break
            dead = self.dead_ranks(spawned)
            if dead:
                # The survivors would sit in a collective until its timeout (gloo/NCCL: minutes) before
                # torchrun notices: kill them now, then the crash takes the usual path (restart or ask).
                names = ", ".join(f"rank {b['rank']} (pid {b['pid']}, step {b.get('step')})" for b in dead)
                crash = self.incident("RankCrash", f"{names} died", step=dead[0].get("step"),
                                      evidence={"dead": [{k: b.get(k) for k in ("rank", "pid", "host", "step")}
                                                         for b in dead]})
                self.kill_ranks(proc)
                self.action("kill", f"{names} died", "killed the remaining ranks at once", "warning",
                            incident=crash["id"])
                return None
            if getattr(self, "lock", None) is not None:
                self.lock.renew()
            self.verifier.poll()
            self.refill_spares(proc)
            new, facts = tick(self.run, self.state, config=self.config, notifier=self.notifier,
                              extra=self.carried_findings(spawned))
            self.on_tick(facts)
            for f in new:
                self.say(one_line(f))
            for line in facts.get("actions", []):
                self.say(line)
            incidents = [i for i in incidents_of(facts, facts["findings"], time.time())
                         if (i.get("kind") == "TrainingHang" or (i.get("kind") in ("LossSpike", *BAD_NODE_KINDS)
                                                                 and i.get("severity") == "critical"))
                         and i.get("id") not in self.notified and not acted_on(self.executor.journal, i["id"])]
            if incidents:
                reason = self.act(incidents, proc)
                if reason is not None:
                    return reason
        return None

    def refill_spares(self, proc) -> None:
        """Once this launch has trained ``watchdog.warm_spares_after_s`` past its first step (its start-up no
        longer competes for the CPU), warm as many spares as it has ranks for the next launch, one at a time;
        ``watchdog/spares.json`` says how many are warm."""
        if self.spares is None:
            return
        after = self.cfg.watchdog.warm_spares_after_s
        if self._spares_for != self.launch_id \
                and any(s.get("launch") == self.launch_id and isinstance(s.get("time"), (int, float))
                        and s["time"] + after <= time.time() for s in read_tail(self.run.startup_log, 8)[0]):
            self._spares_for = self.launch_id
            self._spares_wanted = len(getattr(proc, "ranks", ())) or 1
        if self._spares_for == self.launch_id:
            self.spares.fill(self._spares_wanted, at_once=1)
        shown = (self._spares_wanted, self.spares.warm(), sorted(self.spares.pids()))
        if shown != self._spares_shown:
            self._spares_shown = shown
            atomic_write_text(self.run.spares, json.dumps({"wanted": shown[0], "warm": shown[1], "pids": shown[2],
                                                           "time": time.time()}) + "\n")

    # ------------------------------------------------------------------------------------- asking a person
    def await_decision(self, entry: dict) -> dict:
        """Block until ``bigops approve`` / ``deny`` decides ``entry`` (the run stays as it is meanwhile)."""
        while entry["status"] == "pending":
            if approvals.claim(self.run, self.state, entry["id"], time.time()) is None:
                time.sleep(min(self.cfg.watchdog.interval_s, 1.0))
        return entry

    def resume_pending(self) -> None:
        """An earlier supervisor's restart or rollback still open: wait for its decision, then carry it out."""
        for entry in approvals.open_entries(self.state, ("restart", "rollback", "shrink")):
            if entry["status"] == "pending":
                self.say(f"[CRITICAL] WatchdogApprovalNeeded: {entry['action']} {entry['id']} from an earlier "
                         f"watchdog still waits ({entry['reason']}); approve: "
                         f"{approvals.command(self.run, 'approve', entry['id'])}   deny: "
                         f"{approvals.command(self.run, 'deny', entry['id'])}")
            entry = self.await_decision(entry)
            if entry["status"] == "denied":
                self.deny(entry)
            details = entry.get("details", {})
            if entry["action"] == "rollback":
                self.rollback_approved(entry)
            elif entry["action"] == "shrink":
                self.shrink_approved(entry)
            elif details.get("kind") == "hang" and isinstance(details.get("pgid"), int):
                try:  # the hung ranks of the earlier supervisor, if their group is still there
                    if os.getpgid(details["pgid"]) == details["pgid"]:
                        os.killpg(details["pgid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self.record_restart(entry["reason"], entry)

    def deny(self, entry: dict) -> None:
        """A denied restart, rollback or shrink: stop here, the run as it is (a person takes over)."""
        what = entry["action"]  # restart, rollback or shrink
        self.action("give-up", entry["reason"], f"{what} denied by {entry.get('decided_by')}: the run is left "
                    f"stopped as it is", "critical", pending_id=entry["id"])
        approvals.finish(self.state, entry["id"], "denied", time.time())
        raise Stop(SUPERVISOR_GAVE_UP)

    # ---------------------------------------------------------------------------------------------- actions
    def checkpoint_step(self) -> int | None:
        found = ckpt.find_resumable(self.run, hashes=False) if self.run.latest.exists() else None
        return found.manifest.get("step") if found else None

    def record_restart(self, reason: str, entry: dict) -> None:
        """The restart a person approved: counted in the ledger and recorded, once (journaled)."""
        step = self.checkpoint_step()
        self.execute(Restart(entry.get("details", {}).get("incident"), reason, step),
                     iid=intent_id("restart", f"pending:{entry['id']}"), pending_id=entry["id"],
                     approved_by=entry.get("decided_by"), finish="restarted")
        if self.state.pending[entry["id"]].get("status") != "done":
            approvals.finish(self.state, entry["id"], "restarted", time.time())

    def execute(self, action, **extra) -> str | None:
        line = self.executor.execute(action, **extra)
        if line:
            self.say(line)
        return line

    def incident(self, kind: str, summary: str, step: int | None = None, evidence: dict | None = None) -> dict:
        """An incident of this launch that the supervisor sees itself (its ranks exited): opened (paged) through
        the incident layer at once, like any detector's, and kept open until a later launch trains again
        (``carried_findings``). The same launch seen crashing twice (dead ranks, then torchrun's exit) is
        one incident."""
        finding = Finding(kind, "critical", summary, key=f"{kind}:{self.launch_id}", step=step,
                          evidence={**(evidence or {}), "launch": self.launch_id})
        known = finding.key in self.own
        self.own[finding.key] = finding
        incident_id = report(self.run, self.state, [finding], self.notifier, policy=self.config.incidents)[finding.key]
        if not known:
            self.say(one_line(finding))
        return dict(self.state.incidents[incident_id])

    def carried_findings(self, spawned: float) -> list[Finding]:
        """Our own open findings for this pass: still present while no launch since has trained a step, then
        resolved once ("training again")."""
        if not self.own:
            return []
        records, _ = read_tail(self.run.metrics, 1)
        last = records[-1] if records else None
        trained = last is not None and isinstance(last.get("time"), (int, float)) and last["time"] >= spawned
        out = []
        for key, f in list(self.own.items()):
            if key.endswith(self.launch_id):
                continue  # this launch's own trouble: reported when it happened
            if trained:
                out.append(Finding(f.kind, "info", f"training again at step {last['step']} (launch "
                                   f"{self.launch_id})", key=key, step=last["step"], resolved=True))
                del self.own[key]
            else:
                out.append(f)
        return out

    def act(self, incidents: list[dict], proc: subprocess.Popen | None) -> str | None:
        """Decide (``bigops.watchdog.decide``) and carry out (the executor) what the ranks' incidents call for.
        Returns why the ranks are down when we brought them down (None: they run on); what follows (the
        relaunch, or giving up) is left in ``self.next_restart`` for the loop. ``proc`` None: already down."""
        for inc in incidents:
            if inc.get("kind") == "TrainingHang":
                self.dump_stacks(inc)  # the evidence first: before a kill, or while it waits for a person
        spike = any(i.get("kind") in ("LossSpike", "NonFiniteLimit") for i in incidents)
        view = view_for(self.run, self.state, self.executor.journal, incidents, time.time(), self.checkpoint_step(),
                        with_checkpoints=spike)
        if any(i.get("kind") in BAD_NODE_KINDS for i in incidents):
            import dataclasses
            view = dataclasses.replace(view, lost_devices=self.lost_devices())
        by_id = {i["id"]: i for i in incidents}
        down = None
        for action in decide(incidents, view, self.policy, kinds=(*SUPERVISOR_KINDS, *BAD_NODE_KINDS)):
            inc = by_id.get(action.incident, {})
            if down is not None and inc.get("id") != down[0]:
                break  # the ranks are down: the other incidents are the next launch's business
            why = {"TrainingHang": "hang"}.get(inc.get("kind"), "node lost" if inc.get("kind") in BAD_NODE_KINDS
                                               else "spike")
            if isinstance(action, NotifyOnly):
                self.notified.add(action.incident)  # the incident's own page is all: nothing killed
            elif isinstance(action, Kill):
                self.kill(proc, action, inc)
                down = (inc["id"], why)
            elif isinstance(action, Ask):
                if not self.ask_and_wait(action, inc, proc):
                    continue  # a denied kill of hung ranks: they are left as they are
                down = (inc["id"], why)
            elif isinstance(action, Rollback):
                self.execute(action, key=inc.get("key"))
            elif isinstance(action, Shrink):
                if not self.shrink(action, inc.get("key")):
                    self.next_restart = GiveUp(action.incident, action.reason, "could not shrink: see the shrink action")
                    break
            elif isinstance(action, (Restart, GiveUp)):
                self.next_restart = action
        return down[1] if down is not None and proc is not None else None

    def dump_stacks(self, inc: dict) -> str | None:
        """py-spy stacks of this host's live ranks into ``watchdog/stacks/`` (``bigops.watchdog.stacks``), once per
        hang incident, recorded (and paged) as a ``stacks`` action naming the ranks whose stack differs."""
        if inc["id"] in self.dumped:
            return None
        self.dumped.add(inc["id"])
        from bigops.watchdog import stacks
        pids = stacks.live_pids(self.run)
        if not pids:
            return None
        folder, groups = stacks.dump_ranks(self.run, pids, "hang")
        line = stacks.summary_line(groups, folder.relative_to(self.run.root))
        self.action("stacks", f"hang: {inc.get('summary', '')}", line, "warning", incident=inc["id"],
                    key=inc.get("key"), folder=str(folder.relative_to(self.run.root)),
                    odd_ranks=stacks.odd_ranks(groups))
        return line

    def lost_devices(self) -> int:
        """Distinct GPUs (host, index) with a critical node-lost incident open: the devices the run lost."""
        lost = set()
        for inc in self.state.incidents.values():
            key = str(inc.get("key", "")).split(":")
            if inc.get("kind") in BAD_NODE_KINDS and inc.get("severity") == "critical" \
                    and inc.get("status", "open") == "open" and len(key) >= 3:
                lost.add((key[1], key[2]))
        return len(lost)

    def shrink(self, action: Shrink, key: str | None = None, **extra) -> bool:
        """Reshape to ``action.target`` (journaled: once), then run on it: the config, the policy and the next
        spawn's world size follow run.toml. False: the reshape was refused (the shrink action says why)."""
        from trainer.rundir import load_run_config
        found = ckpt.find_resumable(self.run, hashes=False) if self.run.latest.exists() else None
        self.execute(action, key=key, source_tag=found.tag if found else None, **extra)
        intent = self.executor.journal.get(extra.get("iid") or intent_id("shrink", action.incident))
        if intent is None or intent["steps"].get("convert", {}).get("failed") or found is None:
            return False
        self.cfg = load_run_config(self.run)
        self.policy = Policy.of(self.cfg)
        return True

    def kill(self, proc: subprocess.Popen | None, action: Kill, inc: dict) -> None:
        if proc is None:
            return
        hang = inc.get("kind") == "TrainingHang"
        if hang:
            stale = inc.get("evidence", {}).get("stale") or []
            reason = "hang: " + ", ".join(f"rank {s['rank']} (pid {s['pid']}, {s['phase']})" for s in stale) \
                if stale else action.reason
        else:
            reason = inc.get("summary", action.reason)
        node = inc.get("kind") in BAD_NODE_KINDS
        ask = not hang and (self.policy.on_node_lost if node else self.policy.on_loss_spike) == "ask"
        waits = "the shrink waits for a decision" if node else "the rollback waits for a decision"
        outcome = (f"killed the ranks ({'their devices are gone' if node else 'nothing trains past the spike'})"
                   + (f"; {waits}" if ask else ""))
        self.executor.kill_now = lambda: self.kill_ranks(proc)
        try:
            self.execute(Kill(action.incident, reason), pgid=proc.pid, key=inc.get("key"), outcome=outcome,
                         severity="critical" if hang or ask else "warning")
        finally:
            self.executor.kill_now = None
        if proc.poll() is None:  # journaled as killed before (an earlier pass of ours): make sure
            self.kill_ranks(proc)

    def ask_and_wait(self, action: Ask, inc: dict, proc: subprocess.Popen | None) -> bool:
        """Ask (journaled), wait for the decision, carry it out. False: a denied kill of hung ranks."""
        hang = inc.get("kind") == "TrainingHang"
        details = {**action.details, **({"pgid": proc.pid} if hang and proc is not None else {})}
        self.execute(Ask(action.incident, action.reason, action.action, details), key=inc.get("key"))
        intent = self.executor.journal.get(intent_id("ask", action.incident))
        entry = self.await_decision(self.state.pending[intent["steps"]["ask"]["pending_id"]])
        if entry["status"] == "denied":
            if hang and proc is not None:
                self.action("kill", action.reason, f"denied by {entry.get('decided_by')}: the ranks are left as they "
                            f"are", "critical", key=inc.get("key"), pending_id=entry["id"])
                approvals.finish(self.state, entry["id"], "denied", time.time())
                return False
            self.deny(entry)
        if action.action == "rollback":
            self.rollback_approved(entry)
        elif action.action == "shrink":
            self.shrink_approved(entry)
        elif hang and proc is not None:
            self.kill(proc, Kill(action.incident, action.reason), inc)
        self.approved = entry
        return True

    def rollback_approved(self, entry: dict) -> None:
        """Carry out an approved rollback once (journaled under the question's id); give up (a stop) when
        there is nothing to roll back to."""
        iid = intent_id("rollback", f"pending:{entry['id']}")
        if self.executor.journal.get(iid) is None:
            details = entry.get("details", {})
            view = view_for(self.run, self.state, self.executor.journal, [], time.time(), self.checkpoint_step(),
                            with_checkpoints=True)
            plan = plan_rollback(details.get("incident"), entry["reason"], details.get("spike_step", 0), view,
                                 self.policy)
            if isinstance(plan, GiveUp):
                self.execute(plan, iid=intent_id("give-up", f"pending:{entry['id']}"), pending_id=entry["id"],
                             finish="no checkpoint to roll back to")
                raise Stop(SUPERVISOR_GAVE_UP)
        else:
            plan = Rollback(None, entry["reason"], 0, "", 0, (), (0, 0), 0)  # finished from the journal
        self.execute(plan, iid=iid, pending_id=entry["id"], approved_by=entry.get("decided_by"))

    def shrink_approved(self, entry: dict) -> None:
        """Carry out an approved shrink once (journaled under the question's id); refused: give up (a stop)."""
        details = entry.get("details", {})
        action = Shrink(details.get("incident"), entry["reason"], tuple(details.get("target") or ()),
                        int(details.get("lost") or 0))
        iid = intent_id("shrink", f"pending:{entry['id']}")
        if not self.shrink(action, iid=iid, pending_id=entry["id"], approved_by=entry.get("decided_by")):
            self.execute(GiveUp(action.incident, entry["reason"], "could not shrink: see the shrink action"),
                         iid=intent_id("give-up", f"pending:{entry['id']}"), pending_id=entry["id"],
                         finish="could not shrink")
            raise Stop(SUPERVISOR_GAVE_UP)

    def first_bad_step(self) -> int:
        records, _ = read_tail(self.run.metrics, 2000)
        step = None
        for r in reversed(records):
            if r.get("skipped") is True:
                step = r["step"]
            elif step is not None:
                break
        return step if step is not None else (records[-1]["step"] if records else 0)


def supervise_local(run: RunDir, cfg: RunConfig, world: int, trainer_args: list[str],
                    say: Callable[[str], None] = print,
                    on_tick: Callable[[dict], None] | None = None) -> tuple[int, str]:
    """``bigops launch --watch``: run the ranks on this machine under a :class:`Supervisor` until it is done or
    gives up, paging through the run's notifier; returns the exit code and its description. Each spawn carries
    the supervisor's launch id, so its hang and crash incidents and the heartbeats agree. Ctrl-C stops the
    current ranks (they save first)."""
    from bigops.notify.notifier import for_run
    from launcher import local
    from launcher.ranks import SparePool

    from trainer.config import world_size_of
    current: list = []

    def spawn():  # a shrink changes the world size: it follows the supervisor's config (run.toml's layout)
        size = world if supervisor.cfg is cfg else world_size_of(supervisor.cfg)
        current[:] = [local.spawn(run.root, size, trainer_args, log_path=run.ranks_log,
                                  launch_id=supervisor.launch_id, pool=spares)]
        return current[0]

    notifier = for_run(run, cfg.alerts)
    spares = SparePool(run.root, local.rank_env(world), run.ranks_log) if cfg.watchdog.warm_spares else None
    supervisor = Supervisor(run, cfg, spawn, notifier=notifier, say=say, on_tick=on_tick, spares=spares)
    try:
        code = supervisor.run_until_done()
    except KeyboardInterrupt:
        if current:
            local.stop(current[0])
        raise
    finally:
        if spares is not None:
            spares.close()
        notifier.drain(timeout=10)
    if code == SUPERVISOR_GAVE_UP:
        return code, f"the watchdog stopped restarting (see {run.events})"
    return code, exitcodes.describe(code)
