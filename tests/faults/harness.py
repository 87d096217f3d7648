"""Fault injection on real tiny runs under ``bigops launch --watch``: seeded faults at seeded steps, then
invariants over everything the run left behind.

A :class:`Harness` starts one run (tiny BLOOM, TP 2 x PP 2, 4 gloo ranks, synthetic data) under the
watchdog, notifying a local webhook :class:`Receiver`, and injects the planned faults one after another.
A fault is injected once the run made progress past a checkpoint saved after the previous fault (so that
a replay never crosses an earlier fault's window). Kinds (``KINDS``):

- ``rank_kill``     SIGKILL of one rank (seeded choice)
- ``rank_hang``     SIGSTOP of one rank (small hang timeouts)
- ``job_kill``      SIGKILL of the whole job (watchdog + ranks); the harness relaunches ``bigops launch --watch``
- ``kill_in_save``  SIGKILL of rank 0 (the one that publishes) while it is inside a checkpoint save
                    (``BIGOPS_FAULT_PAUSE_IN_SAVE``)
- ``ckpt_corrupt``  a file of the newest checkpoint truncated or bit-flipped, then a restart forced (a rank killed)
- ``disk_full``     ENOSPC raised by rank 0 during a save (``BIGOPS_FAULT_ENOSPC_IN_SAVE``)
- ``nan_loss``      NaN outputs for 2 steps (``BIGOPS_FAULT_NAN_AT_STEP``): the updates are skipped
- ``loss_spike``    random tokens for a few batches (``BIGOPS_FAULT_CORRUPT_SAMPLES``): rollback + skip
- ``watchdog_kill`` SIGKILL of the watchdog alone right after it acted on a killed rank (mid-action),
                    then a relaunch: the new watchdog must stop the orphaned ranks and repeat nothing
- ``receiver_down`` the webhook receiver is down while a rank is killed and comes back 8 s later: the
                    alert is retried and delivered once, detection goes on meanwhile

Invariants (:meth:`Report.violations`): the run finishes at its target step with a verified final
checkpoint; every replayed step's loss equals its first value (bit-exact resume; steps re-trained after a
spike rollback on other data are exempt); no resume loaded an incomplete or damaged checkpoint; every
complete checkpoint seen during the run still exists (in checkpoints/ or checkpoints/.rolled-back/); each
fault has exactly one alert of its expected kind and an events.jsonl record; no notification (key and
severity) was delivered twice; no action repeated (same action and key, or same action and reason within
one fault) — across watchdog restarts included.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from trainer.rundir import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("rank_kill", "rank_hang", "job_kill", "kill_in_save", "ckpt_corrupt", "disk_full", "nan_loss",
         "loss_spike", "watchdog_kill", "receiver_down")
ENV_FAULTS = {"kill_in_save", "disk_full", "nan_loss", "loss_spike"}
"""Faults armed through the ranks' environment at launch (their step is fixed in advance)."""
RESTARTS = {"rank_kill", "rank_hang", "job_kill", "kill_in_save", "ckpt_corrupt", "disk_full", "watchdog_kill",
            "receiver_down", "loss_spike"}
PRIMARY = {
    # the page each fault must raise exactly once (an incident opening, or an action outside any incident:
    # a take-over relaunch, a damaged checkpoint set aside), and its events.jsonl record
    "rank_kill": "RankCrash", "rank_hang": "TrainingHang", "job_kill": "WatchdogRestart",
    "kill_in_save": "RankCrash", "ckpt_corrupt": "WatchdogRollback", "disk_full": "RankCrash",
    "nan_loss": "NonFiniteLoss", "loss_spike": "LossSpike", "watchdog_kill": "WatchdogRestart",
    "receiver_down": "RankCrash",
}
LOSS_SPIKE_MIN_STEP = 60  # the spike detector's warm-up (50 records) plus margin
BATCH = 8
FAST = ["data.source=synthetic", "model.vocab_size=512", "train.seq_length=32", f"train.global_batch_size={BATCH}",
        "train.micro_batch_size=2", "train.eval_interval=0", "watchdog.interval_s=0.5",
        "watchdog.hang_min_timeout_s=15", "watchdog.hang_factor=8", "watchdog.restart_budget=50",
        "watchdog.no_progress_restarts=50", "watchdog.rollback_skip_batches=4", "watchdog.spike_patience=3",
        "alerts.webhook_env=FAULTS_HOOK", "alerts.retries=7", "alerts.rate_limit_per_minute=600"]


class Receiver:
    """A local webhook that records every POST; ``down()`` closes its port, ``up()`` binds it again."""

    def __init__(self):
        self.received: list[dict] = []
        self.port = 0
        self._server = None
        self.up()

    def up(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    data = json.loads(body)
                except ValueError:
                    data = {"raw": body.decode(errors="replace")}
                outer.received.append({"time": time.time(), "path": self.path, "body": data})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def is_up(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[dict]:
        return [{**r["body"].get("event", {}), "received": r["time"]} for r in self.received
                if isinstance(r["body"], dict)]

    close = down


@dataclass
class Fault:
    kind: str
    step: int
    """Inject when the run reached this step (env faults: the step they are armed at)."""
    injected_at: float | None = None
    step_at_inject: int | None = None
    recovered_at: float | None = None
    first_step_after: int | None = None
    done_at: float | None = None
    detail: str = ""
    corrupted: str | None = None

    @property
    def mttr_s(self) -> float | None:
        if self.injected_at is None or self.recovered_at is None:
            return None
        return self.recovered_at - self.injected_at

    @property
    def steps_lost(self) -> int | None:
        if self.step_at_inject is None or self.first_step_after is None:
            return None
        return max(0, self.step_at_inject - (self.first_step_after - 1))


def plan_faults(kinds: list[str], seed: int, start: int = 8, save_interval: int = 5) -> tuple[list[Fault], int]:
    """Seeded steps for ``kinds`` (in the given order, each a few steps after a checkpoint that follows the
    previous one); returns the faults and the target step that leaves room after the last."""
    rng = random.Random(seed)
    faults, step = [], start
    for kind in kinds:
        if kind == "loss_spike":
            step = max(step, LOSS_SPIKE_MIN_STEP + rng.randint(0, 6))
        if kind in ("kill_in_save", "disk_full", "ckpt_corrupt"):
            step = ((step + save_interval - 1) // save_interval) * save_interval  # a save happens there
        faults.append(Fault(kind, step))
        gap = save_interval + 3 + rng.randint(0, save_interval)
        if kind == "loss_spike":
            gap += 12  # the spike's batches, then the persistence the detector waits for
        step += gap
    return faults, step + save_interval


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Harness:
    def __init__(self, workdir: Path, kinds: list[str], seed: int = 0, save_interval: int = 5,
                 timeout_s: float = 1800, log=print, extra_sets: list[str] = ()):
        self.workdir, self.seed, self.save_interval, self.timeout_s, self.log = Path(workdir), seed, save_interval, \
            timeout_s, log
        self.rng = random.Random(seed * 7919 + 1)
        self.faults, self.target = plan_faults(list(kinds), seed, save_interval=save_interval)
        self.run = self.workdir / "run"
        self.once = self.workdir / "once"
        self.receiver = Receiver()
        self.sets = [*FAST, f"train.save_interval={save_interval}", f"train.train_steps={self.target}",
                     *extra_sets]
        self.proc: subprocess.Popen | None = None
        self.launches = 0
        self.snapshots: dict[tuple[str, float], list[str]] = {}
        self.started_at = self.finished_at = None
        self._stop_snap = threading.Event()

    # ------------------------------------------------------------------------------------------- plumbing
    def env(self) -> dict[str, str]:
        env = {**os.environ, "FAULTS_HOOK": self.receiver.url, "BIGOPS_FAULT_ONCE_DIR": str(self.once),
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        for f in self.faults:
            if f.kind == "kill_in_save":
                env["BIGOPS_FAULT_PAUSE_IN_SAVE"] = f"{f.step}:20"
            elif f.kind == "disk_full":
                env["BIGOPS_FAULT_ENOSPC_IN_SAVE"] = f"{f.step}:0"
            elif f.kind == "nan_loss":
                env["BIGOPS_FAULT_NAN_AT_STEP"] = f"{f.step}:2"
            elif f.kind == "loss_spike":
                env["BIGOPS_FAULT_CORRUPT_SAMPLES"] = f"{(f.step - 1) * BATCH}-{(f.step + 5) * BATCH}"
        return env

    def launch(self) -> None:
        args = [sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(self.run), "--watch"]
        for s in self.sets:
            args += ["--set", s]
        self.launches += 1
        log = open(self.workdir / f"launch-{self.launches}.log", "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def metrics(self) -> list[dict]:
        return read_jsonl(self.run / "telemetry" / "metrics.jsonl")

    def events(self) -> list[dict]:
        return read_jsonl(self.run / "events.jsonl")

    def last_step(self) -> int:
        records = self.metrics()
        return records[-1]["step"] if records else 0

    def heartbeats(self) -> dict[int, dict]:
        out = {}
        for path in (self.run / "telemetry" / "heartbeat").glob("rank-*.json"):
            try:
                beat = json.loads(path.read_text())
                out[beat["rank"]] = beat
            except (OSError, ValueError, KeyError):
                continue
        return out

    def live_ranks(self) -> dict[int, int]:
        return {r: b["pid"] for r, b in self.heartbeats().items() if b.get("phase") != "exit" and _pid_alive(b["pid"])}

    def latest_step(self) -> int:
        try:
            tag = (self.run / "checkpoints" / "latest").read_text().strip()
            return int(tag.removeprefix("global_step"))
        except (OSError, ValueError):
            return -1

    def _snapshot_loop(self) -> None:
        """Record every complete checkpoint (its manifest's files) as soon as it appears."""
        while not self._stop_snap.is_set():
            self.snapshot()
            time.sleep(0.2)

    def snapshot(self) -> None:
        for manifest in (self.run / "checkpoints").glob("global_step*/manifest.json"):
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            key = (data.get("tag"), data.get("created"))
            if key not in self.snapshots:
                self.snapshots[key] = sorted(data.get("files", {}))

    def wait(self, predicate, timeout: float, what: str, poll: float = 0.1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the watchdog exited (code {self.proc.returncode}) while waiting for {what}; "
                                   f"see {self.workdir}/launch-{self.launches}.log")
            time.sleep(poll)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_step(self, step: int, timeout: float = 600) -> None:
        self.wait(lambda: self.last_step() >= step, timeout, f"step {step}")

    # ---------------------------------------------------------------------------------------- the faults
    def kill_rank(self, sig=signal.SIGKILL, rank: int | None = None) -> tuple[int, int]:
        live = self.wait(self.live_ranks, 120, "live ranks")
        rank = self.rng.choice(sorted(live)) if rank is None else rank
        os.kill(live[rank], sig)
        return rank, live[rank]

    def kill_job(self) -> None:
        groups = {os.getpgid(pid) for pid in self.live_ranks().values() if _pid_alive(pid)}
        os.killpg(self.proc.pid, signal.SIGKILL)
        for group in groups - {os.getpgid(0)}:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def inject(self, f: Fault) -> None:
        f.step_at_inject = self.last_step()
        f.injected_at = time.time()
        if f.kind == "rank_kill":
            rank, pid = self.kill_rank()
            f.detail = f"SIGKILL rank {rank} (pid {pid})"
        elif f.kind == "rank_hang":
            rank, pid = self.kill_rank(signal.SIGSTOP)
            f.detail = f"SIGSTOP rank {rank} (pid {pid})"
        elif f.kind == "receiver_down":
            self.receiver.down()
            rank, pid = self.kill_rank()
            f.detail = f"receiver down 8 s; SIGKILL rank {rank} (pid {pid})"
            threading.Timer(8.0, self.receiver.up).start()
        elif f.kind == "job_kill":
            self.kill_job()
            f.detail = "SIGKILL of the watchdog's and the ranks' process groups; relaunched"
            self.launch()
        elif f.kind == "watchdog_kill":
            before = len(self.events())
            rank, pid = self.kill_rank()
            self.wait(lambda: any(e.get("type") == "action" and e.get("action") in ("kill", "restart")
                                  for e in self.events()[before:]), 120, "the watchdog's action", poll=0.02)
            os.kill(self.proc.pid, signal.SIGKILL)  # the watchdog alone, mid-action (before/while relaunching)
            self.proc.wait()
            time.sleep(1.0 + self.rng.random() * 4)  # its new ranks (if it got that far) run on, unwatched
            orphans = sorted(self.live_ranks().values())
            f.detail = f"SIGKILL rank {rank}, then the watchdog after its kill action; orphans {orphans}; relaunched"
            self.launch()
        elif f.kind == "kill_in_save":
            partial = self.run / "checkpoints" / f".partial-global_step{f.step}"
            self.wait(lambda: partial.is_dir() and any(partial.iterdir()), 300, f"the save of step {f.step}",
                      poll=0.05)
            time.sleep(1.0)
            f.step_at_inject = self.last_step()
            f.injected_at = time.time()
            rank, pid = self.kill_rank(rank=0)
            f.detail = f"SIGKILL rank 0 (pid {pid}) inside the save of step {f.step}"
        elif f.kind == "ckpt_corrupt":
            tag = f"global_step{f.step}"
            self.wait(lambda: self.latest_step() >= f.step, 300, f"checkpoint {tag}", poll=0.02)
            files = sorted(p for p in (self.run / "checkpoints" / tag).glob("*.pt"))
            victim = self.rng.choice(files)
            how = self.rng.choice(["truncate", "bitflip"])
            data = bytearray(victim.read_bytes())
            if how == "truncate":
                victim.write_bytes(bytes(data[: len(data) // 2]))
            else:
                position = self.rng.randrange(len(data))
                data[position] ^= 1 << self.rng.randrange(8)
                victim.write_bytes(bytes(data))
            f.corrupted = tag
            f.step_at_inject = self.last_step()
            rank, pid = self.kill_rank()
            f.detail = f"{how} {tag}/{victim.name}, then SIGKILL rank {rank} (pid {pid})"
        elif f.kind == "disk_full":
            f.detail = f"ENOSPC on rank 0 in the save of step {f.step}"
            self.wait(lambda: any(e.get("type") == "action" and "No space left" in e.get("reason", "")
                                  for e in self.events()), 300, "the ENOSPC crash", poll=0.05)
        elif f.kind == "nan_loss":
            f.detail = f"NaN outputs at steps {f.step}-{f.step + 1}"
            self.wait(lambda: any(r["step"] >= f.step + 1 for r in self.metrics()), 300, "the NaN steps")
        elif f.kind == "loss_spike":
            f.detail = f"random tokens in samples {(f.step - 1) * BATCH}-{(f.step + 5) * BATCH} (steps {f.step}-{f.step + 5})"
            # a spike rollback carries its skip range (a damaged `latest` set aside is a rollback without one)
            self.wait(lambda: any(e.get("action") == "rollback" and e.get("skip_range") for e in self.events()
                                  if e.get("time", 0) > f.injected_at - 60), 600, "the rollback")

    def await_recovery(self, f: Fault) -> None:
        """Recovered: a finite step past the one the run had reached is trained; done: a checkpoint past it."""
        records = self.metrics()
        count = len(records)
        if f.kind in ("nan_loss", "loss_spike", "disk_full"):
            # armed faults fire on their own: the fault began with the first record of its step
            first = next((r for r in records if r["step"] >= f.step), None)
            if first is not None:
                f.injected_at = first["time"] - first.get("step_seconds", 0)
                count = records.index(first) + 1
                f.step_at_inject = first["step"]
            if f.kind == "loss_spike":
                rollback = self.wait(lambda: next((e for e in reversed(self.events()) if e.get("action") == "rollback"
                                                   and e.get("skip_range")), None), 600, "the spike's rollback")
                target = int(rollback["target"].removeprefix("global_step"))

                def resumed():  # the relaunched run's first record (records after the kill may straggle in)
                    rs = self.metrics()
                    return next(((i,) for i, r in enumerate(rs) if r["time"] > rollback["time"]
                                 and r["step"] == target + 1), None)
                count = self.wait(resumed, 900, "the run after the rollback")[0]
                f.step_at_inject = max(r["step"] for r in self.metrics()[:count])
        after = self.wait(lambda: next((r for r in self.metrics()[count:] if r["step"] > (f.step_at_inject or 0)
                                        and r["loss"] == r["loss"]), None), 900, f"recovery from {f.kind}")
        f.recovered_at = after["time"]
        resumed = [r for r in self.metrics()[count:] if r["time"] <= after["time"]]
        f.first_step_after = resumed[0]["step"] if resumed else after["step"]
        if f.kind == "nan_loss":
            f.first_step_after = f.step_at_inject + 1  # nothing replayed: the NaN steps were skipped, not lost
        beyond = max(f.step_at_inject or 0, f.step)
        self.wait(lambda: self.latest_step() > beyond, 900, f"a checkpoint past step {beyond}")
        # ... and the watchdog has reported it (a fast run can checkpoint before its next pass)
        self.wait(lambda: expected_records(f, self.events()), 120, f"the watchdog's record of {f.kind}")
        f.done_at = time.time() + 0.5

    # ------------------------------------------------------------------------------------------ the run
    def execute(self) -> "Report":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        snapper = threading.Thread(target=self._snapshot_loop, daemon=True)
        snapper.start()
        self.launch()
        error = None
        try:
            for f in self.faults:
                wait_for = f.step if f.kind not in ENV_FAULTS else min(f.step, 1)
                if f.kind in ("kill_in_save",):
                    wait_for = f.step - 1
                self.wait_step(wait_for)
                self.log(f"[faults] step {self.last_step()}: {f.kind}")
                self.inject(f)
                self.log(f"[faults]   {f.detail}")
                self.await_recovery(f)
                self.log(f"[faults]   recovered in {f.mttr_s:.1f} s, {f.steps_lost} steps lost")
            code = self.proc.wait(timeout=self.timeout_s)
            if code != 0:
                error = f"bigops launch --watch exited {code}"
        except (RuntimeError, TimeoutError) as exc:
            error = str(exc)
        finally:
            self.finished_at = time.time()
            self._stop_snap.set()
            snapper.join(2)
            self.snapshot()
            self.stop()
        time.sleep(0.5)
        return Report(self, error)

    def stop(self) -> None:
        """Leave nothing running: the watchdog, then any rank of this run."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for pid in self.live_ranks().values():
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.receiver.up() if not self.receiver.is_up else None


NONFINITE = {"NonFiniteLoss", "NonFiniteGradNorm", "SkippedSteps"}


def expected_records(f: Fault, events: list[dict]) -> list[dict]:
    """events.jsonl records of the kind ``f`` must produce, since it was injected."""
    from bigops.watchdog.actions import action_kind
    kinds = NONFINITE if f.kind == "nan_loss" else {PRIMARY[f.kind]}
    out = [e for e in events if e.get("time", 0) >= (f.injected_at or 0) - 1 and
           (e.get("kind") in kinds or (e.get("type") == "action" and action_kind(e.get("action", "")) in kinds))]
    if f.kind == "watchdog_kill":
        out = [e for e in out if "previous watchdog" in e.get("reason", "")]
    return out


class Report:
    def __init__(self, harness: Harness, error: str | None):
        self.h, self.error = harness, error
        self.faults = harness.faults

    # ------------------------------------------------------------------------------------- invariants
    def violations(self) -> list[str]:
        problems = [f"run: {self.error}"] if self.error else []
        h = self.h
        from trainer import checkpoint as ckpt
        from trainer.rundir import RunDir
        run = RunDir(h.run)
        records = h.metrics()
        events = h.events()
        # 1. the target step and a verified final checkpoint
        if not records or max(r["step"] for r in records) != h.target:
            problems.append(f"target step {h.target} not reached (last {records[-1]['step'] if records else None})")
        if run.latest_tag() != f"global_step{h.target}":
            problems.append(f"final checkpoint is {run.latest_tag()}, not global_step{h.target}")
        elif ckpt.verify(run.checkpoint(run.latest_tag())):
            problems.append(f"final checkpoint does not verify: {ckpt.verify(run.checkpoint(run.latest_tag()))}")
        # 2. bit-exact replays (no update applied twice, or differently)
        spike_rollbacks = [(e["time"], ckpt.step_of(e["target"])) for e in events
                           if e.get("type") == "action" and e.get("action") == "rollback" and e.get("skip_range")]
        first: dict[int, dict] = {}
        for r in records:
            step = r["step"]
            if step not in first:
                first[step] = r
                continue
            if any(t < r["time"] and step > target for t, target in spike_rollbacks):
                continue  # re-trained on other data after a rollback, on purpose
            a, b = first[step]["loss"], r["loss"]
            if a == a and a != b:
                problems.append(f"step {step} replayed with loss {b!r} != {a!r} (first time): not bit-exact")
        # 3. no resume from an incomplete or damaged checkpoint
        loads = [r for r in read_jsonl(run.telemetry / "checkpoints.jsonl") if r.get("kind") == "load"]
        corrupted = {f.corrupted: f for f in self.faults if f.corrupted}
        seen_complete = {tag for tag, _ in h.snapshots}
        for load in loads:
            tag = load.get("tag", "")
            if tag.startswith(".") or tag not in seen_complete:
                problems.append(f"resumed from {tag!r}, never seen complete")
            f = corrupted.get(tag)
            if f is not None and load["time"] > f.injected_at and load["time"] < (f.done_at or 1e18) \
                    and load["step"] == f.step:
                problems.append(f"resumed from the damaged {tag}")
        for f in self.faults:
            if f.kind == "ckpt_corrupt" and f.corrupted:
                said = [e for e in events if e.get("action") == "rollback" and e.get("unusable") == f.corrupted]
                if not said:
                    problems.append(f"ckpt_corrupt: nothing says {f.corrupted} was unusable and set aside")
                logs = "".join(p.read_text(errors="replace") for p in h.run.glob("logs/*.log"))
                if f"{f.corrupted} is unusable" not in logs and not said:
                    problems.append(f"ckpt_corrupt: the ranks did not say they fell back from {f.corrupted}")
            if f.kind == "kill_in_save":
                bad = [ld for ld in loads if ld["time"] > (f.injected_at or 0) and ld["time"] < (f.done_at or 1e18)
                       and ld["step"] >= f.step]
                if bad:
                    problems.append(f"kill_in_save: resumed from {bad[0]['tag']}, the checkpoint being saved")
            if f.kind == "disk_full":
                reports = [e for e in events if e.get("type") == "action" and "No space left" in e.get("reason", "")]
                if len(reports) != 1:
                    problems.append(f"disk_full: {len(reports)} watchdog records name the full disk (want 1)")
        # 4. no file of a complete checkpoint lost
        places = [h.run / "checkpoints", *(h.run / "checkpoints" / ".rolled-back").glob("*")]
        for (tag, created), files in sorted(h.snapshots.items(), key=lambda kv: str(kv[0])):
            homes = []
            for base in places:
                try:
                    if json.loads((base / tag / "manifest.json").read_text()).get("created") == created:
                        homes.append(base / tag)
                except (OSError, ValueError):
                    continue
            if not homes:
                problems.append(f"checkpoint {tag} (created {created}) is gone")
                continue
            missing = [name for name in files if not any((home / name).is_file() for home in homes)]
            if missing:
                problems.append(f"checkpoint {tag}: files lost: {missing[:3]}")
            elif tag not in corrupted and all(ckpt.verify(home) for home in homes):
                problems.append(f"checkpoint {tag}: files altered: {ckpt.verify(homes[0])[:2]}")
        # 5. one alert and one events.jsonl record of the expected kind per fault; no notification twice
        from bigops.watchdog.actions import action_kind
        received = h.receiver.events()
        # when each alert's event happened (actions' pages carry the action's id as key; findings their time)
        when = {e["id"]: e["time"] for e in events if e.get("type") == "action" and "id" in e}
        for e in received:
            e["time"] = e.get("time") or when.get(e.get("key"), e["received"])
        # an incident is paged when it opens; its escalation, reminders and resolve are not new pages
        opened = [e for e in received if e.get("notice") in (None, "open")]
        for f in self.faults:
            lo, hi = (f.injected_at or 0) - 1, (f.done_at or 1e18)
            want = PRIMARY[f.kind]
            got = [e for e in opened if e.get("kind") == want and lo <= e["time"] <= hi]
            if f.kind == "watchdog_kill":
                got = [e for e in got if "previous watchdog" in e.get("summary", "")]
            if f.kind == "nan_loss":
                got = [e for e in opened if e.get("kind") in ("NonFiniteLoss", "NonFiniteGradNorm", "SkippedSteps")
                       and lo <= e["time"] <= hi]
            if len(got) != 1:
                problems.append(f"{f.kind}: {len(got)} {want} alerts delivered (want exactly 1)")
            kinds = {want} if f.kind != "nan_loss" else {"NonFiniteLoss", "NonFiniteGradNorm", "SkippedSteps"}
            recorded = [e for e in events if lo <= e.get("time", 0) <= hi and
                        (e.get("kind") in kinds or (e.get("type") == "action" and action_kind(e["action"]) in kinds))]
            if not recorded:
                problems.append(f"{f.kind}: no events.jsonl record of kind {want}")
            if f.kind == "receiver_down" and got and got[0]["received"] < (f.injected_at or 0) + 7.5:
                problems.append("receiver_down: an alert arrived while the receiver was down?")
        pairs = [(e.get("incident") or e.get("key"), e.get("notice"), e.get("severity"), e.get("reminder"))
                 for e in received]
        dupes = {p for p in pairs if pairs.count(p) > 1}
        if dupes:
            problems.append(f"notifications delivered twice: {sorted(map(str, dupes))[:3]}")
        # 6. no action repeated (across watchdog restarts too)
        acts = [e for e in events if e.get("type") == "action"]
        keyed = [(e["action"], e["key"]) for e in acts if e.get("key")]
        if len(keyed) != len(set(keyed)):
            problems.append(f"an action was repeated for one finding: {[k for k in keyed if keyed.count(k) > 1][:2]}")
        for f in self.faults:
            window = [(e["action"], e.get("reason")) for e in acts
                      if (f.injected_at or 0) - 1 <= e["time"] <= (f.done_at or 1e18)]
            if len(window) != len(set(window)):
                problems.append(f"{f.kind}: an action repeated: {[w for w in window if window.count(w) > 1][:1]}")
        return problems

    # ---------------------------------------------------------------------------------------- the table
    def effective_ratio(self) -> float | None:
        """Seconds of the steps the run kept (the last record of each step) over the wall time of the run."""
        records = self.h.metrics()
        kept: dict[int, float] = {}
        for r in records:
            kept[r["step"]] = r.get("step_seconds", 0.0)
        wall = (self.h.finished_at or time.time()) - self.h.started_at
        return sum(kept.values()) / wall if wall > 0 else None

    def rows(self) -> list[dict]:
        out = {}
        for f in self.faults:
            row = out.setdefault(f.kind, {"kind": f.kind, "injected": 0, "recovered": 0, "steps_lost": 0, "mttr": []})
            row["injected"] += int(f.injected_at is not None)
            if f.done_at is not None:
                row["recovered"] += 1
                row["steps_lost"] += f.steps_lost or 0
                row["mttr"].append(f.mttr_s)
        return list(out.values())

    def table(self) -> str:
        return format_table(self.rows(), self.effective_ratio(), self.h.finished_at - self.h.started_at)


def format_table(rows: list[dict], ratio: float | None, wall_s: float) -> str:
    lines = [f"{'fault':<15}{'injected':>9}{'recovered':>10}{'steps lost':>11}{'MTTR s (mean)':>15}"]
    total = {"injected": 0, "recovered": 0, "steps_lost": 0, "mttr": []}
    for row in rows:
        mttr = f"{statistics.mean(row['mttr']):.1f}" if row["mttr"] else "-"
        lines.append(f"{row['kind']:<15}{row['injected']:>9}{row['recovered']:>10}{row['steps_lost']:>11}{mttr:>15}")
        for k in ("injected", "recovered", "steps_lost"):
            total[k] += row[k]
        total["mttr"] += row["mttr"]
    mttr = f"{statistics.mean(total['mttr']):.1f}" if total["mttr"] else "-"
    lines.append(f"{'total':<15}{total['injected']:>9}{total['recovered']:>10}{total['steps_lost']:>11}{mttr:>15}")
    lines.append(f"effective training time ratio: {ratio:.1%} of {wall_s:.0f} s wall (step time of the steps kept / "
                 f"wall time, start-ups included)" if ratio is not None else "effective training time ratio: -")
    return "\n".join(lines)
