"""Where a run's wall time went: every second of it given to exactly one part (pure; no I/O here).

The parts, and the records each comes from:

    productive   a step whose update is in the final trajectory (never trained again)      metrics.jsonl
    slow         the excess of such a step over the run's usual step time, while a          metrics.jsonl +
                 throughput incident (ThroughputDrop, Straggler) was open                   events.jsonl
    lost         a step trained and then redone after a restart or a rollback (the work     metrics.jsonl
                 since the last checkpoint that the fault threw away)
    checkpoint   saves (the training stalls while they write)                               checkpoints.jsonl
    queue        waiting in SLURM: the first job from its submission, each next one from    slurm/jobs/
                 the previous job's end, to its start
    restart      from the fault (or a planned exit) to the first resumed step: the dead      the gaps between
                 time, the supervisor's decision, the relaunch, the start-up budget          launches
    startup      the first launch's start-up, before its first step                         startup.jsonl
    stopped      after the last step (the run ended, or is down and nothing trains)         -

How every second is counted once: each part is a set of intervals on the wall clock, laid over each other
in a fixed order of precedence (checkpoint over the steps over the queue); the time none of them covers is
a gap between launches, named by where it lies (before the first step: startup; between steps: restart;
after the last: stopped). The parts therefore sum to the wall time, ``end - start``, exactly.

A step's interval is the time since the previous record of the same launch (its data, forward, backward,
the optimizer and its logging); the first step of a launch gets its own ``step_seconds`` at most the usual
step time, and what lies before it is start-up (or restart): its warm-up beyond the usual step (DeepSpeed's
first-call work, the start-up budget's ``first_step`` phase) is the launch's cost, not training. A step is productive when no later record has a step number as low or lower: a step
redone after a restart, or past a rollback's target, was lost (even if the run never got back to it).

Each lost, restart and slow second is charged to its cause (:class:`Charge`): the incident whose restart or
rollback threw the work away or took the time (events.jsonl's ``action`` records name their incident), the
throughput incident that was open, or ``exit`` for a relaunch no incident asked for (a SLURM time-out, a
person).
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass, field

PARTS = ("productive", "slow", "lost", "checkpoint", "queue", "restart", "startup", "stopped")
SLOW_KINDS = ("ThroughputDrop", "Straggler")
RELAUNCHES = ("restart", "rollback", "shrink")
"""Actions after which the ranks start again (a ``kill`` alone is followed by one of these)."""
PLANNED = "exit"
"""The cause of a relaunch no incident asked for."""


@dataclass(frozen=True)
class Step:
    step: int
    """The optimizer step the record reports."""
    time: float
    """When the step ended (the record's ``time``)."""
    seconds: float
    """The step's own ``step_seconds`` (the first step of a launch is charged this much)."""


@dataclass(frozen=True)
class Span:
    """An interval of a part: [start, end), with its cause (an incident id, a job id, ``exit``) if any."""

    start: float
    end: float
    part: str
    cause: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Records:
    """What the accounting reads, already parsed (``bigops.goodput.facts`` reads it from a run directory)."""

    steps: list[Step]
    """Every metrics record, in the order written."""
    saves: list[tuple[float, float]] = field(default_factory=list)
    """(end time, seconds) of every checkpoint save."""
    launches: list[float] = field(default_factory=list)
    """When each launch started (startup.jsonl's ``launched``, checkpoint loads): boundaries between launches."""
    events: list[dict] = field(default_factory=list)
    """events.jsonl: findings and incident notices (kind, time, incident), actions (restart, rollback...)."""
    jobs: list[dict] = field(default_factory=list)
    """SLURM job records ({"job_id", "start", "end", "submitted"}), any order."""
    start: float | None = None
    """The run's first instant (default: the first launch, job start or step start, whichever is first)."""
    end: float | None = None
    """The run's last instant (default: its last step or save)."""


@dataclass(frozen=True)
class Charge:
    """What one cause cost: an incident (its kind and when it opened) or a planned relaunch."""

    cause: str
    """An incident id, or PLANNED."""
    kind: str
    """The incident's kind (RankCrash, TrainingHang, LossSpike, ThroughputDrop...)."""
    opened: float | None
    seconds: dict[str, float]
    """Its lost, restart and slow seconds."""
    steps_lost: int = 0


@dataclass(frozen=True)
class Goodput:
    start: float
    end: float
    seconds: dict[str, float]
    """Every part of PARTS: its seconds (they sum to ``wall_s``)."""
    spans: list[Span]
    """The timeline: disjoint, ordered, covering [start, end]."""
    charges: list[Charge]
    steps_productive: int
    steps_lost: int
    relaunches: int
    baseline_step_s: float | None
    """The usual step time (median of productive steps outside throughput incidents)."""

    @property
    def wall_s(self) -> float:
        return self.end - self.start

    @property
    def ratio(self) -> float | None:
        """Productive seconds over wall seconds (None for an empty run)."""
        return self.seconds["productive"] / self.wall_s if self.wall_s > 0 else None


# ------------------------------------------------------------------------------------------- the intervals
def productive_flags(steps: list[Step]) -> list[bool]:
    """Per record: True when no later record has a step number <= its own (its update is kept)."""
    flags, low = [False] * len(steps), float("inf")
    for i in range(len(steps) - 1, -1, -1):
        flags[i] = steps[i].step < low
        low = min(low, steps[i].step)
    return flags


def launch_starts(steps: list[Step], launches: list[float]) -> list[bool]:
    """Per record: True when it is the first step of a launch (a launch began since the previous record, or
    the step number did not follow on)."""
    marks = sorted(launches)
    out = []
    for i, s in enumerate(steps):
        if i == 0:
            out.append(True)
            continue
        prev = steps[i - 1]
        began = bisect.bisect_right(marks, s.time) > bisect.bisect_right(marks, prev.time)
        out.append(began or s.step != prev.step + 1)
    return out


def slow_windows(events: list[dict], end: float) -> list[tuple[float, float, str]]:
    """(opened, closed, incident) of every throughput incident (open ones run to ``end``)."""
    opened: dict[str, float] = {}
    closed: dict[str, float] = {}
    for e in events:
        if e.get("kind") not in SLOW_KINDS or not isinstance(e.get("incident"), str):
            continue
        iid = e["incident"]
        if e.get("type") == "finding" and e.get("notice") == "open":
            opened.setdefault(iid, float(e["time"]))
        elif e.get("type") == "incident" and e.get("notice") == "resolve":
            closed[iid] = float(e["time"])
            if isinstance(e.get("opened"), (int, float)):
                opened.setdefault(iid, float(e["opened"]))
    return sorted((t, closed.get(iid, end), iid) for iid, t in opened.items())


def step_spans(steps: list[Step], launches: list[float], events: list[dict], end: float,
               saves: list[Span] = ()) -> tuple[list[Span], float | None]:
    """The steps' intervals as productive / lost / slow spans, and the usual step time. A slow step's excess is
    what it took beyond the usual step time once the saves inside its interval are left out (``saves``:
    sorted; they are counted as checkpoint stalls, not as slowness)."""
    keep, first = productive_flags(steps), launch_starts(steps, launches)
    raw = [(s.time - s.seconds if first[i] else steps[i - 1].time, s.time) for i, s in enumerate(steps)]
    windows = slow_windows(events, end)

    def window_of(t: float) -> str | None:
        return next((iid for a, b, iid in windows if a <= t <= b), None)
    calm = [b - a for (a, b), k, s in zip(raw, keep, steps) if k and window_of(s.time) is None]
    every = [b - a for (a, b), k in zip(raw, keep) if k]
    baseline = statistics.median(calm) if calm else (statistics.median(every) if every else None)
    if baseline is not None:  # a launch's first step: its warm-up beyond the usual step is start-up, not training
        raw = [(max(a, b - baseline), b) if first[i] else (a, b) for i, (a, b) in enumerate(raw)]
    lost_to = _relaunch_causes(events)
    spans = []
    for (a, b), k, s in zip(raw, keep, steps):
        if not k:
            spans.append(Span(a, b, "lost", lost_to(s.time)))
            continue
        slow_in = window_of(s.time)
        excess = b - a - _overlap(saves, a, b) - baseline if slow_in is not None and baseline is not None else 0.0
        if excess > 0:
            spans += [Span(a, b - excess, "productive"), Span(b - excess, b, "slow", slow_in)]
        else:
            spans.append(Span(a, b, "productive"))
    return spans, baseline


def _overlap(spans: list[Span], a: float, b: float) -> float:
    """Seconds of the sorted, disjoint ``spans`` inside [a, b]."""
    i = max(0, bisect.bisect_right([s.start for s in spans], a) - 1)
    total = 0.0
    while i < len(spans) and spans[i].start < b:
        total += max(0.0, min(b, spans[i].end) - max(a, spans[i].start))
        i += 1
    return total


def _relaunches(events: list[dict]) -> list[tuple[float, str]]:
    """(time, cause) of every relaunch action, in time order (cause: its incident, or ``exit``)."""
    return sorted((float(e["time"]), str(e.get("incident") or PLANNED)) for e in events
                  if e.get("type") == "action" and e.get("action") in RELAUNCHES
                  and isinstance(e.get("time"), (int, float)))


def _relaunch_causes(events: list[dict]):
    """``cause(t)``: the incident of the first relaunch action after ``t`` (``exit`` when none)."""
    relaunches = _relaunches(events)
    times = [t for t, _ in relaunches]

    def cause(t: float) -> str:
        i = bisect.bisect_left(times, t)
        return relaunches[i][1] if i < len(relaunches) else PLANNED
    return cause


def queue_spans(jobs: list[dict]) -> list[Span]:
    """Waiting in the SLURM queue: before a job's start, since the previous job's end or (the first job, or
    one submitted after the previous ended) since its own submission (``submitted``, when the record has it)."""
    timed = sorted((float(j["start"]), j.get("end"), str(j.get("job_id")), j.get("submitted")) for j in jobs
                   if isinstance(j.get("start"), (int, float)))
    out = []
    for i, (start, _, job, submitted) in enumerate(timed):
        since = [float(submitted)] if isinstance(submitted, (int, float)) else []
        if i > 0:  # the previous job's time is its own (a killed one, with no end recorded: nothing known)
            previous_end = timed[i - 1][1]
            since = since + [float(previous_end)] if isinstance(previous_end, (int, float)) else []
        if since and max(since) < start:
            out.append(Span(max(since), start, "queue", job))
    return out


# ------------------------------------------------------------------------------------------ the overlay
def overlay(layers: list[list[Span]]) -> list[Span]:
    """The union of the layers as disjoint spans; where they overlap, the earlier layer wins."""
    taken: list[Span] = []
    for layer in layers:
        taken = _merge(taken, _uncovered(sorted(layer, key=lambda s: s.start), taken))
    return taken


def _uncovered(spans: list[Span], taken: list[Span]) -> list[Span]:
    """The parts of ``spans`` (sorted) outside the sorted, disjoint ``taken`` (also disjoint among themselves:
    a later span of the same layer loses to an earlier one)."""
    out, floor = [], float("-inf")
    starts = [t.start for t in taken]
    for s in spans:
        a = max(s.start, floor)
        i = max(0, bisect.bisect_right(starts, a) - 1)
        while a < s.end:
            while i < len(taken) and taken[i].end <= a:
                i += 1
            if i < len(taken) and taken[i].start <= a:
                a = taken[i].end
                continue
            b = min(s.end, taken[i].start) if i < len(taken) else s.end
            if b > a:
                out.append(Span(a, b, s.part, s.cause))
            a = b
        floor = max(floor, s.end)
    return out


def _merge(a: list[Span], b: list[Span]) -> list[Span]:
    return sorted(a + b, key=lambda s: s.start)


def fill_gaps(spans: list[Span], start: float, end: float, first_step: float | None, last_step: float | None,
              relaunch_cause) -> list[Span]:
    """``spans`` clipped to [start, end] with every gap named: before the first step startup, between steps
    restart (charged to the relaunch within it), after the last step stopped."""
    out, t = [], start
    clipped = [Span(max(s.start, start), min(s.end, end), s.part, s.cause) for s in spans
               if s.end > start and s.start < end]
    for s in clipped + [Span(end, end, "end")]:
        if s.start > t:
            out += _gap(t, s.start, first_step, last_step, relaunch_cause)
        if s.part != "end" and s.end > s.start:
            out.append(s)
        t = max(t, s.end)
    return out


def _gap(a: float, b: float, first_step: float | None, last_step: float | None, relaunch_cause) -> list[Span]:
    if first_step is None or b <= first_step:
        return [Span(a, b, "startup")]
    if last_step is not None and a >= last_step:
        return [Span(a, b, "stopped")]
    return [Span(a, b, "restart", relaunch_cause(a, b))]


def _gap_cause(events: list[dict], stepped: list[Span]):
    """``cause(a, b)``: the incident of the first relaunch action between the steps around the gap [a, b] (a
    save or the queue may split one pause between launches into several gaps; all go to the same cause), or
    ``exit`` when there is none."""
    relaunches = _relaunches(events)
    ends, starts = [s.end for s in stepped], [s.start for s in stepped]

    def cause(a: float, b: float) -> str:
        i, j = bisect.bisect_right(ends, a), bisect.bisect_left(starts, b)
        lo = ends[i - 1] if i > 0 else float("-inf")
        hi = starts[j] if j < len(starts) else float("inf")
        inside = [c for t, c in relaunches if lo <= t <= hi]
        return inside[0] if inside else PLANNED
    return cause


# ------------------------------------------------------------------------------------------- the account
def account(r: Records) -> Goodput:
    """The run's wall time split into PARTS, its timeline, and what each cause cost."""
    steps = r.steps
    save_spans = sorted((Span(t - s, t, "checkpoint") for t, s in r.saves if s >= 0), key=lambda x: x.start)
    firsts = [s.time - s.seconds for s in steps[:1]] + [x.start for x in save_spans[:1]] + list(r.launches)
    firsts += [j["start"] for j in r.jobs if isinstance(j.get("start"), (int, float))]
    firsts += [j["submitted"] for j in r.jobs if isinstance(j.get("submitted"), (int, float))]
    start = r.start if r.start is not None else min(firsts, default=0.0)
    end = r.end if r.end is not None else max([s.time for s in steps] + [x.end for x in save_spans], default=start)
    end = max(end, start)
    stepped, baseline = step_spans(steps, r.launches, r.events, end, save_spans)
    spans = overlay([save_spans, stepped, queue_spans(r.jobs)])
    first = stepped[0].start if stepped else None
    last = steps[-1].time if steps else None
    timeline = fill_gaps(spans, start, end, first, last, _gap_cause(r.events, stepped))
    seconds = {p: 0.0 for p in PARTS}
    for s in timeline:
        seconds[s.part] += s.seconds
    keep = productive_flags(steps)
    relaunches = sum(1 for i, f in enumerate(launch_starts(steps, r.launches)) if f and i > 0)
    return Goodput(start=start, end=end, seconds=seconds, spans=timeline, charges=charges(timeline, steps, keep,
                   r.events), steps_productive=sum(keep), steps_lost=len(keep) - sum(keep), relaunches=relaunches,
                   baseline_step_s=baseline)


def charges(timeline: list[Span], steps: list[Step], keep: list[bool], events: list[dict]) -> list[Charge]:
    """Per cause (incident or planned exit): the lost, restart and slow seconds, and the steps lost."""
    kinds, opened = {}, {}
    for e in events:
        iid = e.get("incident")
        if isinstance(iid, str) and isinstance(e.get("kind"), str):
            kinds.setdefault(iid, e["kind"])
            when = e.get("opened", e.get("time") if e.get("notice") == "open" else None)
            if isinstance(when, (int, float)):
                opened.setdefault(iid, float(when))
    for e in events:  # a relaunch about no incident of the table (a take-over): named by its action and reason
        if e.get("type") == "action" and e.get("action") in RELAUNCHES and isinstance(e.get("incident"), str):
            kinds.setdefault(e["incident"], f"{e['action']}: {str(e.get('reason') or '')[:80]}")
            if isinstance(e.get("time"), (int, float)):
                opened.setdefault(e["incident"], float(e["time"]))
    per: dict[str, dict[str, float]] = {}
    for s in timeline:
        if s.cause is not None and s.part in ("lost", "restart", "slow"):
            bucket = per.setdefault(s.cause, {"lost": 0.0, "restart": 0.0, "slow": 0.0})
            bucket[s.part] += s.seconds
    lost_to = _relaunch_causes(events)
    counts: dict[str, int] = {}
    for s, k in zip(steps, keep):
        if not k:
            counts[lost_to(s.time)] = counts.get(lost_to(s.time), 0) + 1
    out = [Charge(cause, kinds.get(cause, "planned relaunch" if cause == PLANNED else "unknown"), opened.get(cause),
                  seconds, counts.get(cause, 0)) for cause, seconds in per.items()]
    return sorted(out, key=lambda c: -sum(c.seconds.values()))
