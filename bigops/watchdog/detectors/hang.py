"""Hangs: a rank whose heartbeat has not moved for longer than its phase allows.

The timeout of a training phase (forward/backward/step) is derived from observed step times:
max(min_timeout, factor x the 95th percentile of recent ``step_seconds``); start-up, checkpoint and eval get
their own, longer, fixed timeouts. Stale ranks are named, with their phase and step, so that on call knows
which process to look at (BLOOM lost 18, 6 and 11 hours to hangs nobody noticed).
"""

from __future__ import annotations

from dataclasses import dataclass

from bigops.watchdog.findings import Finding
from trainer.config import WatchdogConfig

TRAINING_PHASES = ("forward", "backward", "step")


@dataclass(frozen=True)
class HangConfig:
    """The timeouts; each default is its ``[watchdog]`` option's (declared, with its meaning, there)."""
    factor: float = WatchdogConfig.hang_factor
    min_timeout_s: float = WatchdogConfig.hang_min_timeout_s
    startup_timeout_s: float = WatchdogConfig.hang_startup_timeout_s
    checkpoint_timeout_s: float = WatchdogConfig.hang_checkpoint_timeout_s
    eval_timeout_s: float = 900.0
    """A rank in a validation pass hangs after this many seconds (not an option)."""


def step_time_p95(step_seconds: list[float]) -> float | None:
    data = sorted(s for s in step_seconds if s > 0)
    if not data:
        return None
    return data[min(len(data) - 1, int(0.95 * len(data)))]


def timeout_for(phase: str, p95: float | None, config: HangConfig) -> float:
    if phase == "startup":
        return config.startup_timeout_s
    if phase == "checkpoint":
        return config.checkpoint_timeout_s
    if phase == "eval":
        return config.eval_timeout_s
    return max(config.min_timeout_s, config.factor * p95) if p95 else config.startup_timeout_s


def detect_hang(heartbeats: dict[int, dict], now: float, recent_step_seconds: list[float],
                config: HangConfig = HangConfig()) -> list[Finding]:
    """One finding naming every stale rank (``exit`` heartbeats are not expected to move).

    Identity ``TrainingHang:<launch>``: the heartbeats' ``launch`` field (set by the trainer for each launch),
    else ``pid<pid of the lowest stale rank>``: a second hang at the same step (every start-up hang is step 0)
    in a new launch is a new incident, acted on again."""
    p95 = step_time_p95(recent_step_seconds)
    stale = []
    for rank, beat in sorted(heartbeats.items()):
        phase = beat.get("phase", "?")
        if phase == "exit":
            continue
        age = now - float(beat.get("time", 0))
        limit = timeout_for(phase, p95, config)
        if age > limit:
            stale.append({"rank": rank, "host": beat.get("host"), "pid": beat.get("pid"), "phase": phase,
                          "step": beat.get("step"), "age_s": round(age, 1), "timeout_s": round(limit, 1)})
    if not stale:
        return []
    everyone = len(stale) == len([b for b in heartbeats.values() if b.get("phase") != "exit"])
    first = stale[0]
    launches = sorted({b for s in stale if isinstance(b := heartbeats[s["rank"]].get("launch"), str) and b})
    pid = first["pid"] if isinstance(first["pid"], int) and not isinstance(first["pid"], bool) else "?"
    launch = launches[0] if launches else f"pid{pid}"
    names = ", ".join(f"rank {s['rank']} ({s['phase']}, step {s['step']}, {s['age_s']:.0f} s)" for s in stale[:8])
    more = f" and {len(stale) - 8} more" if len(stale) > 8 else ""
    return [Finding("TrainingHang", "critical",
                    f"{'all ranks' if everyone else f'{len(stale)} rank(s)'} without progress: {names}{more}",
                    key=f"TrainingHang:{launch}", step=first["step"],
                    evidence={"stale": stale, "launch": launch, "p95_step_seconds": p95, "all_ranks": everyone})]
