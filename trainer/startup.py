"""The start-up budget of one launch: where a (re)start's seconds go before the first step trains.

A restart costs the run everything between the fault and the first resumed step; at BLOOM's size most of it
is start-up, so it is measured phase by phase on every rank and kept per launch, in
``telemetry/startup.jsonl`` (one record per launch, appended by rank 0 with one write; ``bigops status`` shows
the last one, ``bigops goodput`` charges it to the restart that caused it). The phases, in order:

    spawn       the launcher's start of the ranks (``BIGOPS_LAUNCH_TIME``) -> this process started (a warm
                spare, ``trainer.spare``: -> it was handed over)
    imports     process start (handover) -> ``trainer.train`` imported (python, torch, DeepSpeed, our modules;
                about nothing for a warm spare, which imported them before the launch)
    rendezvous  torch.distributed init, the config checked against the world, the TP groups
    data        the data made ready (rank 0 prepares it once, everyone opens it)
    checkpoint  the checkpoint to resume from found and preflighted (rank 0), the skip ranges
    engine      ``deepspeed.initialize``: this rank's slice of BLOOM built, the optimizer
    load        the checkpoint loaded (weights, optimizer, RNG)
    first_step  the first optimizer step (DeepSpeed's first-call work, the first batch)

Each rank measures its own; rank 0 gathers them once, after the first step (one ``gather_object``), and keeps
the median and the max of each phase and which rank was slowest: on 384 ranks the max is what the run waits
for, the median says whether that is one bad rank or everyone. ``spawn`` is unknown (None) when no launcher
set ``BIGOPS_LAUNCH_TIME``.
"""

from __future__ import annotations

import os
import time

LAUNCH_TIME_ENV = "BIGOPS_LAUNCH_TIME"
"""Unix time at which the launcher started this launch's ranks (``launcher.local.spawn``, the SLURM script)."""
PHASES = ("spawn", "imports", "rendezvous", "data", "checkpoint", "engine", "load", "first_step")


def process_start_time() -> float | None:
    """This process's start as unix time (Linux: ``/proc/self/stat`` field 22 + boot time); None elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            data = handle.read()
        ticks = int(data[data.rfind(b")") + 2:].split()[19])
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def launch_time(environ=None) -> float | None:
    """``BIGOPS_LAUNCH_TIME`` as a float (None when unset or not a number)."""
    value = (os.environ if environ is None else environ).get(LAUNCH_TIME_ENV, "")
    try:
        return float(value)
    except ValueError:
        return None


class StartupClock:
    """One rank's phase timer: :meth:`mark` closes the phase that just ended (wall clock, so that the
    launcher's and the process's start times share its scale)."""

    def __init__(self, imported_at: float, clock=time.time, environ=None, started: float | None = None):
        """``started``: when this process became the rank (a warm spare's handover; default: its start)."""
        self.clock = clock
        self.launched = launch_time(environ)
        self.started = process_start_time() if started is None else started
        self.seconds: dict[str, float] = {}
        if self.launched is not None and self.started is not None:
            self.seconds["spawn"] = max(0.0, self.started - self.launched)
        origin = self.started if self.started is not None else imported_at
        self.seconds["imports"] = max(0.0, imported_at - origin)
        self._last = imported_at

    def mark(self, phase: str) -> None:
        now = self.clock()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + max(0.0, now - self._last)
        self._last = now

    def own(self) -> dict:
        """This rank's figures, as gathered: the phase seconds and when the first step ended."""
        return {"seconds": dict(self.seconds), "launched": self.launched, "started": self.started,
                "ready": self._last}


def summarize(per_rank: list[dict], *, launch: str | None, step: int, resumed_from: str | None,
              now: float) -> dict:
    """Rank 0's record of one launch from every rank's :meth:`StartupClock.own` (pure).

    ``total_s`` is the launch's wall time to the first step: from the launcher's start (or the earliest process
    start) to the last rank's end of its first step; ``phases[name]`` holds the median, the max and the slowest
    rank of each phase (ranks that did not measure a phase are left out of it)."""
    import statistics  # rank 0 only, once: kept off every rank's start-up path
    phases = {}
    for name in PHASES:
        values = [(r["seconds"][name], rank) for rank, r in enumerate(per_rank) if name in r["seconds"]]
        if values:
            worst, slowest = max(values)
            phases[name] = {"median_s": round(statistics.median(v for v, _ in values), 4),
                            "max_s": round(worst, 4), "slowest_rank": slowest}
    origins = [r["launched"] for r in per_rank if r.get("launched") is not None] or \
        [r["started"] for r in per_rank if r.get("started") is not None]
    origin = min(origins) if origins else None
    ready = max(r["ready"] for r in per_rank)
    return {"time": now, "launch": launch, "launched": origin, "ready": ready,
            "total_s": round(ready - origin, 4) if origin is not None else None, "ranks": len(per_rank),
            "step": step, "resumed_from": resumed_from, "phases": phases}


def describe(record: dict) -> str:
    """One line of a launch's budget: total, then every phase's max (the slowest rank of the largest named)."""
    phases = record.get("phases") if isinstance(record.get("phases"), dict) else {}
    parts = [f"{name.replace('_', ' ')} {p['max_s']:.1f}" for name in PHASES
             if isinstance(p := phases.get(name), dict) and isinstance(p.get("max_s"), (int, float))]
    total = record.get("total_s")
    head = f"{total:.1f} s to the first step" if isinstance(total, (int, float)) else "to the first step"
    biggest = max(((p["max_s"], n, p.get("slowest_rank")) for n, p in phases.items()
                   if isinstance(p, dict) and isinstance(p.get("max_s"), (int, float))), default=None)
    tail = f"; largest: {biggest[1].replace('_', ' ')} (rank {biggest[2]})" if biggest else ""
    resumed = f" (resumed from {record['resumed_from']})" if record.get("resumed_from") else ""
    return f"{head}{resumed}: " + ", ".join(parts) + " s (max over ranks)" + tail
