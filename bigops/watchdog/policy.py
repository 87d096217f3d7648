"""Decisions, as pure functions: may we restart now, and where does a rollback go."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartDecision:
    allowed: bool
    reason: str


def decide_restart(restarts: list[dict], now: float, checkpoint_step: int | None, budget: int, window_s: float,
                   no_progress_restarts: int) -> RestartDecision:
    """``restarts``: earlier ones, each {"time", "from_step"}. Two guards: a budget per window (a crash loop
    must page, not spin), and progress (restarting again and again from the same checkpoint is a loop)."""
    recent = [r for r in restarts if now - r["time"] <= window_s]
    if len(recent) >= budget:
        return RestartDecision(False, f"restart budget exhausted: {len(recent)} restarts in the last "
                                      f"{window_s / 60:.0f} min")
    tail = restarts[-no_progress_restarts:]
    if len(tail) == no_progress_restarts and all(r.get("from_step") == checkpoint_step for r in tail):
        return RestartDecision(False, f"no progress: the last {no_progress_restarts} restarts all resumed from "
                                      f"step {checkpoint_step}")
    return RestartDecision(True, f"restart {len(recent) + 1} of {budget} in the window")


@dataclass(frozen=True)
class RollbackPlan:
    target_tag: str
    target_step: int
    aside_tags: list[str]
    skip_range: tuple[int, int]


def plan_rollback(spike_step: int, checkpoints: list[tuple[str, int]], consumed_before_spike: int,
                  global_batch_size: int, skip_batches: int) -> RollbackPlan | None:
    """Go back to the newest checkpoint taken before the spike's first step; set aside every later one;
    skip ``skip_batches`` global batches from the one that fed the spike. None if no checkpoint precedes it.

    ``checkpoints``: complete (tag, step) pairs, oldest first."""
    before = [(t, s) for t, s in checkpoints if s < spike_step]
    if not before:
        return None
    tag, step = before[-1]
    aside = [t for t, s in checkpoints if s > step]
    start = consumed_before_spike
    return RollbackPlan(tag, step, aside, (start, start + max(1, skip_batches) * global_batch_size))
