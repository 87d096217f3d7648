"""A long-run simulation: months of a supervised run on a fast clock, every fault kind recurring.

What is real and what is a stand-in:

- real: the watchdog pass (``bigops.watchdog.daemon.tick``: every detector, the incident layer, the
  daemon's layer-norm sync through the executor), the supervisor's own decisions and actions
  (``Supervisor.incident`` / ``carried_findings`` / ``act`` / ``execute``: ``decide`` + the journaled
  ``Executor``: kill, rollback with its skip range and set-aside, restart with its budget), the checkpoint
  manifests (``trainer.checkpoint.write_manifest``), ``latest``, ``control/skip-ranges``,
  ``control/sync-layernorm``, ``events.jsonl``, ``watchdog/state.json``;
- stand-ins: the ranks (``SimRanks``: they write ``telemetry/metrics.jsonl``, the heartbeats and the GPU
  samples in the trainer's formats, save tiny checkpoints, resume from ``latest``, replay steps, honour
  the skip ranges and the sync request), the disk (``WatchConfig.disk_usage``, scripted), and the
  supervisor's *loop*: :meth:`Sim.run` does what ``Supervisor.loop``/``watch`` do (tick, pick the ranks'
  incidents, ``act``, relaunch or give up) on an injected clock instead of polling processes. Why not the
  loop itself: it sleeps and polls real processes (``proc.poll``, ``os.killpg``); 90 days of it on a fake
  clock would need a fake of every process call, while the decisions and the actions — what the
  simulation checks — are the supervisor's own methods, called as its loop calls them.
- the clock: ``time.time`` of the watchdog modules reads the simulated clock (``sim_clock``); one
  watchdog pass every ``pass_s`` simulated seconds (300 s by default: 90 days are 25,920 passes; the real
  interval is 5 s, so each pass here sees a few steps at once; detection delays are in passes).

Ground truth: every fault injected is an :class:`Episode` (kind, resource, start, end). The checks
(:meth:`Report.violations`): one page (an ``open`` notice) per incident, one resolve per incident, reminders
bounded, every episode paged (the longest silent recurrence 0), each restart / rollback / sync once per
incident, every critical page delivered by the real ``Notifier`` even in a storm. The same finding stream
is also run through the old keys and the old ``WatchState.is_new`` dedup (:class:`OldDedup`): the baseline.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import threading
import time as real_time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from bigops.watchdog.decide import GiveUp, advance as advance_samples
from bigops.watchdog.detectors.disk import DiskUsage
from bigops.watchdog.detectors.gpu import GpuConfig
from bigops.watchdog.findings import SEVERITIES

DAY = 86400.0
HOUR = 3600.0
T0 = 1_800_000_000.0
"""Simulated time of the run's start (a fixed epoch: the runs are reproducible)."""

LLAMA3_PER_DAY = 466 / 54
"""Llama 3's interruption rate (466 in 54 days), the schedule's total rate."""

# schedule kind -> (share of the daily rate, the finding kinds that page it)
KINDS: dict[str, tuple[float, tuple[str, ...]]] = {
    "crash": (1.4, ("RankCrash",)),
    "hang": (0.6, ("TrainingHang",)),
    "startup_hang": (0.4, ("TrainingHang",)),
    "spike": (0.45, ("LossSpike",)),
    "gradnorm": (0.45, ("GradNormSpike",)),
    "nan": (0.5, ("NonFiniteLoss", "NonFiniteGradNorm", "SkippedSteps")),
    "desync": (0.45, ("TPDesync",)),
    "slow": (0.55, ("ThroughputDrop",)),
    "disk": (1 / 7, ("DiskFullSoon",)),
    "xid79": (0.9, ("GpuXid",)),
    "xid48": (0.7, ("GpuXid",)),
    "hot": (0.8, ("GpuHot",)),
    "ecc": (0.5, ("GpuEccDoubleBit",)),
}
SPIKE_SPACING_S = 16 * HOUR
"""Independent spikes are at least this far apart (960 steps): a spike within ``rollback_skip_batches`` x
2**attempt steps of an earlier rollback's spike is, by design, the same spike region
(``bigops.watchdog.decide.in_region``), and its rollback budget is shared."""
RUN_LEVEL = ("crash", "hang", "startup_hang", "spike")
"""Faults that take the ranks down or roll them back: one at a time, on a training run."""
METRIC_LEVEL = ("spike", "gradnorm", "nan")
"""Faults in the loss / grad-norm stream: one at a time (each detector needs its normal history)."""
HOSTS = ("node0", "node1")
GPUS_PER_HOST = 2


# ------------------------------------------------------------------------------------------- the clock
class SimClock:
    def __init__(self, now: float = T0):
        self.now = now


class _FakeTime:
    """``time`` for the watchdog modules: ``time()`` is the simulated clock, ``sleep`` returns at once."""

    def __init__(self, clock: SimClock):
        self._clock = clock

    def time(self) -> float:
        return self._clock.now

    def sleep(self, seconds: float) -> None:
        return None

    def __getattr__(self, name):
        return getattr(real_time, name)


PATCHED = ("bigops.watchdog.supervisor", "bigops.watchdog.daemon", "bigops.watchdog.executor",
           "bigops.watchdog.actions", "bigops.watchdog.journal", "bigops.watchdog.approvals",
           "bigops.watchdog.chain", "trainer.checkpoint")


@contextlib.contextmanager
def sim_clock(clock: SimClock):
    """The watchdog modules' ``time`` reads ``clock`` inside the block."""
    import importlib
    from bigops.watchdog import daemon
    saved = []
    save_every, daemon.SAVE_EVERY_S = daemon.SAVE_EVERY_S, STATE_SAVE_EVERY_S
    for name in PATCHED:
        module = importlib.import_module(name)
        if hasattr(module, "time"):
            saved.append((module, module.time))
            module.time = _FakeTime(clock)
    try:
        yield clock
    finally:
        for module, original in saved:
            module.time = original
        daemon.SAVE_EVERY_S = save_every


STATE_SAVE_EVERY_S = 3600.0
"""``watchdog/state.json`` is saved on every notice and action, and otherwise at least this often in
simulated time (the daemon: every minute; here a pass is 5 minutes). The state lives in memory, as in the
supervisor, so this costs only CPU (a save re-encodes the incident table), never behaviour."""


# ------------------------------------------------------------------------------------ ground truth
@dataclass
class Episode:
    kind: str
    resource: str
    start: float
    end: float | None = None
    detail: dict = field(default_factory=dict)

    def families(self) -> tuple[str, ...]:
        return KINDS[self.kind][1]


@dataclass
class Fault:
    kind: str
    time: float
    params: dict = field(default_factory=dict)


def make_schedule(days: float, seed: int, rate_per_day: float = LLAMA3_PER_DAY, storm_at_day: float | None = 2.5
                  ) -> list[Fault]:
    """Seeded faults for ``days`` at ``rate_per_day`` in all (Poisson per kind, shares of ``KINDS``); GPU
    faults come back on the GPU that failed before more often than not; the disk fills up about weekly; a
    storm (every GPU failing at once, with a full disk) on ``storm_at_day``."""
    rng = random.Random(seed)
    total_share = sum(share for share, _ in KINDS.values() if share)
    faults: list[Fault] = []
    gpus = [(h, i) for h in HOSTS for i in range(GPUS_PER_HOST)]
    for kind, (share, _) in KINDS.items():
        rate = rate_per_day * share / total_share / DAY
        t = T0 + 2 * HOUR  # the detectors' warm-up first
        last_gpu = None
        while True:
            t += rng.expovariate(rate) if kind != "disk" else rng.uniform(6 * DAY, 8 * DAY)
            if t >= T0 + days * DAY:
                break
            params: dict = {}
            if kind in ("xid79", "xid48", "hot", "ecc"):
                gpu = last_gpu if last_gpu is not None and rng.random() < 0.6 else rng.choice(gpus)
                last_gpu = gpu
                params = {"host": gpu[0], "index": gpu[1]}
                if kind == "hot":
                    params["duration"] = rng.uniform(0.5, 4) * HOUR
                    params["temperature"] = rng.choice((87.0, 92.0))
                if kind == "ecc":
                    params["duration"] = rng.uniform(0.5, 3) * HOUR
            elif kind == "hang":
                params = {"repeat": rng.choice((1, 2, 2))}  # the same step again in the next launch
            elif kind == "spike":
                params = {"recur": rng.random() < 0.5}  # bad data past the first skip: it comes back
            elif kind == "gradnorm":
                params = {"records": rng.randint(60, 200)}
            elif kind == "nan":
                params = {"records": rng.randint(6, 60), "every": rng.choice((1, 2, 3))}
            elif kind == "desync":
                params = {"long": rng.random() < 0.5, "duration": rng.uniform(2, 10) * HOUR}
            elif kind == "slow":
                params = {"duration": rng.uniform(1.5, 8) * HOUR, "factor": rng.choice((0.9, 0.8, 0.6))}
            elif kind == "disk":
                params = {"duration": rng.uniform(3, 18) * HOUR, "critical": rng.random() < 0.6}
            faults.append(Fault(kind, t, params))
    if storm_at_day is not None and storm_at_day < days:
        t = T0 + storm_at_day * DAY
        faults += [Fault("xid79", t, {"host": h, "index": i, "storm": True}) for h, i in gpus]
        faults += [Fault("hot", t, {"host": h, "index": i, "duration": 2 * HOUR, "temperature": 93.0, "storm": True})
                   for h, i in gpus]
        faults.append(Fault("disk", t, {"duration": 4 * HOUR, "critical": True, "storm": True}))
        faults.append(Fault("hang", t, {"repeat": 1, "storm": True}))
    return sorted(faults, key=lambda f: f.time)


# --------------------------------------------------------------------------------------- the notifier
class _Channel:
    name = "sim"

    def __init__(self):
        self.delivered: list[dict] = []
        self.lock = threading.Lock()

    def send(self, event: dict, line: str) -> None:
        with self.lock:
            self.delivered.append(event)


class RecordingNotifier:
    """The ``bigops.notify.notifier.Notifier`` interface: keeps every page (with the simulated time), and
    hands each to a real ``Notifier`` (rate limit 20/min, recording channel) so that the harness can check
    that no critical page is dropped."""

    def __init__(self, clock: SimClock, min_severity: str = "warning"):
        from bigops.notify.notifier import Notifier
        self.clock = clock
        self.channel = _Channel()
        self.real = Notifier([self.channel], min_severity=min_severity, rate_limit_per_minute=20, retries=1,
                             on_result=self._result)
        self.channels = self.real.channels
        self.pages: list[dict] = []
        self.results: list[dict] = []

    def _result(self, result: dict) -> None:
        self.results.append(result)

    def wanted(self, severity: str) -> bool:
        return self.real.wanted(severity)

    def submit(self, event: dict, line: str) -> bool:
        if not self.wanted(event["severity"]):
            return False
        self.pages.append({"time": self.clock.now, "line": line, **{k: event.get(k) for k in (
            "notice", "incident", "kind", "severity", "key", "type", "action", "duration_s", "reminder")}})
        return self.real.submit({**event, "sim_seq": len(self.pages)}, line)


# ------------------------------------------------------------------------------------ the stand-in ranks
RANKS = 4
TP = 2
GBS = 8
STEP_S = 60.0
TOKENS_PER_S = 120_000.0
CHECKPOINT_EVERY = 30
KEEP_CHECKPOINTS = 10
STARTUP_S = 180.0
CHECKPOINT_BYTES = int(2.3e12)
DISK_TOTAL = int(100e12)
DESYNC_EVERY = 10
GPU_SAMPLE_S = 60.0
"""The GPU sampler's interval."""
GPU_TAIL_S = GpuConfig().xid_window_s
"""How long an XID stays in the watchdog's view after the sample that reported it."""
FAKE_PID_BASE = 7_000_000
"""Above any pid_max: nothing the watchdog might signal exists."""


def _noise(step: int, salt: int) -> float:
    """Deterministic noise in [-1, 1) per step (a replayed step sees the same data, hence the same loss)."""
    x = math.sin(step * 12.9898 + salt * 78.233) * 43758.5453
    return 2 * (x - math.floor(x)) - 1


class SimRanks:
    """Four ranks on two hosts (TP 2 x DP 2), one launch at a time, writing what the trainer writes."""

    def __init__(self, sim: "Sim"):
        self.sim, self.run = sim, sim.run
        self.status = "down"
        self.launch_id = ""
        self.launches = 0
        self.step = 0
        self.consumed = 0
        self.clock_step = 0.0  # when the last step ended
        self.startup_until = 0.0
        self.skips: list[tuple[int, int]] = []
        self.hang_at: int | None = None
        self.hang_launches = 0
        self.startup_hang = False
        self.damaged_since: int | None = None  # a spike in the weights since this step
        self.bad_samples: list[int] = []  # data positions that blow the loss up
        self.phase = "startup"
        self.heartbeat_time = 0.0
        self.heartbeat_step = 0
        (self.run.telemetry / "heartbeat").mkdir(parents=True, exist_ok=True)
        (self.run.telemetry / "gpu").mkdir(parents=True, exist_ok=True)
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        (self.run.root / "control").mkdir(parents=True, exist_ok=True)

    # -- launches ------------------------------------------------------------------------------------
    def launch(self, now: float, launch_id: str) -> None:
        from trainer import checkpoint as ckpt
        from trainer.control import read_skip_ranges
        self.launches += 1
        self.launch_id = launch_id
        self.status, self.phase = "starting", "startup"
        self.startup_until = now + STARTUP_S
        self.heartbeat_time, self.heartbeat_step = now, 0  # the trainer beats step 0 before it loads
        found = ckpt.find_resumable(self.run, hashes=False) if self.run.latest.exists() else None
        self.step = int(found.manifest.get("step", 0)) if found else 0
        self.consumed = int(found.manifest.get("consumed_samples", 0)) if found else 0
        self.skips = read_skip_ranges(self.run.root)
        if self.damaged_since is not None and self.step < self.damaged_since:
            self.damaged_since = None  # weights from before the spike
            self.sim.end_episode("spike", "run", now)
        if self.sim.pending_startup_hang:
            self.sim.pending_startup_hang = False
            self.startup_hang = True
            self.sim.begin_episode("startup_hang", "run", now, launch=launch_id)
        self.write_heartbeats()

    def stop(self, now: float) -> None:
        """Killed (the watchdog) or crashed: nothing runs until the next launch."""
        if self.status == "hung" or self.startup_hang:
            kind = "startup_hang" if self.startup_hang else "hang"
            self.sim.end_episode(kind, "run", now)
        self.status, self.startup_hang = "down", False
        self.phase = "exit"
        self.write_heartbeats()

    def bad_samples_ahead(self) -> bool:
        """A spike's bad data not read (nor skipped) yet: the run is not free for another run-level fault."""
        return any(b >= self.consumed for b in self.bad_samples if not any(s <= b < e for s, e in self.skips))

    # -- one pass of training ------------------------------------------------------------------------
    def advance(self, now: float) -> None:
        if self.status == "starting" and not self.startup_hang and now >= self.startup_until:
            self.status, self.clock_step = "training", self.startup_until
            self.phase = "step"
        if self.status != "training":
            return
        records = []
        while True:
            seconds = STEP_S / self.sim.speed(self.clock_step)
            if self.clock_step + seconds > now:
                break
            if self.hang_at is not None and self.step + 1 == self.hang_at:
                self.status, self.phase = "hung", "forward"
                self.heartbeat_time, self.heartbeat_step = self.clock_step, self.step + 1
                self.hang_launches += 1
                self.sim.begin_episode("hang", "run", self.clock_step, step=self.hang_at, launch=self.launch_id)
                if self.hang_launches >= self.sim.hang_repeat:
                    self.hang_at, self.hang_launches = None, 0
                break
            self.clock_step += seconds
            records.append(self.train_step(self.clock_step, seconds))
            self.heartbeat_time, self.heartbeat_step = self.clock_step, self.step
            if self.step % CHECKPOINT_EVERY == 0:
                self.save(self.clock_step)
        if records:
            with open(self.run.metrics, "a") as handle:
                handle.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self.write_heartbeats()

    def train_step(self, t: float, seconds: float) -> dict:
        sim = self.sim
        start = advance_samples(self.consumed, 0, self.skips)
        batch = (start, advance_samples(start, GBS, self.skips))
        self.consumed = batch[1]
        self.step += 1
        step = self.step
        if self.damaged_since is None and any(batch[0] <= b < batch[1] and not any(s <= b < e for s, e in self.skips)
                                              for b in self.bad_samples):
            self.damaged_since = step
            sim.begin_episode("spike", "run", t, step=step)
        loss = 2.0 + 3.0 * math.exp(-step / 4000) + 0.01 * _noise(step, 1)
        grad = 1.0 + 0.05 * _noise(step, 2)
        skipped = False
        if self.damaged_since is not None:
            loss += 2.5
            grad *= 8
        g = sim.active.get(("gradnorm", "run"))
        if g is not None:
            g.detail["left"] -= 1
            if g.detail["left"] % 2 == 0:
                grad *= 60
            if g.detail["left"] <= 0:
                sim.end_episode("gradnorm", "run", t)
        n = sim.active.get(("nan", "run"))
        if n is not None:
            n.detail["left"] -= 1
            if n.detail["left"] % n.detail["every"] == 0:
                loss, grad, skipped = float("nan"), float("nan"), True
            if n.detail["left"] <= 0:
                sim.end_episode("nan", "run", t)
        tps = TOKENS_PER_S * sim.speed(t) * (1 + 0.003 * _noise(step, 3))
        record = {"step": step, "time": t, "loss": loss, "grad_norm": grad, "lr": 3e-4,
                  "tokens_per_second": tps, "step_seconds": seconds, "consumed_samples": self.consumed,
                  "skipped": skipped}
        if step % DESYNC_EVERY == 0:
            record["ln_desync"] = sim.desync_value(t)
        sync = self.run.root / "control" / "sync-layernorm"
        if sync.exists():  # rank 0 honours it at this step (trainer.train), and says so
            request = sync.read_text().strip()[:1000]
            sync.unlink()
            after = sim.synced(t)
            record["ln_desync"] = after
            from trainer.rundir import append_jsonl
            append_jsonl(self.run.root / "events.jsonl", {
                "time": t, "type": "action", "action": "sync-layernorm", "source": "trainer", "step": step,
                "request": request, "ln_desync_after": after, "outcome": f"synced at step {step}"})
        return record

    def save(self, t: float) -> None:
        from trainer import checkpoint as ckpt
        from trainer.rundir import append_jsonl, atomic_write_text
        tag = ckpt.tag_for(self.step)
        path = self.run.checkpoint(tag)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        (path / "mp_rank_00_model_states.pt").write_bytes(b"w" * 64)
        ckpt.write_manifest(path, tag, {"step": self.step, "consumed_samples": self.consumed,
                                        "skip_ranges": [list(r) for r in self.skips]})
        atomic_write_text(self.run.latest, tag + "\n")
        append_jsonl(self.run.telemetry / "checkpoints.jsonl", {"kind": "save", "tag": tag, "step": self.step,
                                                                "time": t, "seconds": 30.0,
                                                                "bytes": CHECKPOINT_BYTES})
        tags = ckpt.complete_tags(self.run)
        for old in tags[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(self.run.checkpoint(old), ignore_errors=True)

    def write_heartbeats(self) -> None:
        from trainer.rundir import atomic_write_text
        for rank in range(RANKS):
            beat = {"rank": rank, "host": HOSTS[rank // TP], "pid": FAKE_PID_BASE + self.launches * 16 + rank,
                    "step": self.heartbeat_step, "time": self.heartbeat_time, "phase": self.phase,
                    "launch": self.launch_id, "stage": 0, "dp_rank": rank // TP, "tp": TP,
                    "forward_s_recent": [0.8] * 16}
            atomic_write_text(self.run.telemetry / "heartbeat" / f"rank-{rank:05d}.json", json.dumps(beat))

    def write_gpu_samples(self, now: float) -> None:
        """One sample per GPU every ``GPU_SAMPLE_S`` since the last pass (``bigops.gpu.monitor``'s format); an
        XID is in one sample only (the sampler reports the events since its last sample)."""
        sim = self.sim
        times = [now - k * GPU_SAMPLE_S for k in range(max(1, int(sim.config.pass_s // GPU_SAMPLE_S)) - 1, -1, -1)]
        for host in HOSTS:
            lines = []
            for t in times:
                for index in range(GPUS_PER_HOST):
                    gpu = f"{host}:{index}"
                    hot = sim.active.get(("hot", gpu))
                    ecc = sim.active.get(("ecc", gpu))
                    xids = [int(k[3:]) for k in ("xid79", "xid48") if t == now and sim.fresh_xid.pop((k, gpu), False)]
                    lines.append(json.dumps({
                        "index": index, "time": t, "host": host, "uuid": f"GPU-{host}-{index}",
                        "temperature_c": hot.detail["temperature"] if hot else 62.0,
                        "ecc_volatile_double_bit": 1 if ecc else 0, "xid_errors": xids, "throttle_reasons": [],
                        "remapped_rows_failure": False, "remapped_rows_pending": False}))
            with open(self.run.telemetry / "gpu" / f"{host}.jsonl", "a") as handle:
                handle.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------- the old dedup
def old_key(f) -> str | None:
    """The key the detectors gave this finding before issue 13 (``git show d84921f:bigops/watchdog/
    detectors/``): a step or a window start in it. None: the old code had no such finding (a resolve)."""
    e = f.evidence or {}
    if f.resolved:
        return None
    if f.kind == "TrainingHang":
        return f"TrainingHang:{f.step}"
    if f.kind == "LossSpike":
        return f"LossSpike:{e.get('start_step', f.step)}"
    if f.kind == "GradNormSpike":
        return f"GradNormSpike:{e.get('episode_start', f.step)}"
    if f.kind in ("NonFiniteLoss", "NonFiniteGradNorm", "SkippedSteps"):
        return f"NonFinite:{e.get('streak_start', f.step)}"
    if f.kind == "ThroughputDrop":
        return f"ThroughputDrop:{(f.step or 0) - 19}"  # the start of the last 20 records: it slides
    if f.kind == "TPDesync":
        return f"TPDesync:{e.get('since_step', f.step)}"
    if f.kind == "GpuXid":
        return f"GpuXid:{e.get('host')}:{e.get('index')}:{','.join(map(str, e.get('xids') or [e.get('xid')]))}"
    return f.key  # disk, GPU heat/ECC/remap/throttle, stragglers...: the same constant keys


class OldDedup:
    """``WatchState.is_new`` of d84921f: a key reported once is never reported again unless its severity
    rises; a page per finding that is new and at least ``min_severity``."""

    def __init__(self, min_severity: str = "warning"):
        self.reported: dict[str, str] = {}
        self.min = SEVERITIES.index(min_severity)
        self.pages: list[dict] = []

    def feed(self, findings, now: float) -> None:
        seen: set[str] = set()
        for f in findings:
            key = old_key(f)
            if key is None or key in seen:
                continue
            seen.add(key)
            before = self.reported.get(key)
            new = before is None or SEVERITIES.index(f.severity) > SEVERITIES.index(before)
            if new:
                self.reported[key] = f.severity
                if SEVERITIES.index(f.severity) >= self.min:
                    self.pages.append({"time": now, "kind": f.kind, "key": key, "severity": f.severity,
                                       "resource": _resource_of(f.kind, f.evidence or {}, f.key)})


def _resource_of(kind: str, evidence: dict, key: str) -> str:
    if kind.startswith("Gpu"):
        parts = key.split(":")
        return ":".join(parts[1:3]) if len(parts) >= 3 else "?"
    return "run"


# ---------------------------------------------------------------------------------------- the simulation
class _FakeProc:
    """What the supervisor's kill path is handed: never a real process (the kill goes to ``SimRanks``)."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self):
        return self.returncode


@dataclass
class SimConfig:
    days: float = 90.0
    seed: int = 0
    pass_s: float = 300.0
    rate_per_day: float = LLAMA3_PER_DAY
    storm_at_day: float | None = 2.5
    operator_after_s: float = 12 * HOUR
    """A stuck run nobody was told about is found by a person after this long (then restarted by hand)."""


class Sim:
    def __init__(self, root: Path, config: SimConfig = SimConfig()):
        from bigops.watchdog.supervisor import Supervisor
        from trainer.config import RunConfig
        from trainer.rundir import RunDir
        self.config = config
        self.clock = SimClock(T0)
        self.run = RunDir(Path(root))
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.notifier = RecordingNotifier(self.clock)
        cfg = RunConfig()
        cfg.train.global_batch_size = GBS
        self.cfg = cfg
        self.lines: list[str] = []
        self.sup = Supervisor(self.run, cfg, spawn=lambda: None, notifier=self.notifier, say=self.lines.append)
        self.sup.config = replace(self.sup.config, disk_usage=self.disk_usage)
        self.sup.kill_ranks = lambda proc: self.ranks.stop(self.clock.now)
        self.ranks = SimRanks(self)
        self.proc = _FakeProc(FAKE_PID_BASE)
        self.faults = make_schedule(config.days, config.seed, config.rate_per_day, config.storm_at_day)
        self.waiting: list[Fault] = []
        self.episodes: list[Episode] = []
        self.active: dict[tuple[str, str], Episode] = {}
        self.fresh_xid: dict[tuple[str, str], bool] = {}
        self.pending_startup_hang = False
        self.hang_repeat = 1
        self.last_end: dict[tuple[str, str], float] = {}
        self.metric_quiet_since = T0
        self.old = OldDedup()
        self.gave_up: list[float] = []
        self.operator: list[tuple[float, str]] = []
        self.passes = 0
        self.spawned = T0
        self.cpu_s = 0.0

    # -- ground truth --------------------------------------------------------------------------------
    def begin_episode(self, kind: str, resource: str, t: float, **detail) -> Episode:
        e = Episode(kind, resource, t, None, dict(detail))
        self.episodes.append(e)
        self.active[(kind, resource)] = e
        return e

    def end_episode(self, kind: str, resource: str, t: float) -> None:
        e = self.active.pop((kind, resource), None)
        if e is not None:
            e.end = t
            self.last_end[(kind, resource)] = t

    # -- the world's state at a time ---------------------------------------------------------------
    def speed(self, t: float) -> float:
        e = self.active.get(("slow", "run"))
        return e.detail["factor"] if e is not None and e.start <= t else 1.0

    def desync_value(self, t: float) -> float:
        e = self.active.get(("desync", "run"))
        return 5e-3 if e is not None and e.start <= t else 0.0

    def synced(self, t: float) -> float:
        """The trainer averaged the TP-duplicated parameters: a quick episode ends; a long one drifts on."""
        e = self.active.get(("desync", "run"))
        if e is None:
            return 0.0
        e.detail["syncs"] = e.detail.get("syncs", 0) + 1
        if not e.detail["long"]:
            self.end_episode("desync", "run", t)
            return 0.0
        return 5e-3

    def disk_usage(self, path: Path) -> DiskUsage:
        e = self.active.get(("disk", "run"))
        free = DISK_TOTAL * 0.4
        if e is not None:
            free = CHECKPOINT_BYTES * 1.5 if e.detail["critical"] else DISK_TOTAL * 0.03
        return DiskUsage(total_bytes=DISK_TOTAL, free_bytes=int(free), total_inodes=10**9, free_inodes=5 * 10**8)

    # -- faults --------------------------------------------------------------------------------------
    def _busy_run(self) -> bool:
        return any(k in RUN_LEVEL for k, _ in self.active) or self.ranks.status != "training" \
            or self.ranks.hang_at is not None or self.pending_startup_hang or self.ranks.bad_samples_ahead()

    def gap_s(self, kind: str) -> float:
        """How long after an episode ends the same problem may come back as a new one: past what the watchdog
        still sees of it (an XID stays in the GPU sample tail) and its quiet period."""
        quiet = self.sup.config.incidents.resolve_after_s
        if kind.startswith("xid"):
            return GPU_TAIL_S + self.config.pass_s + quiet + HOUR
        return quiet + HOUR

    def inject(self, fault: Fault, now: float) -> bool:
        """Start ``fault`` now if the world allows it (False: try again next pass)."""
        k, p = fault.kind, fault.params
        resource = "run"
        if "host" in p:
            resource = f"{p['host']}:{p['index']}" + (f":{k[3:]}" if k.startswith("xid") else "")
        if now - self.last_end.get((k, resource), -math.inf) < self.gap_s(k):
            return False
        if k in RUN_LEVEL and self._busy_run():
            return False
        if k == "spike" and now - self.last_end.get(("spike", "run"), -math.inf) < SPIKE_SPACING_S:
            return False
        if k in METRIC_LEVEL and (any(key in self.active for key in (("gradnorm", "run"), ("nan", "run"),
                                                                      ("spike", "run")))
                                  or now - self.metric_quiet_since < 2 * HOUR or self.ranks.status != "training"):
            return False
        if k == "crash":
            self.begin_episode("crash", "run", now)
            self.crash(now, "RuntimeError: CUDA error: an illegal memory access was encountered (sim)")
        elif k == "startup_hang":
            self.pending_startup_hang = True
            self.begin_episode("crash", "run", now, before_startup_hang=True)
            self.crash(now, "RuntimeError: NCCL communicator was aborted (sim)")
        elif k == "hang":
            self.hang_repeat = p.get("repeat", 1)
            self.ranks.hang_at = (self.ranks.step // 100 + 1) * 100  # the next evaluation step
        elif k == "spike":
            first = self.ranks.consumed + GBS * 3
            self.ranks.bad_samples = [first] + ([first + GBS * (self.cfg.watchdog.rollback_skip_batches + 37)]
                                                if p.get("recur") else [])
        elif k in ("gradnorm", "nan"):
            self.begin_episode(k, "run", now, left=p["records"], every=p.get("every", 2))
        elif k in ("desync", "slow", "disk"):
            if (k, "run") in self.active:
                return False
            self.begin_episode(k, "run", now, **p)
        else:  # GPU faults
            gpu = f"{p['host']}:{p['index']}"
            resource = f"{gpu}:{k[3:]}" if k.startswith("xid") else gpu
            if (k, resource) in self.active:
                return False
            self.begin_episode(k, resource, now, **p)
            if k.startswith("xid"):
                self.fresh_xid[(k, gpu)] = True
        return True

    def expire(self, now: float) -> None:
        """Episodes that end by themselves."""
        for (kind, resource), e in list(self.active.items()):
            if kind in ("hot", "ecc", "disk", "slow") and now >= e.start + e.detail["duration"]:
                self.end_episode(kind, resource, now)
            elif kind == "desync" and e.detail["long"] and now >= e.start + e.detail["duration"]:
                self.end_episode(kind, resource, now)
            elif kind.startswith("xid"):
                self.end_episode(kind, resource, now)  # one sample's event; the watchdog keeps it in view
        if any(k in self.active for k in (("gradnorm", "run"), ("nan", "run"), ("spike", "run"))):
            self.metric_quiet_since = now

    # -- the supervisor's loop, on the simulated clock ------------------------------------------------
    def relaunch(self, now: float) -> None:
        self.sup.launch_id, self.sup.next_restart = uuid.uuid4().hex[:12], None
        self.spawned = now
        self.proc = _FakeProc(FAKE_PID_BASE + self.ranks.launches + 1)
        self.ranks.launch(now, self.sup.launch_id)

    def follow(self, now: float) -> None:
        """What ``Supervisor.loop`` does once the ranks are down: the restart ``decide`` chose, or give up."""
        follow, self.sup.next_restart = self.sup.next_restart, None
        if follow is None or isinstance(follow, GiveUp):
            if follow is not None:
                self.sup.execute(follow)
            self.gave_up.append(now)
            self.operator.append((now, "the supervisor gave up: a person fixed the data and restarted by hand"))
            if self.ranks.damaged_since is not None:  # a person rolls back and drops the bad data
                self.ranks.damaged_since, self.ranks.bad_samples = None, []
                self.end_episode("spike", "run", now)
        else:
            self.sup.execute(follow)
        self.relaunch(now)

    def crash(self, now: float, message: str) -> None:
        """The ranks exit FAILED: ``Supervisor.loop``'s crash path."""
        from bigops.watchdog.findings import Finding
        self.ranks.stop(now)
        self.proc.returncode = 1
        reason = f"crash (rank 0: {message})"
        self.sup.act([self.sup.incident("RankCrash", reason)], None)
        # the old supervisor paged each crash once, by its restart (or give-up) action
        self.old.feed([Finding("RankCrash", "critical", reason, key=f"RankCrash:{self.sup.launch_id}")], now)
        self.follow(now)

    def one_pass(self, now: float) -> None:
        from bigops.watchdog.daemon import tick
        from bigops.watchdog.executor import acted_on, incidents_of
        self.clock.now = now
        self.expire(now)
        self.ranks.advance(now)
        if self.ranks.status == "training" and self.active.get(("crash", "run")) is not None \
                and self.ranks.clock_step > self.spawned:
            self.end_episode("crash", "run", now)  # training again
        for fault in [f for f in self.waiting]:
            if self.inject(fault, now):
                self.waiting.remove(fault)
        while self.faults and self.faults[0].time <= now:
            fault = self.faults.pop(0)
            if not self.inject(fault, now):
                self.waiting.append(fault)
        self.ranks.write_gpu_samples(now)
        new, facts = tick(self.run, self.sup.state, now=now, config=self.sup.config, notifier=self.notifier,
                          extra=self.sup.carried_findings(self.spawned))
        self.old.feed(facts["findings"], now)
        self.lines += facts.get("actions", [])
        incidents = [i for i in incidents_of(facts, facts["findings"], now)
                     if (i.get("kind") == "TrainingHang" or (i.get("kind") == "LossSpike"
                                                             and i.get("severity") == "critical"))
                     and i.get("id") not in self.sup.notified and not acted_on(self.sup.executor.journal, i["id"])]
        if incidents and self.ranks.status != "down":
            reason = self.sup.act(incidents, self.proc)
            if reason is not None:
                self.follow(now)
        stuck = [e for e in self.active.values() if e.kind in ("hang", "startup_hang")
                 and now - e.start > self.config.operator_after_s]
        if stuck:  # nobody was told: a person finds it, kills and restarts by hand
            self.operator.append((now, f"{stuck[0].kind} since {stuck[0].start - T0:.0f} s: killed by hand"))
            self.ranks.stop(now)
            self.relaunch(now)
        self.passes += 1

    def run_all(self) -> "Report":
        end = T0 + self.config.days * DAY
        started = real_time.process_time()
        with sim_clock(self.clock):
            self.relaunch(T0)
            now = T0
            while now < end:
                now += self.config.pass_s
                self.one_pass(now)
        self.cpu_s = real_time.process_time() - started
        self.notifier.real.drain(timeout=60)
        return Report(self)


# ----------------------------------------------------------------------------------------------- report
SLACK_S = 2 * HOUR
"""A page belongs to an episode from its start to this long after its end (detection delay, quiet period)."""


class Report:
    """Pages and actions matched to the injected episodes; the table; the invariants."""

    def __init__(self, sim: Sim):
        self.sim = sim
        self.end = sim.clock.now
        self.episodes = sim.episodes
        self.pages = sim.notifier.pages
        self.notices = [p for p in self.pages if p.get("notice")]
        self.incidents: dict[str, dict] = {}
        for p in self.notices:
            i = self.incidents.setdefault(p["incident"], {"id": p["incident"], "kind": p["kind"], "key": p["key"],
                                                          "open": [], "resolve": [], "remind": [], "escalate": []})
            i[p["notice"]].append(p["time"])
            if p["notice"] == "open":
                i["kind"] = p["kind"]
        self.actions = self._actions()
        self.match_bigops = self._match([{"time": i["open"][0], "kind": i["kind"], "key": i["key"],
                                          "resource": _resource_of(i["kind"], {}, i["key"]), "incident": i["id"]}
                                         for i in self.incidents.values() if i["open"]])
        self.match_old = self._match(sim.old.pages)

    def _actions(self) -> list[dict]:
        """Every action the watchdog carried out: its ``action`` records in events.jsonl (one per execution:
        an action done twice would show twice), not the trainer's own."""
        out = []
        with open(self.sim.run.root / "events.jsonl") as handle:
            for line in handle:
                if '"action"' not in line:
                    continue
                event = json.loads(line)
                if event.get("type") == "action" and event.get("source") != "trainer":
                    out.append({"action": event["action"], "incident": event.get("incident"),
                                "intent": event.get("intent"), "time": event["time"]})
        return out

    def _match(self, pages: list[dict]) -> dict:
        """Each page to the episode it tells of (same family and resource, in [start, end + slack]; the
        latest such start); returns {"by_episode": {index: [pages]}, "unmatched": [pages]}."""
        by_episode: dict[int, list[dict]] = {}
        unmatched = []
        for page in pages:
            best = None
            for n, e in enumerate(self.episodes):
                if page["kind"] not in e.families() or not self._same_resource(e, page):
                    continue
                end = (e.end if e.end is not None else self.end) + self._slack(e)
                if e.start <= page["time"] <= end and (
                        best is None or e.start > self.episodes[best].start):
                    best = n
            if best is None:
                unmatched.append(page)
            else:
                by_episode.setdefault(best, []).append(page)
        return {"by_episode": by_episode, "unmatched": unmatched}

    def _slack(self, e: Episode) -> float:
        if e.kind.startswith("xid"):  # an XID stays in the GPU sample tail this long
            return GPU_TAIL_S + self.sim.config.pass_s + SLACK_S
        return SLACK_S

    @staticmethod
    def _same_resource(e: Episode, page: dict) -> bool:
        """GPU pages name the GPU (and an XID page its code: ``GpuXid:<host>:<index>:<xid>``, the old key
        ``...:<sorted xids>``); run-level pages are about the run."""
        if not page["kind"].startswith("Gpu"):
            return True
        if page.get("resource") != ":".join(e.resource.split(":")[:2]):
            return False
        return not e.kind.startswith("xid") or e.kind[3:] in page["key"].split(":")[-1].split(",")

    # -- figures -----------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        rows = []
        for kind in KINDS:
            eps = [n for n, e in enumerate(self.episodes) if e.kind == kind]
            incident_ids = {p["incident"] for n in eps for p in self.match_bigops["by_episode"].get(n, [])}
            incs = [self.incidents[i] for i in incident_ids]
            acts = [a for a in self.actions if a["incident"] in incident_ids]
            old_pages = sum(len(self.match_old["by_episode"].get(n, [])) for n in eps)
            rows.append({
                "kind": kind, "episodes": len(eps), "incidents": len(incs),
                "pages": sum(len(i["open"]) for i in incs), "escalations": sum(len(i["escalate"]) for i in incs),
                "resolves": sum(len(i["resolve"]) for i in incs), "reminders": sum(len(i["remind"]) for i in incs),
                "actions": len(acts), "action_names": sorted({a["action"] for a in acts}),
                "silent": sum(1 for n in eps if n not in self.match_bigops["by_episode"]),
                "old_pages": old_pages,
                "old_silent": sum(1 for n in eps if n not in self.match_old["by_episode"]),
            })
        return rows

    def figures(self) -> dict:
        rows = self.rows()
        eps = sum(r["episodes"] for r in rows)
        incs = sum(r["incidents"] for r in rows)
        pages = sum(r["pages"] for r in rows)
        old_pages = sum(r["old_pages"] for r in rows)
        return {
            "days": self.sim.config.days, "seed": self.sim.config.seed, "pass_s": self.sim.config.pass_s,
            "passes": self.sim.passes, "episodes": eps, "incidents": incs,
            "pages_per_incident": pages / incs if incs else None,
            "pages_per_episode": pages / eps if eps else None,
            "longest_silent_recurrence_h": self.longest_silent(self.match_bigops) / HOUR,
            "silent_episodes": sum(r["silent"] for r in rows),
            "unmatched_pages": len(self.match_bigops["unmatched"]),
            "old_pages_per_episode": old_pages / eps if eps else None,
            "old_longest_silent_recurrence_h": self.longest_silent(self.match_old) / HOUR,
            "old_silent_episodes": sum(r["old_silent"] for r in rows),
            "old_unmatched_pages": len(self.match_old["unmatched"]),
            "other_pages": len([p for p in self.pages if not p.get("notice")]),
            "gave_up": len(self.sim.gave_up), "operator": len(self.sim.operator),
            "critical_pages": sum(1 for p in self.pages if p["severity"] == "critical"),
            "rate_limited": sum(1 for r in self.sim.notifier.results if r.get("outcome") == "rate-limited"),
            "rate_limited_critical": sum(1 for r in self.sim.notifier.results
                                         if r.get("outcome") == "rate-limited" and r.get("severity") == "critical"),
            "cpu_s": self.sim.cpu_s, "rows": rows,
        }

    def longest_silent(self, match: dict) -> float:
        """The longest episode nobody was paged about (its duration; 0: every episode paged)."""
        worst = 0.0
        for n, e in enumerate(self.episodes):
            if n not in match["by_episode"]:
                worst = max(worst, (e.end if e.end is not None else self.end) - e.start, 1.0)
        return worst

    def table(self) -> str:
        f = self.figures()
        head = (f"{'kind':<13}{'episodes':>9}{'incidents':>10}{'pages':>7}{'escal.':>7}{'resolves':>9}"
                f"{'reminders':>10}{'actions':>8}{'silent':>7} | {'old pages':>9}{'old silent':>11}")
        lines = [head, "-" * len(head)]
        for r in f["rows"]:
            lines.append(f"{r['kind']:<13}{r['episodes']:>9}{r['incidents']:>10}{r['pages']:>7}{r['escalations']:>7}"
                         f"{r['resolves']:>9}{r['reminders']:>10}{r['actions']:>8}{r['silent']:>7} | "
                         f"{r['old_pages']:>9}{r['old_silent']:>11}")
        ppi = f["pages_per_incident"]
        lines += ["-" * len(head),
                  f"{f['days']:g} days, seed {f['seed']}, one pass every {f['pass_s']:g} s ({f['passes']} passes), "
                  f"{f['episodes']} episodes injected ({f['episodes'] / f['days']:.1f}/day), CPU {f['cpu_s']:.0f} s",
                  f"bigops:   pages per incident {ppi:.2f}, per episode {f['pages_per_episode']:.2f}; longest silent "
                  f"recurrence {f['longest_silent_recurrence_h']:.1f} h ({f['silent_episodes']} silent episodes); "
                  f"{f['unmatched_pages']} pages of no injected episode",
                  f"baseline: pages per episode {f['old_pages_per_episode']:.2f}; longest silent recurrence "
                  f"{f['old_longest_silent_recurrence_h']:.1f} h ({f['old_silent_episodes']} silent episodes); "
                  f"{f['old_unmatched_pages']} pages of no injected episode  (old keys + WatchState.is_new)",
                  f"other pages (actions without an incident, give-ups): {f['other_pages']}; supervisor gave up "
                  f"{f['gave_up']}x; operator stepped in {f['operator']}x",
                  f"notifier (20/min per channel): {f['critical_pages']} critical pages, {f['rate_limited_critical']} of "
                  f"them rate-limited; {f['rate_limited']} pages held back in all"]
        return "\n".join(lines)

    # -- invariants --------------------------------------------------------------------------------
    def violations(self) -> list[str]:
        out = []
        remind = self.sim.sup.config.incidents.remind_every_s
        margin = 3 * HOUR
        for i in self.incidents.values():
            if len(i["open"]) != 1:
                out.append(f"incident {i['id']} ({i['key']}): {len(i['open'])} open notices")
            if len(i["resolve"]) > 1:
                out.append(f"incident {i['id']} ({i['key']}): {len(i['resolve'])} resolves")
            visible = GPU_TAIL_S if i["kind"] == "GpuXid" else 0.0
            if not i["resolve"] and i["open"] and i["open"][0] < self.end - margin - visible and not self._still_on(i):
                out.append(f"incident {i['id']} ({i['key']}) opened at +{(i['open'][0] - T0) / HOUR:.1f} h: never "
                           f"resolved")
            if i["open"]:
                duration = (i["resolve"][0] if i["resolve"] else self.end) - i["open"][0]
                if remind > 0 and len(i["remind"]) > duration / remind + 1:
                    out.append(f"incident {i['id']} ({i['key']}): {len(i['remind'])} reminders in "
                               f"{duration / HOUR:.1f} h")
        for n, e in enumerate(self.episodes):
            if n not in self.match_bigops["by_episode"]:
                out.append(f"silent: {e.kind} on {e.resource} at +{(e.start - T0) / HOUR:.2f} h "
                           f"(until +{((e.end or self.end) - T0) / HOUR:.2f} h) {e.detail}: no page")
        counts: dict[tuple[str, str], int] = {}
        for a in self.actions:
            if a["incident"]:
                counts[(a["incident"], a["action"])] = counts.get((a["incident"], a["action"]), 0) + 1
        out += [f"incident {iid}: {action} {n} times" for (iid, action), n in counts.items() if n > 1]
        out += self._expected_actions()
        for p in self.match_bigops["unmatched"]:
            out.append(f"page of no injected episode: {p['kind']} {p['key']} at +{(p['time'] - T0) / HOUR:.2f} h")
        out += self._dropped()
        return out

    def _still_on(self, incident: dict) -> bool:
        for n, pages in self.match_bigops["by_episode"].items():
            if any(p.get("incident") == incident["id"] for p in pages):
                e = self.episodes[n]
                return e.end is None or e.end > self.end - 3 * HOUR
        return True

    def _expected_actions(self) -> list[str]:
        want = {"hang": ("kill", "restart"), "startup_hang": ("kill", "restart"), "crash": ("restart",),
                "spike": ("kill", "rollback", "restart"), "desync": ("sync-layernorm",)}
        out = []
        for n, e in enumerate(self.episodes):
            if e.kind not in want or n not in self.match_bigops["by_episode"]:
                continue
            ids = {p["incident"] for p in self.match_bigops["by_episode"][n]}
            taken = [a["action"] for a in self.actions if a["incident"] in ids]
            done = set(taken)
            out += [f"{e.kind} at +{(e.start - T0) / HOUR:.2f} h: {a} {taken.count(a)} times" for a in sorted(done)
                    if taken.count(a) > 1]
            missing = [a for a in want[e.kind] if a not in done and not ("give-up" in done and a == "restart")]
            if missing:
                out.append(f"{e.kind} at +{(e.start - T0) / HOUR:.2f} h: no {', '.join(missing)} (done: "
                           f"{sorted(done) or 'nothing'})")
        return out

    def _dropped(self) -> list[str]:
        """Every critical page handed to the notifier was delivered by the real ``Notifier`` (its rate limit
        may hold warnings back in a storm, never a critical page)."""
        crit = [n + 1 for n, p in enumerate(self.pages) if p["severity"] == "critical"]
        got = {e.get("sim_seq") for e in self.sim.notifier.channel.delivered}
        lost = [n for n in crit if n not in got]
        if not lost:
            return []
        return [f"{len(lost)} of {len(crit)} critical pages not delivered (e.g. {self.pages[lost[0] - 1]['line'][:120]})"]
