"""The restart guards, as a pure function (``bigops.watchdog.decide`` applies them to every restart)."""

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
