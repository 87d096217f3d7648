"""What a run's facts mean, as pure functions of :class:`~bigops.status.facts.RunFacts` and a given "now".

:func:`summarize` returns a :class:`Status`: the run's state, its progress, its problems (current ones
first, most severe first; what is no longer current kept apart), checkpoint health, the loss trend, the
ranks summarised. The state is decided in this order, each rule for a reason:

1. **given up** — the watchdog's journal holds a give-up newer than every heartbeat: a person must take over
   (whatever the ranks did last);
2. an ``exit.json`` of the ranks' last launch (as new as their last heartbeats): **finished** (0),
   **stopped by switch** (10), **waiting in SLURM** (11 with a chain still kept: the next job resumes),
   **stopped by signal** (11 otherwise), else **crashed**;
3. heartbeats: **hung** when the hang detector names stale ranks (a crash that left no exit record looks
   the same: nothing moves), else **running**; every rank in its ``exit`` phase and no record: **stopped**;
4. no heartbeat: **waiting in SLURM** when a chain is kept, else **not started**.

"Not current": the detectors read a tail of history, so a throughput drop, a straggler or a hang found in
the last records of a run that is no longer running is history, not a problem now; an incident of the
watchdog's table that it has not seen for longer than its quiet period is stale (the watchdog is not
running, or not looking). Both are shown apart, never as problems.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from bigops.status.facts import RunFacts
from bigops.watchdog.incidents import _duration as duration  # the incident pages' wording of a duration
from trainer import exitcodes

RUNNING, HUNG, FINISHED, STOPPED_BY_SWITCH, STOPPED_BY_SIGNAL, STOPPED, CRASHED, WAITING_SLURM, GIVEN_UP, \
    NOT_STARTED = ("running", "hung", "finished", "stopped by switch", "stopped by signal", "stopped", "crashed",
                   "waiting in SLURM", "given up", "not started")
LIVE = (RUNNING, HUNG)
LIVE_KINDS = ("ThroughputDrop", "Straggler", "TrainingHang", "RanksNotRunning", "GpuSamplerSilent", "GpuHot",
              "GpuThrottled")
"""Findings about a run in motion: once the run is not running they describe its past."""
SLACK_S = 5.0
"""An exit record or a give-up older than the newest heartbeat by more than this is from an earlier launch."""
RATE_WINDOW_S = 600.0
"""Steps/s is measured over the records of the last ten minutes of training (at least the last two)."""
SPARK_WIDTH = 40
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
MAX_NAMED_RANKS = 8
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class RunState:
    name: str
    """One of RUNNING, HUNG, FINISHED, STOPPED_BY_SWITCH, STOPPED_BY_SIGNAL, STOPPED, CRASHED, WAITING_SLURM,
    GIVEN_UP, NOT_STARTED."""
    detail: str = ""
    since: float | None = None


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    target: int | None = None
    steps_per_second: float | None = None
    eta_s: float | None = None
    """Seconds to the target at the recent rate (only while running)."""
    last_step_time: float | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    val_loss: float | None = None


@dataclass(frozen=True)
class Problem:
    kind: str
    severity: str
    summary: str
    key: str
    step: int | None = None
    opened: float | None = None
    """When the watchdog opened its incident (None: seen now by status, no incident)."""
    done: tuple[str, ...] = ()
    """What the watchdog did about it ("action: outcome"), oldest first."""
    incident: str | None = None
    stale: str | None = None
    """Why it is not current (None: it is)."""
    see: str | None = None
    """Where to read on: its runbook (a detector's kind has one), or the command that tells more."""

    def __post_init__(self) -> None:
        if self.see is None:
            object.__setattr__(self, "see", f"runbook: runbooks/{self.kind}.md")


@dataclass(frozen=True)
class OddRank:
    rank: int
    host: str | None
    why: str


@dataclass(frozen=True)
class Ranks:
    total: int = 0
    expected: int | None = None
    healthy: int = 0
    odd: tuple[OddRank, ...] = ()
    phases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    latest: str | None
    newest_complete: dict | None
    problem: str | None
    count: int
    partial: tuple[str, ...] = ()
    newest_verified: dict | None = None
    """{"tag", "step"} of the newest checkpoint whose verified stamp vouches for every file."""


@dataclass(frozen=True)
class LossTrend:
    spark: str
    low: float
    high: float
    first_step: int
    last_step: int


@dataclass(frozen=True)
class Status:
    root: str
    now: float
    state: RunState
    progress: Progress
    problems: tuple[Problem, ...]
    stale: tuple[Problem, ...]
    checkpoint: Checkpoint
    ranks: Ranks
    loss_trend: LossTrend | None
    pending: tuple[dict, ...]
    gpus: dict[str, dict]
    tensorboard: str | None
    last_record: dict | None
    startup: dict | None = None
    """The last launch's start-up budget (``trainer.startup``)."""
    spares: dict | None = None
    """The live supervisor's warm spare ranks: {"wanted", "warm", "time"}."""
    goodput: object | None = None
    """The run's goodput (``bigops.goodput.report.Report``; None before the first step)."""


# ------------------------------------------------------------------------------------------------ the state
def newest_beat(beats: dict[int, dict], *, moving: bool = False) -> float | None:
    """The newest heartbeat time (``moving``: of ranks not in the ``exit`` phase)."""
    times = [float(b["time"]) for b in beats.values() if not moving or b.get("phase") != "exit"]
    return max(times) if times else None


def exit_of_last_launch(f: RunFacts) -> dict | None:
    """``exit.json`` when it tells how the ranks' last launch ended (None: an earlier one, or none)."""
    record = f.exit_record
    if not isinstance(record, dict) or not isinstance(record.get("code"), int):
        return None
    last = newest_beat(f.heartbeats, moving=True)
    when = record.get("time")
    if last is None or not isinstance(when, (int, float)):
        return record
    return record if when >= last - SLACK_S else None


def chain_kept(f: RunFacts) -> bool:
    """A SLURM chain exists and its keeper has not ended it."""
    return isinstance(f.chain, dict) and not (f.chain.get("keeper") or {}).get("done")


def run_state(f: RunFacts, hang) -> RunState:
    """The state, by the rules of the module docstring; ``hang``: the TrainingHang finding, if any."""
    last = newest_beat(f.heartbeats)
    if f.gave_up and (last is None or f.gave_up[-1]["time"] >= last - SLACK_S):
        g = f.gave_up[-1]
        return RunState(GIVEN_UP, f"the watchdog gave up: {g.get('reason')} -> {g.get('outcome')}", g["time"])
    record = exit_of_last_launch(f)
    if record is not None:
        return _exit_state(f, record)
    if any(b.get("phase") != "exit" for b in f.heartbeats.values()):
        if hang is not None:
            stale = [s["rank"] for s in hang.evidence.get("stale", []) if s.get("rank") in f.heartbeats]
            since = min((float(f.heartbeats[r]["time"]) for r in stale), default=None)
            who = "every rank" if hang.evidence.get("all_ranks") else f"{len(stale)} rank(s)"
            return RunState(HUNG, f"{who} without progress (hung, or killed without an exit record)", since)
        return RunState(RUNNING, "supervised by bigops launch --watch" if f.supervisor_live else "")
    if f.heartbeats:
        return RunState(STOPPED, "every rank exited, no exit record says how", last)
    if chain_kept(f):
        return RunState(WAITING_SLURM, _queued_detail(f))
    return RunState(NOT_STARTED, "no heartbeat yet")


def _exit_state(f: RunFacts, record: dict) -> RunState:
    code, when = record["code"], record.get("time")
    said = f"exit code {code} ({exitcodes.describe(code)})"
    if code == exitcodes.FINISHED:
        return RunState(FINISHED, said, when)
    if code == exitcodes.STOPPED_ON_REQUEST:
        return RunState(STOPPED_BY_SWITCH, said, when)
    if code == exitcodes.STOPPED_BY_SIGNAL:
        if chain_kept(f):
            return RunState(WAITING_SLURM, f"{said}; {_queued_detail(f)}", when)
        return RunState(STOPPED_BY_SIGNAL, said, when)
    where = f" on rank {record['rank']}" if isinstance(record.get("rank"), int) else ""
    message = str(record.get("message") or "").strip().splitlines()
    return RunState(CRASHED, f"{said}{where}" + (f": {message[-1][:160]}" if message else ""), when)


def _queued_detail(f: RunFacts) -> str:
    submitted = (f.chain or {}).get("submitted") or []
    started = [j for j in submitted if j in f.slurm_jobs]
    waiting = [j for j in submitted if j not in f.slurm_jobs]
    name = (f.chain or {}).get("name")
    if waiting:
        return f"next job {waiting[0]} of chain {name} not started yet ({len(waiting)} submitted, not started)"
    return f"chain {name}: {len(started)} job(s) ran, none waiting (see bigops chain status)"


# --------------------------------------------------------------------------------------------- progress
def recent_rate(records: list[dict]) -> float | None:
    """Steps per second over the last ``RATE_WINDOW_S`` of records (after the last rollback or restart,
    where the step goes back); None with fewer than two timed records."""
    timed = [r for r in records if isinstance(r.get("time"), (int, float)) and not isinstance(r.get("time"), bool)]
    start = 0
    for i in range(1, len(timed)):
        if timed[i]["step"] <= timed[i - 1]["step"]:
            start = i
    timed = timed[start:]
    if len(timed) < 2:
        return step_seconds_rate(records)
    end = timed[-1]
    window = [r for r in timed if r["time"] >= end["time"] - RATE_WINDOW_S] or timed
    first = window[0] if len(window) >= 2 else timed[-2]
    seconds = end["time"] - first["time"]
    return (end["step"] - first["step"]) / seconds if seconds > 0 else None


def step_seconds_rate(records: list[dict], last: int = 20) -> float | None:
    """Steps per second from the records' own ``step_seconds`` (records without a time: older writers)."""
    seconds = [v for r in records[-last:] if (v := _num(r.get("step_seconds"))) is not None and v > 0]
    return len(seconds) / sum(seconds) if seconds else None


def progress(f: RunFacts, state: RunState) -> Progress:
    last = f.records[-1] if f.records else None
    if last is None:
        return Progress(target=f.target_step)
    rate = recent_rate(f.records)
    eta = None
    if state.name == RUNNING and rate and f.target_step is not None and last["step"] < f.target_step:
        eta = (f.target_step - last["step"]) / rate
    return Progress(step=last["step"], target=f.target_step, steps_per_second=rate, eta_s=eta,
                    last_step_time=_num(last.get("time")), loss=_num(last.get("loss")),
                    tokens_per_second=_num(last.get("tokens_per_second")), val_loss=f.val_loss)


def loss_trend(records: list[dict], width: int = SPARK_WIDTH) -> LossTrend | None:
    """The loss of the tail as a sparkline of ``width`` blocks (each the mean of its records; ``!`` where a
    bucket held only NaN/Inf); None without two finite losses."""
    points = [(r["step"], _num(r.get("loss"))) for r in records]
    finite = [v for _, v in points if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    size = max(1, math.ceil(len(points) / width))
    buckets = [points[i:i + size] for i in range(0, len(points), size)]
    low, high = min(finite), max(finite)
    chars = []
    for bucket in buckets:
        values = [v for _, v in bucket if v is not None and math.isfinite(v)]
        if not values:
            chars.append("!")
            continue
        level = (sum(values) / len(values) - low) / (high - low) if high > low else 0.0
        chars.append(SPARK_BLOCKS[min(len(SPARK_BLOCKS) - 1, int(level * len(SPARK_BLOCKS)))])
    return LossTrend("".join(chars), low, high, points[0][0], points[-1][0])


# --------------------------------------------------------------------------------------------- problems
def problems(f: RunFacts, state: RunState, now: float) -> tuple[list[Problem], list[Problem]]:
    """(current problems, most severe then newest first; those no longer current): the state's own, the
    checkpoint's, the fresh findings joined with the watchdog's open incidents of the same key."""
    by_key = {i["key"]: i for i in f.incidents.values()
              if i.get("status") == "open" and isinstance(i.get("key"), str)}
    out: list[Problem] = list(state_problems(f, state))
    out += checkpoint_problems(f)
    seen: set[str] = set()
    for finding in f.findings:
        if finding.severity == "info" or finding.resolved or finding.key in seen:
            continue
        seen.add(finding.key)
        incident = by_key.get(finding.key, {})
        severity = max(finding.severity, incident.get("severity", finding.severity), key=_rank)
        out.append(Problem(finding.kind, severity, finding.summary, finding.key, finding.step,
                           opened=_num(incident.get("opened")), done=_done(incident),
                           incident=incident.get("id"), stale=_stale_kind(finding.kind, state)))
    absorbed = {p.kind for p in out if p.incident is not None}
    for key, incident in by_key.items():
        if key in seen or incident.get("kind") in absorbed:
            continue
        quiet = now - (_num(incident.get("last_seen")) or 0.0)
        stale = _stale_kind(str(incident.get("kind")), state) or (
            f"the watchdog has not seen it for {duration(quiet)}" if quiet > f.resolve_after_s else None)
        out.append(Problem(str(incident.get("kind")), str(incident.get("severity", "warning")),
                           str(incident.get("summary")), key, incident.get("last_step", incident.get("step")),
                           opened=_num(incident.get("opened")), done=_done(incident), incident=incident.get("id"),
                           stale=stale))
    order = lambda p: (SEVERITY_ORDER.get(p.severity, 3), -(p.opened or now))  # noqa: E731
    return sorted((p for p in out if p.stale is None), key=order), sorted((p for p in out if p.stale), key=order)


def state_problems(f: RunFacts, state: RunState) -> list[Problem]:
    if state.name == CRASHED:
        newest = f.checkpoints.newest_complete
        resume = f"it resumes from {newest['tag']} (step {newest['step']})" if newest else \
            "no complete checkpoint to resume from"
        restart = "the supervisor restarts it" if f.supervisor_live else "nothing restarts it"
        crash = Problem("RankCrash", "critical", f"no rank is running and {restart}; {resume}", "RankCrash:exit",
                        opened=state.since)
        return [_absorb(crash, f.incidents)]
    if state.name == GIVEN_UP:
        return [Problem("WatchdogGiveUp", "critical", f"{state.detail}: a person must take over", "WatchdogGiveUp",
                        opened=state.since)]
    return []


def _absorb(problem: Problem, incidents: dict[str, dict]) -> Problem:
    """``problem`` with the age and the actions of the watchdog's open incidents of its kind (the supervisor's
    RankCrash of this launch), which are then not listed again."""
    same = [i for i in incidents.values() if i.get("status") == "open" and i.get("kind") == problem.kind]
    if not same:
        return problem
    opened = min([_num(i.get("opened")) or problem.opened or 0.0 for i in same] + [problem.opened or math.inf])
    done = tuple(d for i in same for d in _done(i))
    return replace(problem, opened=opened, done=done, incident=same[0].get("id"))


def checkpoint_problems(f: RunFacts) -> list[Problem]:
    """A ``latest`` that cannot be trusted (as ``bigops ckpt list`` warns), and newer incomplete checkpoints."""
    c = f.checkpoints
    newest = c.newest_complete
    fallback = f"; newest complete: {newest['tag']} (step {newest['step']})" if newest else "; no complete checkpoint"
    see = f"see: bigops ckpt list {f.root}; bigops ckpt verify {f.root}"
    out = []
    if c.latest_problem:
        out.append(Problem("CheckpointDamaged", "critical", c.latest_problem + fallback, "CheckpointDamaged:latest",
                           see=see))
    for bad in c.incomplete:
        if c.latest_problem and bad["tag"] == c.latest:
            continue
        out.append(Problem("CheckpointDamaged", "warning", f"{bad['tag']} is incomplete: {bad['problem']}",
                           f"CheckpointDamaged:{bad['tag']}", bad.get("step"), see=see))
    for bad in c.damaged:  # complete by sizes, but a hash of its stamp did not match
        severity = "critical" if bad["tag"] == c.latest else "warning"
        out.append(Problem("CheckpointDamaged", severity, f"{bad['tag']} failed its hash check: {bad['problem']}",
                           f"CheckpointDamaged:{bad['tag']}", bad.get("step"), see=see))
    return out


def _stale_kind(kind: str, state: RunState) -> str | None:
    if kind in LIVE_KINDS and state.name not in LIVE:
        return f"from before the run {'was ' if state.name == GIVEN_UP else ''}{state.name}"
    return None


def _done(incident: dict) -> tuple[str, ...]:
    actions = incident.get("actions") if isinstance(incident.get("actions"), list) else []
    return tuple(f"{a.get('action')}: {a.get('outcome')}" for a in actions if isinstance(a, dict))


# ------------------------------------------------------------------------------------------------ ranks
def ranks(f: RunFacts, state: RunState, hang) -> Ranks:
    """The ranks counted, only the odd ones named: stale (the hang detector's), slow (stragglers), behind
    the others' step, from another launch, missing; after a crash, the rank that recorded it."""
    beats = f.heartbeats
    phases: dict[str, int] = {}
    for b in beats.values():
        phases[str(b.get("phase"))] = phases.get(str(b.get("phase")), 0) + 1
    odd: dict[int, list[str]] = {}

    def note(rank: int, why: str) -> None:
        odd.setdefault(rank, []).append(why)
    live = state.name in LIVE
    if live and hang is not None:
        for s in hang.evidence.get("stale", []):
            note(s["rank"], f"no heartbeat for {duration(s['age_s'])} ({s['phase']}, step {s['step']})")
    if live:
        for finding in f.findings:
            if finding.kind == "Straggler" and not finding.resolved and isinstance(finding.evidence.get("rank"), int):
                note(finding.evidence["rank"], f"slow: forward {finding.evidence.get('ratio', 0):.1f}x its peers'")
        moving = [b for b in beats.values() if b.get("phase") != "exit"]
        top = max((b["step"] for b in moving if isinstance(b.get("step"), int)), default=None)
        launches = _majority([b.get("launch") for b in moving])
        for rank, b in beats.items():
            if top is not None and isinstance(b.get("step"), int) and b["step"] < top - 1 and rank not in odd:
                note(rank, f"at step {b['step']}, the others at {top}")
            if launches is not None and b.get("launch") not in (None, launches):
                note(rank, "heartbeat of an earlier launch")
    if state.name == CRASHED and isinstance((f.exit_record or {}).get("rank"), int):
        note(f.exit_record["rank"], "recorded the crash")
    expected = f.world_size
    if expected and live:
        for rank in range(expected):
            if rank not in beats:
                note(rank, "no heartbeat file")
    named = tuple(OddRank(r, (beats.get(r) or {}).get("host"), "; ".join(why)) for r, why in sorted(odd.items()))
    healthy = len([r for r in beats if r not in odd]) if live else 0
    return Ranks(total=len(beats), expected=expected, healthy=healthy, odd=named, phases=phases)


def _majority(values: list) -> object | None:
    counts: dict = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return max(counts, key=counts.get) if counts else None


# ------------------------------------------------------------------------------------------------ status
def build_goodput(root: str, records, save_interval: int | None):
    from bigops.goodput.report import build
    return build(root, records, save_interval)


def summarize(f: RunFacts, now: float) -> Status:
    """The status of a run at ``now`` (pure: the same facts and now give the same status)."""
    hang = next((x for x in f.findings if x.kind == "TrainingHang" and not x.resolved), None)
    state = run_state(f, hang)
    current, stale = problems(f, state, now)
    c = f.checkpoints
    gpus = {}
    for host, samples in sorted(f.gpus.items()):
        temps = [s["temperature_c"] for s in samples if _num(s.get("temperature_c")) is not None]
        gpus[host] = {"visible": len(samples), "max_temperature_c": max(temps) if temps else None,
                      "time": samples[0]["time"]}
    return Status(root=f.root, now=now, state=state, progress=progress(f, state), problems=tuple(current),
                  stale=tuple(stale), checkpoint=Checkpoint(c.latest, c.newest_complete, c.latest_problem, c.count,
                                                            c.partial, c.newest_verified),
                  ranks=ranks(f, state, hang), loss_trend=loss_trend(f.records), pending=tuple(f.pending),
                  gpus=gpus, tensorboard=f.tensorboard, last_record=f.records[-1] if f.records else None,
                  startup=f.startup, spares=f.spares, goodput=build_goodput(f.root, f.goodput, f.save_interval) if f.goodput else None)


# ------------------------------------------------------------------------------------------------ helpers
def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _rank(severity: str) -> int:
    return -SEVERITY_ORDER.get(severity, 3)
