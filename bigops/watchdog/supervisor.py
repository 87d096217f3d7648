"""Keep a local run alive: start its ranks, watch them, and act when they crash, hang or spike.

The loop (``bigops launch --watch``):

- ranks exit FINISHED / STOPPED_ON_REQUEST / STOPPED_BY_SIGNAL: done, with that code;
- ranks exit with a crash (FAILED), or a hang is detected (the stuck processes are killed first): restart
  from the last good checkpoint, within the restart budget and the no-progress guard, else page and stop;
- a persistent loss spike is confirmed, or the ranks exit NONFINITE_LIMIT: kill, roll back to the last
  checkpoint before the spike (later ones set aside), skip the data that fed it, restart;
- configuration or checkpoint errors: page and stop (restarting cannot help).

Every decision and its outcome is an ``action`` record in events.jsonl; the restart ledger and the keys
already acted on live in ``watchdog/state.json``, so a restarted supervisor never repeats an action.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from typing import Callable

from bigops.exitcodes import WATCHDOG_GAVE_UP as SUPERVISOR_GAVE_UP
from bigops.checkpoint.rollback import apply_rollback, checkpoints_with_steps
from bigops.watchdog.daemon import events_path, one_line, state_path, tick
from bigops.watchdog.findings import Finding
from bigops.watchdog.policy import decide_restart, plan_rollback
from bigops.watchdog.scan import WatchConfig, read_tail
from bigops.watchdog.state import WatchState
from trainer import checkpoint as ckpt
from trainer import exitcodes
from trainer.config import RunConfig
from trainer.rundir import RunDir, append_jsonl



def watch_config(cfg: RunConfig) -> WatchConfig:
    from bigops.watchdog.detectors.hang import HangConfig
    w = cfg.watchdog
    return WatchConfig(hang=HangConfig(factor=w.hang_factor, min_timeout_s=w.hang_min_timeout_s,
                                       startup_timeout_s=w.hang_startup_timeout_s,
                                       checkpoint_timeout_s=w.hang_checkpoint_timeout_s))


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill the ranks' whole process group (torchrun and its workers: a SIGSTOPped rank included)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Supervisor:
    def __init__(self, run: RunDir, cfg: RunConfig, spawn: Callable[[], subprocess.Popen], notifier=None,
                 say: Callable[[str], None] = print, on_tick: Callable[[dict], None] | None = None):
        self.run, self.cfg, self.spawn, self.notifier, self.say = run, cfg, spawn, notifier, say
        self.on_tick = on_tick or (lambda facts: None)
        self.state = WatchState.load(state_path(run))
        self.config = watch_config(cfg)

    # -------------------------------------------------------------------------------------------- records
    def action(self, action: str, reason: str, outcome: str, severity: str = "warning", **details) -> None:
        event = {"time": time.time(), "type": "action", "id": uuid.uuid4().hex[:12], "action": action,
                 "reason": reason, "outcome": outcome, "severity": severity, **details}
        append_jsonl(events_path(self.run), event)
        self.say(f"[{severity.upper()}] watchdog {action}: {reason} -> {outcome}")
        if self.notifier is not None and self.notifier.wanted(severity):
            page = {"kind": f"Watchdog{action.title().replace('-', '')}", "severity": severity,
                    "summary": f"{reason} -> {outcome}", "key": event["id"], "runbook": "runbooks/RestartBudgetExhausted.md"
                    if action == "give-up" else f"runbooks/Watchdog{action.title()}.md", "evidence": details}
            self.notifier.submit(page, f"[{severity.upper()}] {page['kind']}: {page['summary']}")

    # ------------------------------------------------------------------------------------------- the loop
    def run_until_done(self) -> int:
        while True:
            self.run.exit_record.unlink(missing_ok=True)
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
                    if not self.rollback(self.first_bad_step(), "too many NaN/Inf steps in a row"):
                        return code
                else:
                    reason = f"crash ({exitcodes.describe(code)})"
            if not self.restart_allowed(reason):
                return SUPERVISOR_GAVE_UP

    def watch(self, proc: subprocess.Popen) -> str | None:
        """Poll until the ranks exit (None) or the watchdog kills them (the reason)."""
        while proc.poll() is None:
            time.sleep(min(self.cfg.watchdog.interval_s, 1.0))
            if proc.poll() is not None:
                break
            new, facts = tick(self.run, self.state, config=self.config, notifier=self.notifier)
            self.on_tick(facts)
            for f in new:
                self.say(one_line(f))
            for f in facts["findings"]:
                if f.kind == "TrainingHang" and f.key not in self.state.handled:
                    self.mark(f)
                    stale = ", ".join(f"rank {s['rank']} (pid {s['pid']}, {s['phase']})" for s in f.evidence["stale"])
                    kill_group(proc)
                    self.action("kill", f"hang: {stale}", "killed the ranks", "critical", key=f.key)
                    return "hang"
                if f.kind == "LossSpike" and f.key not in self.state.handled \
                        and self.cfg.watchdog.on_loss_spike == "rollback":
                    self.mark(f)
                    kill_group(proc)  # SIGKILL: no checkpoint of the post-spike state
                    if self.rollback(f.evidence["start_step"], f.summary):
                        return "spike"
                    return "spike (no checkpoint before it)"
        return None

    def mark(self, f: Finding) -> None:
        self.state.handled[f.key] = {"time": time.time(), "kind": f.kind}
        self.state.save()

    # ---------------------------------------------------------------------------------------------- actions
    def checkpoint_step(self) -> int | None:
        found = ckpt.find_resumable(self.run, hashes=False) if self.run.latest.exists() else None
        return found.manifest.get("step") if found else None

    def restart_allowed(self, reason: str) -> bool:
        if self.cfg.watchdog.on_crash != "restart":
            self.action("give-up", reason, f"watchdog.on_crash={self.cfg.watchdog.on_crash}: not restarting",
                        "critical")
            return False
        step = self.checkpoint_step()
        w = self.cfg.watchdog
        decision = decide_restart(self.state.restarts, time.time(), step, w.restart_budget, w.restart_window_s,
                                  w.no_progress_restarts)
        if not decision.allowed:
            self.action("give-up", reason, decision.reason, "critical", checkpoint_step=step)
            return False
        self.state.restarts.append({"time": time.time(), "from_step": step, "reason": reason})
        self.state.save()
        self.action("restart", reason, f"relaunching from checkpoint step {step} ({decision.reason})", "warning",
                    checkpoint_step=step)
        return True

    def first_bad_step(self) -> int:
        records, _ = read_tail(self.run.metrics, 2000)
        step = None
        for r in reversed(records):
            if r.get("skipped") is True:
                step = r["step"]
            elif step is not None:
                break
        return step if step is not None else (records[-1]["step"] if records else 0)

    def rollback(self, spike_step: int, why: str) -> bool:
        records, _ = read_tail(self.run.metrics, 100_000)
        before = [r for r in records if r["step"] < spike_step and isinstance(r.get("consumed_samples"), int)]
        consumed = before[-1]["consumed_samples"] if before else 0
        plan = plan_rollback(spike_step, checkpoints_with_steps(self.run), consumed,
                             self.cfg.train.global_batch_size, self.cfg.watchdog.rollback_skip_batches)
        if plan is None:
            self.action("give-up", why, f"no checkpoint before step {spike_step} to roll back to", "critical")
            return False
        event_id = uuid.uuid4().hex[:12]
        aside = apply_rollback(self.run, plan, event_id)
        self.action("rollback", why, f"latest -> {plan.target_tag}; set aside {plan.aside_tags or 'nothing'} in "
                    f"{aside.relative_to(self.run.root)}; skip samples {plan.skip_range[0]}-{plan.skip_range[1]}",
                    "critical", target=plan.target_tag, skip_range=list(plan.skip_range))
        return True
