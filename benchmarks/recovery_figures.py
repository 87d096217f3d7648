"""The recovery benchmark's figures, read from what the run directory recorded (pure, so unit-tested):
when training resumed after a fault, how many steps were redone, how long the checkpoint load took, and when
the watchdog reported the hang.

A resumption is the relaunched ranks' checkpoint load (``telemetry/checkpoints.jsonl``, ``kind = "load"``,
logged by rank 0 once loaded) after the fault, followed by a step (``telemetry/metrics.jsonl``): its start
(its record's time minus its ``step_seconds``) ends the time to recover.
"""

from __future__ import annotations

import re
from datetime import datetime

# ft_launcher's agent log line for a worker that exited, e.g.
# "[2026-12-04 20:21:36,210] [ERROR] [ft_launcher6425@vm] failed (exitcode: -9) local_rank: 2 (pid: 6497) ..."
_NVRX_FAILED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[ERROR\] \[ft_launcher\S*\] failed \(exitcode")


def resumption(metrics: list[dict], loads: list[dict], fault_time: float) -> dict | None:
    """Recovery figures for a fault at ``fault_time`` (unix s), or None while no step followed a load after it.

    ``mttr_s``: fault -> start of the first resumed step; ``steps_lost``: steps trained before the fault and
    trained again; ``load_s``: the checkpoint load (as rank 0 timed it); ``overhead_s``: the rest of the MTTR
    (detection, teardown, spawn, imports, rendezvous, engine build, the checks before the load)."""
    load = next((r for r in loads if r.get("kind") == "load" and r["time"] > fault_time), None)
    if load is None:
        return None
    first = next((r for r in metrics if r["time"] > load["time"]), None)
    if first is None:
        return None
    before = [r["step"] for r in metrics if r["time"] <= fault_time]
    last_step = max(before) if before else 0
    mttr = first["time"] - first.get("step_seconds", 0.0) - fault_time
    return {"mttr_s": mttr, "steps_lost": max(0, last_step - (first["step"] - 1)), "load_s": load["seconds"],
            "overhead_s": mttr - load["seconds"], "resumed_step": first["step"], "checkpoint_bytes": load.get("bytes")}


def reported(events: list[dict], kind: str, since: float) -> float | None:
    """When the watchdog first recorded an event of ``kind`` (``RankCrash``, ``TrainingHang``) after ``since``
    (unix s), or None."""
    times = [e["time"] for e in events if e.get("kind") == kind and e.get("time", 0) > since]
    return min(times) if times else None


def nvrx_worker_failed(log_text: str, since: float) -> float | None:
    """When ft_launcher's agent first logged a failed worker after ``since`` (unix s; its log is in local
    time, to the millisecond), or None."""
    for line in log_text.splitlines():
        match = _NVRX_FAILED.match(line)
        if match:
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at > since:
                return at
    return None


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None when either is missing (a peer that did not recover) or theirs is 0."""
    if ours is None or not theirs:
        return None
    return ours / theirs

